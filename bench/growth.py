"""Event-table growth under a sustained write load, with a live worker purging (issue 18, item 7).

    .venv/bin/python bench/growth.py                      # 30 minutes, 500 commits/s in all
    .venv/bin/python bench/growth.py --minutes 3 --sample 10      # a quick look
    .venv/bin/python bench/growth.py --hold 10:5          # hold a snapshot open from minute 10 for 5 min

Starts its own PostgreSQL server (bench/run.py's: durable commits; autovacuum at the server's
defaults, log_autovacuum_min_duration=0), with two source tables side by side under the same
load, each replicated to its own table in a second database of the same server by one real
``pdr-reflect -i 1`` process (purging on, as a running worker does):

  t_default its event table's storage parameters RESET after install: the event table as
            installed before django-pdr set any (autovacuum at the server's defaults)
  t_tuned   the event table as installed now (``PostgreSQLDialect.event_table_options``)

Each source table (id bigint primary key, n int, v text) starts with --rows rows and gets
single-row autocommit transactions at --rate/2 per second each: 30% INSERT, 40% UPDATE,
30% DELETE (the row count stays level).  Every --sample seconds it records, per event table:
heap and index size, n_live_tup / n_dead_tup, autovacuum runs (pg_stat_user_tables), the
rows actually in it, and the reflection's pending events and lag (the worker's samples);
also the registry table ``pdr_capture``, and the oldest open transaction / snapshot of any
other session on the source database.  At the end the writers stop, the worker catches up
and each destination is compared with its source.  Prints a table; --out/--json keep it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import (HOST, PASSWORD, PY, USER, Bench, BenchPostgres, _cpu_seconds, log, machine,  # noqa: E402
                       pg_admin, pg_connect)

VARIANTS = ("t_default", "t_tuned")


class Growth(Bench):
    # -- set-up ---------------------------------------------------------------
    def start(self):
        self.pg = BenchPostgres()
        self.pg.label = "postgresql (source and destination)"
        self.servers.append(self.pg)
        self.pg.start()
        pg_admin(self.pg, "ALTER SYSTEM SET log_autovacuum_min_duration = 0", "SELECT pg_reload_conf()")
        pg_admin(self.pg, 'CREATE DATABASE "src"', 'CREATE DATABASE "mirror"')
        self.autovacuum = {}
        conn = pg_connect(self.pg, "src", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'autovacuum%%' "
                        "OR name IN ('vacuum_cost_limit', 'vacuum_cost_delay') ORDER BY name")
            self.autovacuum = dict(cur.fetchall())
            cur.execute("SHOW server_version")
            self.server_version = cur.fetchone()[0]
        conn.close()

    def create_tables(self, rows):
        conn = pg_connect(self.pg, "src", autocommit=True)
        with conn.cursor() as cur:
            for name in VARIANTS:
                cur.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, n integer NOT NULL, v text)")
                cur.execute(f"INSERT INTO {name} SELECT g, g %% 1000, md5(g::text) FROM generate_series(1, %s) g",
                            (rows,))
        conn.close()

    def configure(self):
        from django_pdr.dialects.postgresql import PostgreSQLDialect
        from django_pdr.models import Database

        src = Database.from_url("src", f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.pg.port}/src")
        dst = Database.from_url("mirror", f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.pg.port}/mirror")
        for db in (src, dst):
            db.full_clean()
            db.save()
        self.reflections, self.events = {}, {}
        for name in VARIANTS:
            refl = self.reflection(src, name, dst, name)
            self.reflections[name] = refl
            self.events[name] = refl.source.event_table
        options = list(PostgreSQLDialect.event_table_options)
        self.options = dict(PostgreSQLDialect.event_table_options)
        conn = pg_connect(self.pg, "src", autocommit=True)
        with conn.cursor() as cur:
            if options:
                cur.execute(f'ALTER TABLE "{self.events["t_default"]}" RESET ({", ".join(options)})')
            self.reloptions = {}
            for name in VARIANTS:
                cur.execute("SELECT reloptions FROM pg_class WHERE relname = %s", (self.events[name],))
                self.reloptions[name] = cur.fetchone()[0] or []
        conn.close()
        log(f"event tables: {self.events}; storage parameters: {self.reloptions}")
        for refl in self.reflections.values():  # initial load, in-process (untimed)
            self.worker_pass(refl)
        from django_pdr.connections import dispose_all

        dispose_all()

    def start_worker_all(self):
        logf = open(os.path.join(self.workdir, "worker.log"), "w")
        cmd = [PY, "-m", "django", "pdr-reflect", "-i", "1", "-v", "1"]
        for refl in self.reflections.values():
            cmd += ["-r", str(refl.pk)]
        proc = subprocess.Popen(cmd, cwd=self.snap, env=dict(os.environ), stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.logf = logf
        return proc

    # -- load -----------------------------------------------------------------
    def writer(self, name, rate, rows, stop, counts, seed):
        rng = random.Random(seed)
        ids = list(range(1, rows + 1))
        next_id = rows + 1
        conn = pg_connect(self.pg, "src", autocommit=True)
        cur = conn.cursor()
        period, due = 1.0 / rate, time.monotonic()
        done = {"I": 0, "U": 0, "D": 0}
        while not stop.is_set():
            r = rng.random()
            if r < 0.3 or len(ids) < 100:
                cur.execute(f"INSERT INTO {name} (id, n, v) VALUES (%s, %s, %s)",
                            (next_id, next_id % 1000, f"{next_id:x}"))
                ids.append(next_id)
                next_id += 1
                done["I"] += 1
            elif r < 0.7:
                cur.execute(f"UPDATE {name} SET n = n + 1 WHERE id = %s", (ids[rng.randrange(len(ids))],))
                done["U"] += 1
            else:
                i = rng.randrange(len(ids))
                ids[i] = ids[-1]
                victim = ids.pop()
                cur.execute(f"DELETE FROM {name} WHERE id = %s", (victim,))
                done["D"] += 1
            counts[name] = done
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -5:  # far behind: do not burst to catch up
                due = time.monotonic()
        conn.close()

    def holder(self, start, seconds, stop):
        """A session that keeps one snapshot open (a long report, an idle-in-transaction
        client): nothing deleted after it began can be vacuumed away until it ends."""
        if stop.wait(start):
            return
        conn = pg_connect(self.pg, "src")
        cur = conn.cursor()
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT count(*) FROM t_default")
        log(f"holding a snapshot open for {seconds:.0f} s")
        stop.wait(seconds)
        conn.rollback()
        conn.close()
        log("snapshot released")

    # -- sampling --------------------------------------------------------------
    def sample(self, conn, t0, worker):
        from django_pdr.models import Sample

        row = {"t": round(time.monotonic() - t0, 1)}
        with conn.cursor() as cur:
            for name in VARIANTS:
                ev = self.events[name]
                cur.execute("SELECT pg_relation_size(relid), pg_indexes_size(relid), pg_total_relation_size(relid), "
                            "n_live_tup, n_dead_tup, autovacuum_count, n_tup_ins, n_tup_del "
                            "FROM pg_stat_user_tables WHERE relname = %s", (ev,))
                heap, index, total, live, dead, av, ins, dele = cur.fetchone()
                cur.execute(f'SELECT count(*), min(pdr_id), max(pdr_id) FROM "{ev}"')
                rows, low, high = cur.fetchone()
                last = Sample.objects.filter(reflection=self.reflections[name]).order_by("-at").first()
                row[name] = {"heap": heap, "index": index, "total": total, "live": live, "dead": dead,
                             "autovacuums": av, "inserted": ins, "deleted": dele, "rows": rows,
                             "pending": last.pending_events if last else None,
                             "lag": last.lag_seconds if last else None}
            cur.execute("SELECT pg_total_relation_size(relid), n_dead_tup, n_tup_upd FROM pg_stat_user_tables "
                        "WHERE relname = 'pdr_capture'")
            size, dead, upd = cur.fetchone()
            row["registry"] = {"total": size, "dead": dead, "updates": upd}
            cur.execute("SELECT max(extract(epoch FROM now() - xact_start)), max(age(backend_xmin)), "
                        "count(*) FILTER (WHERE state LIKE 'idle in transaction%%') FROM pg_stat_activity "
                        "WHERE datname = 'src' AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
            xact, xmin_age, idle_tx = cur.fetchone()
            row["others"] = {"oldest_xact_s": round(float(xact or 0), 1), "oldest_xmin_age": xmin_age,
                             "idle_in_tx": idle_tx}
        row["worker_cpu_s"] = round(_cpu_seconds(worker.pid), 1)
        return row

    def autovacuum_log(self):
        """Each automatic vacuum of an event table, from the server log: tuples removed, dead
        ones it could not remove yet (a snapshot still needed them), heap pages truncated."""
        with open(self.pg.log_path, errors="replace") as f:
            text = f.read()
        names = {v: k for k, v in self.events.items()}
        runs = []
        for block in text.split("automatic vacuum of table ")[1:]:
            table = re.match(r'"src\.public\.(\w+)"', block)
            if not table or table.group(1) not in names:
                continue
            pages = re.search(r"pages: (\d+) removed", block)
            tuples = re.search(r"tuples: (\d+) removed, (\d+) remain, (\d+) are dead but not yet removable", block)
            if pages and tuples:
                runs.append({"table": names[table.group(1)], "pages_removed": int(pages.group(1)),
                             "removed": int(tuples.group(1)), "remain": int(tuples.group(2)),
                             "not_removable": int(tuples.group(3))})
        return runs

    def compare(self):
        out = {}
        for name in VARIANTS:
            s = pg_connect(self.pg, "src", autocommit=True)
            d = pg_connect(self.pg, "mirror", autocommit=True)
            figures = []
            for conn in (s, d):
                with conn.cursor() as cur:
                    cur.execute(f"SELECT count(*), coalesce(sum(n), 0), coalesce(sum(id), 0) FROM {name}")
                    figures.append(tuple(int(x) for x in cur.fetchone()))
                conn.close()
            out[name] = {"source": figures[0], "destination": figures[1], "equal": figures[0] == figures[1]}
        return out


def kb(n):
    return f"{(n or 0) / 1024:,.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="duration of the write load (default 30)")
    parser.add_argument("--rate", type=float, default=500.0, help="commits/s in all, split over both tables")
    parser.add_argument("--rows", type=int, default=20000, help="rows in each source table at the start")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--hold", metavar="START:MINUTES",
                        help="hold a snapshot open on the source from minute START for MINUTES")
    parser.add_argument("--library", choices=["worktree", "head"], default="worktree",
                        help="which django_pdr to measure: a copy of the working tree (default) or git HEAD")
    parser.add_argument("--patch", help="apply this patch (patch -p1) to the copied library: with --library "
                                        "head, measures one change while others edit the working tree")
    parser.add_argument("--note", help="a line printed with the results (what was measured, and why)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-growth.txt"))
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results-growth.json"))
    args = parser.parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    bench = Growth(args)
    samples, worker, stop = [], None, threading.Event()
    threads = []
    try:
        bench.snapshot(args.library)
        if args.patch:
            with open(args.patch) as f:
                subprocess.run(["patch", "-p1", "-s", "-d", bench.snap], stdin=f, check=True)
            bench.library += f" + {os.path.basename(args.patch)}"
        bench.start()
        bench.setup_django()
        bench.create_tables(args.rows)
        bench.configure()
        worker = bench.start_worker_all()
        time.sleep(3)
        counts = {}
        for k, name in enumerate(VARIANTS):
            threads.append(threading.Thread(target=bench.writer, daemon=True,
                                            args=(name, args.rate / len(VARIANTS), args.rows, stop, counts, k)))
        if args.hold:
            start, minutes = (float(x) for x in args.hold.split(":"))
            threads.append(threading.Thread(target=bench.holder, args=(start * 60, minutes * 60, stop), daemon=True))
        conn = pg_connect(bench.pg, "src", autocommit=True)
        t0 = time.monotonic()
        for t in threads:
            t.start()
        log(f"load: {args.rate:.0f} commits/s for {args.minutes:g} min")
        end = t0 + args.minutes * 60
        while True:
            row = bench.sample(conn, t0, worker)
            row["commits"] = {k: sum(v.values()) for k, v in counts.items()}
            samples.append(row)
            d, u = row["t_default"], row["t_tuned"]
            log(f"t={row['t']:>6.0f}s default {kb(d['total'])} kB dead {d['dead']} rows {d['rows']} av {d['autovacuums']}"
                f" | tuned {kb(u['total'])} kB dead {u['dead']} rows {u['rows']} av {u['autovacuums']}"
                f" | lag {d['lag']}/{u['lag']} | oldest xact {row['others']['oldest_xact_s']} s")
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}): see {worker.logf.name}")
            now = time.monotonic()
            if now >= end:
                break
            time.sleep(min(args.sample, max(0.0, end - now)))
        stop.set()
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(30)
        log("writers stopped; waiting for the worker to catch up")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(5)
            cmp = bench.compare()
            if all(c["equal"] for c in cmp.values()):
                break
        after = bench.sample(conn, t0, worker)
        conn.close()
        runs = bench.autovacuum_log()
        result = {"command": "python bench/growth.py " + " ".join(sys.argv[1:]),
                  "machine": machine(), "library": bench.library, "server": bench.server_version,
                  "autovacuum_settings": bench.autovacuum, "options": bench.options, "reloptions": bench.reloptions,
                  "args": vars(args), "elapsed": elapsed, "commits": counts, "samples": samples,
                  "after_catch_up": after, "compare": cmp, "autovacuum_runs": runs}
    finally:
        stop.set()
        if worker is not None:
            bench.stop_worker(worker)
        bench.stop_servers()
    text = report(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)


def growth_rate(samples, name):
    """kB/min of the total size over the second half of ``samples``."""
    half = [s for s in samples if s["t"] >= (samples[0]["t"] + samples[-1]["t"]) / 2]
    if len(half) < 2:
        return 0.0
    return (half[-1][name]["total"] - half[0][name]["total"]) / 1024 / ((half[-1]["t"] - half[0]["t"]) / 60)


def truncated(runs):
    if any("pages_removed" not in r for r in runs):
        return "not recorded"  # results of an earlier version of this script
    return f"{sum(r['pages_removed'] for r in runs):,}"


def report(res):
    args = res["args"]
    lines = [f"django-pdr event-table growth — {res['machine']}",
             f"library: {res['library']}; PostgreSQL {res['server']}",
             "command: " + res.get("command", "python bench/growth.py " + " ".join(sys.argv[1:])),
             f"load: {args['rate']:.0f} one-row commits/s in all (30% INSERT, 40% UPDATE, 30% DELETE) over "
             f"{res['elapsed'] / 60:.1f} min; commits: "
             + ", ".join(f"{k} {sum(v.values()):,}" for k, v in res["commits"].items()),
             "server autovacuum settings: " + ", ".join(f"{k}={v}" for k, v in res["autovacuum_settings"].items()),
             "event-table storage parameters: "
             + "; ".join(f"{k}: {', '.join(v) or '(none: server defaults)'}" for k, v in res["reloptions"].items()),
             "worker: one pdr-reflect -i 1 for both reflections (PURGE_INTERVAL default)"]
    if args.get("note"):
        lines.append(f"note: {args['note']}")
    lines.append("")
    head = (f"{'t (s)':>6} | {'default: total kB':>17} {'heap':>6} {'index':>6} {'live':>6} {'dead':>7} "
            f"{'rows':>6} {'av':>3} | {'tuned: total kB':>15} {'heap':>6} {'index':>6} {'live':>6} {'dead':>7} "
            f"{'rows':>6} {'av':>3} | {'lag d/t s':>10} | {'oldest tx s':>11} {'xmin age':>8}")
    lines += [head, "-" * len(head)]
    for s in res["samples"] + [dict(res["after_catch_up"], t="end")]:
        cells = []
        for name in VARIANTS:
            v = s[name]
            cells.append(f"{kb(v['total']):>{17 if name == 't_default' else 15}} {kb(v['heap']):>6} {kb(v['index']):>6} "
                         f"{v['live']:>6} {v['dead']:>7} {v['rows']:>6} {v['autovacuums']:>3}")
        lag = "/".join("-" if s[n]["lag"] is None else f"{s[n]['lag']:.1f}" for n in VARIANTS)
        o = s["others"]
        t = s["t"] if isinstance(s["t"], str) else f"{s['t']:.0f}"
        lines.append(f"{t:>6} | {cells[0]} | {cells[1]} | {lag:>10} | {o['oldest_xact_s']:>11} "
                     f"{o['oldest_xmin_age'] if o['oldest_xmin_age'] is not None else '-':>8}")
    lines.append("")
    lines.append("summary (kB = pg_total_relation_size: heap + pdr_id index; dead = n_dead_tup; av = autovacuum runs)")
    half = [s for s in res["samples"] if s["t"] >= res["samples"][-1]["t"] / 2]
    for name in VARIANTS:
        series = [s[name] for s in res["samples"]]
        slope = ((half[-1][name]["total"] - half[0][name]["total"]) / 1024
                 / max(1e-9, (half[-1]["t"] - half[0]["t"]) / 60)) if len(half) > 1 else 0.0
        runs = [r for r in res["autovacuum_runs"] if r["table"] == name]
        lines.append(
            f"  {name:9} max {kb(max(v['total'] for v in series))} kB (heap {kb(max(v['heap'] for v in series))}, "
            f"index {kb(max(v['index'] for v in series))}), final {kb(series[-1]['total'])} kB, "
            f"growth over the second half {slope:+.1f} kB/min; dead tuples max {max(v['dead'] for v in series):,}, "
            f"mean {sum(v['dead'] for v in series) / len(series):,.0f}; rows in the table max "
            f"{max(v['rows'] for v in series):,}; autovacuums {series[-1]['autovacuums']} "
            f"(log: {len(runs)}, dead not yet removable max {max([r['not_removable'] for r in runs] or [0]):,}, "
            f"heap pages truncated {truncated(runs)}); "
            f"lag max {max((v['lag'] or 0) for v in series):.1f} s")
    if args.get("hold"):
        start, minutes = (float(x) * 60 for x in args["hold"].split(":"))
        phases = [("before the held snapshot", 0, start), ("snapshot held", start, start + minutes),
                  ("after it ended", start + minutes, float("inf"))]
        lines.append("  by phase (max total kB / max heap kB / max index kB / max dead / final total kB / "
                     "growth over the phase's second half, kB/min):")
        for label, low, high in phases:
            part = [s for s in res["samples"] if low <= s["t"] < high]
            if not part:
                continue
            lines.append(f"    {label:25} ({part[0]['t'] / 60:4.1f}-{part[-1]['t'] / 60:4.1f} min) " + "; ".join(
                f"{n}: {kb(max(s[n]['total'] for s in part))} / {kb(max(s[n]['heap'] for s in part))} / "
                f"{kb(max(s[n]['index'] for s in part))} / {max(s[n]['dead'] for s in part):,} / "
                f"{kb(part[-1][n]['total'])} / {growth_rate(part, n):+.1f}" for n in VARIANTS))
    reg = [s["registry"] for s in res["samples"]]
    lines.append(f"  registry pdr_capture: max {kb(max(r['total'] for r in reg))} kB, dead max "
                 f"{max(r['dead'] for r in reg)}, {reg[-1]['updates']:,} updates (one per purge)")
    first, last = res["samples"][0], res["samples"][-1]
    cpu = (last["worker_cpu_s"] - first["worker_cpu_s"]) / max(1e-9, last["t"] - first["t"]) * 100
    lines.append(f"  worker CPU: {cpu:.0f}% of a core")
    oldest = max(s["others"]["oldest_xact_s"] for s in res["samples"])
    lines.append(f"  oldest transaction of any other session at a sample: {oldest} s; idle in transaction at a "
                 f"sample: max {max(s['others']['idle_in_tx'] for s in res['samples'])}")
    lines.append("  after catch-up: " + "; ".join(
        f"{k} destination {'equal to' if v['equal'] else 'DIFFERS from'} source (count, sum n, sum id = "
        f"{v['source']})" for k, v in res["compare"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
