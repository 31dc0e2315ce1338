"""django-pdr at scale: many source tables, one worker, then three (issue 18).

    .venv/bin/python bench/scale.py                       # 1,000 PostgreSQL + 200 MariaDB tables
    .venv/bin/python bench/scale.py --pg-tables 200 --my-tables 50 --busy-events 50000   # quicker

Starts its own servers (bench/run.py's: PostgreSQL A for sources, B for destinations,
MariaDB for sources; durable settings), stopped at the end.  Every source table
(id int primary key, v text, n int) is replicated to its own table on PostgreSQL B.
Measured, with the worker(s) as real ``pdr-reflect -i 1`` processes:

  install   seconds to add and install capture on every table (SourceTable.add each)
  idle      one worker with nothing to do, over --idle-seconds (at least one full-pass
            period, PDR FULL_PASS_INTERVAL, so its periodic full passes are included):
            CPU % of one core, transactions/s it causes on the PostgreSQL source
            (pg_stat_database), queries/s on MariaDB (Questions), RSS
  load      10 busy PostgreSQL tables get --busy-events events each (half INSERT, half
            UPDATE); meanwhile single-row changes to random quiet tables (PostgreSQL and
            MariaDB), one every --quiet-every seconds, each timed from its commit to its
            visibility in the destination: p50, p99, max; the busy tables' catch-up time
  memory    peak RSS (VmHWM) of each worker

then the load phase again with 3 workers.  Prints a table; --json FILE keeps the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import (HOST, PASSWORD, PY, USER, Bench, _cpu_seconds, log, machine, my_connect,  # noqa: E402
                       pg_admin, pg_connect)

BUSY = 10


def rss_mb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


class Scale(Bench):
    def create_tables(self, args):
        pg_admin(self.pga, 'CREATE DATABASE "scale"')
        pg_admin(self.pgb, 'CREATE DATABASE "mirror"')
        conn = pg_connect(self.pga, "scale")
        with conn.cursor() as cur:
            for i in range(args.pg_tables):
                cur.execute(f"CREATE TABLE t{i:04d} (id int PRIMARY KEY, v text, n int)")
        conn.commit()
        conn.close()
        conn = my_connect(self.my, None)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE scale CHARACTER SET utf8mb4")
            cur.execute("USE scale")
            for i in range(args.my_tables):
                cur.execute(f"CREATE TABLE m{i:04d} (id int PRIMARY KEY, v text, n int)")
        conn.commit()
        conn.close()

    def configure(self, args):
        from django_pdr.models import Database, Reflection, SourceTable

        pg = Database.from_url("pg-src", f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.pga.port}/scale")
        my = Database.from_url("my-src", f"mysql://{USER}:{PASSWORD}@{HOST}:{self.my.port}/scale?charset=utf8mb4")
        dst = Database.from_url("pg-dst", f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.pgb.port}/mirror")
        timings = {}
        for db, prefix, count in ((pg, "t", args.pg_tables), (my, "m", args.my_tables)):
            t0 = time.perf_counter()
            for i in range(count):
                st = SourceTable.add(db, f"{prefix}{i:04d}")
                Reflection.objects.create(source=st, destination=dst, destination_table=f"{prefix}{i:04d}")
            timings[db.kind] = time.perf_counter() - t0
            log(f"capture installed on {count} {db.kind} tables in {timings[db.kind]:.1f} s "
                f"({timings[db.kind] / max(count, 1) * 1000:.0f} ms each, reflection included)")
        from django_pdr import worker

        t0 = time.perf_counter()
        result = worker.run()  # loads the (empty) tables: every reflection streams from here
        if result.failed:
            raise SystemExit(f"initial pass failed: {result.failed[0]}")
        log(f"initial pass over {args.pg_tables + args.my_tables} reflections: {time.perf_counter() - t0:.1f} s")
        from django_pdr.connections import dispose_all

        dispose_all()
        return timings

    def workers(self, n, port0):
        procs = []
        for k in range(n):
            logf = open(os.path.join(self.workdir, f"worker{n}-{k}.log"), "w")
            proc = subprocess.Popen([PY, "-m", "django", "pdr-reflect", "-i", "1", "-v", "0",
                                     "--metrics-port", str(port0 + k), "--metrics-address", HOST],
                                    cwd=self.snap, env=dict(os.environ), stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            proc.logf, proc.port = logf, port0 + k
            procs.append(proc)
        return procs

    @staticmethod
    def worker_counter(proc, name):
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://{HOST}:{proc.port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "_total "):
                return float(line.split()[-1])
        return None

    def wait_rounds(self, procs, rounds=2, timeout=900):
        deadline = time.monotonic() + timeout
        for proc in procs:
            while (self.worker_counter(proc, "pdr_worker_passes") or 0) < rounds:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not complete {rounds} rounds: see {proc.logf.name}")
                time.sleep(0.5)

    def source_activity(self):
        """(PostgreSQL source transactions, MariaDB questions) so far."""
        pg = pg_connect(self.pga, "scale", autocommit=True)
        with pg.cursor() as cur:
            cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'scale'")
            xacts = cur.fetchone()[0]
        pg.close()
        my = my_connect(self.my, "scale")
        with my.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            questions = int(cur.fetchone()[1])
        my.close()
        return xacts, questions

    def idle(self, args, procs):
        proc = procs[0]
        self.wait_rounds(procs)
        # the first round is a full pass of every reflection: its CPU per pass prices the
        # periodic full passes (N per FULL_PASS_INTERVAL) that a short window leaves out
        first = _cpu_seconds(proc.pid) / max(1.0, self.worker_counter(proc, "pdr_worker_reflection_passes") or 1)
        cpu0, (x0, q0), t0 = _cpu_seconds(proc.pid), self.source_activity(), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, (x1, q1), t1 = _cpu_seconds(proc.pid), self.source_activity(), time.monotonic()
        seconds = t1 - t0
        out = {"cpu_pct": 100 * (cpu1 - cpu0) / seconds, "pg_xacts_per_s": (x1 - x0 - 1) / seconds,
               "my_questions_per_s": (q1 - q0 - 2) / seconds, "rss_mb": rss_mb(proc.pid), "seconds": seconds,
               "full_pass_cpu_ms": first * 1000}
        from django_pdr import conf

        count = args.pg_tables + args.my_tables
        out["full_passes_cpu_pct"] = 100 * count * first / float(conf.get("FULL_PASS_INTERVAL"))
        log(f"idle: {out['cpu_pct']:.1f}% of a core, {out['pg_xacts_per_s']:.1f} PostgreSQL source transactions/s, "
            f"{out['my_questions_per_s']:.1f} MariaDB queries/s, RSS {out['rss_mb']:.0f} MB over {seconds:.0f} s")
        return out

    def heavy(self, args, procs, label):
        """Busy tables catch up while quiet tables get single-row changes: latencies."""
        self.wait_rounds(procs)
        spies = []
        if args.py_spy:
            os.makedirs(args.py_spy, exist_ok=True)
            for k, p in enumerate(procs):
                out = os.path.join(args.py_spy, f"{label.replace(' ', '')}-{k}.json")
                spies.append(subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid", str(p.pid), "--threads", "--idle", "--nonblocking",
                                               "--format", "speedscope", "--rate", "100", "-o", out],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rng = random.Random(len(procs))
        busy = [f"t{i:04d}" for i in range(BUSY)]
        base = rng.randrange(10_000_000)  # keys of this phase
        src = pg_connect(self.pga, "scale")
        with src.cursor() as cur:
            for name in busy:
                half = args.busy_events // 2
                cur.execute(f"INSERT INTO {name} SELECT g, 'busy', g FROM generate_series({base}, {base + half - 1}) g")
                cur.execute(f"UPDATE {name} SET n = n + 1 WHERE id >= {base}")
        t_written = time.monotonic()
        src.commit()
        log(f"{label}: {BUSY} × {args.busy_events:,} events committed")
        quiet_pg = [f"t{i:04d}" for i in range(BUSY, args.pg_tables)]
        quiet_my = [f"m{i:04d}" for i in range(args.my_tables)]
        dst = pg_connect(self.pgb, "mirror", autocommit=True)
        my = my_connect(self.my, "scale")
        my.autocommit(True)
        src.autocommit = True
        latencies, pending, lock = [], [], threading.Lock()
        samples = []  # (source engine, seconds after the busy commit, latency)
        stop = threading.Event()

        def poll():
            with dst.cursor() as cur:
                while not stop.is_set() or pending:
                    with lock:
                        todo = list(pending)
                    for item in todo:
                        table, key, committed = item
                        cur.execute(f"SELECT 1 FROM {table} WHERE id = %s", (key,))
                        if cur.fetchone():
                            latencies.append(time.monotonic() - committed)
                            samples.append(("postgresql" if table.startswith("t") else "mysql",
                                            round(committed - t_written, 3), round(latencies[-1], 3)))
                            with lock:
                                pending.remove(item)
                    if stop.is_set() and time.monotonic() - stopped[0] > 60:
                        break  # never arrived: counted below
                    time.sleep(0.005)

        canaries = {"source": [], "destination": []}  # (seconds after the busy commit, commit seconds)

        def canary(server, database, name):
            # the floor under any replication latency: one tiny durable commit on the
            # server, timed, every 0.2 s while the load lasts
            conn = pg_connect(server, database, autocommit=True)
            with conn.cursor() as c:
                c.execute("CREATE TABLE IF NOT EXISTS pdr_bench_canary (at double precision)")
                while not stop.is_set():
                    t0 = time.monotonic()
                    c.execute("INSERT INTO pdr_bench_canary VALUES (%s)", (t0,))
                    canaries[name].append((round(t0 - t_written, 3), round(time.monotonic() - t0, 4)))
                    time.sleep(0.2)
            conn.close()

        stopped = [0.0]
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        canary_threads = [threading.Thread(target=canary, args=(self.pga, "scale", "source"), daemon=True),
                          threading.Thread(target=canary, args=(self.pgb, "mirror", "destination"), daemon=True)]
        for thread in canary_threads:
            thread.start()
        writes = 0
        busy_done_at = None
        deadline = time.monotonic() + args.max_seconds
        with dst.cursor() as cur:
            while time.monotonic() < deadline:
                table = rng.choice(quiet_pg + quiet_my)
                key = base + writes
                if table.startswith("t"):
                    with src.cursor() as c:
                        c.execute(f"INSERT INTO {table} VALUES (%s, 'quiet', 0)", (key,))
                    mirror = table
                else:
                    with my.cursor() as c:
                        c.execute(f"INSERT INTO {table} VALUES (%s, 'quiet', 0)", (key,))
                    mirror = table
                with lock:
                    pending.append((mirror, key, time.monotonic()))
                writes += 1
                time.sleep(args.quiet_every)
                if busy_done_at is None and writes % 10 == 0:
                    counts = []
                    for name in busy:
                        cur.execute(f"SELECT count(*) FROM {name} WHERE id >= {base} AND n = id + 1")
                        counts.append(cur.fetchone()[0])
                        if counts[-1] < args.busy_events // 2:
                            break
                    else:
                        busy_done_at = time.monotonic()
                if busy_done_at is not None and writes >= args.min_quiet:
                    break
        stopped[0] = time.monotonic()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        stop.set()
        poller.join(90)
        lost = len(pending)
        src.close()
        my.close()
        dst.close()
        out = {"quiet_changes": writes, "p50_s": pct(latencies, 50), "p99_s": pct(latencies, 99),
               "max_s": max(latencies) if latencies else float("nan"), "never_arrived": lost,
               "busy_catch_up_s": (busy_done_at - t_written) if busy_done_at else None,
               "busy_events": BUSY * args.busy_events,
               "rss_peak_mb": [rss_mb(p.pid, "VmHWM") for p in procs],
               "by_source": {}, "samples": samples, "canaries": canaries}
        for name, values in canaries.items():
            commits = [v for _, v in values]
            log(f"{label}: a one-row durable commit on the {name} server took p50 {pct(commits, 50) * 1000:.1f} ms, "
                f"p99 {pct(commits, 99) * 1000:.1f} ms, max {max(commits or [0]) * 1000:.0f} ms meanwhile")
        for engine in ("postgresql", "mysql"):
            mine = [s[2] for s in samples if s[0] == engine]
            out["by_source"][engine] = {"changes": len(mine), "p50_s": pct(mine, 50), "p99_s": pct(mine, 99),
                                        "max_s": max(mine) if mine else float("nan")}
            log(f"{label}: {engine} quiet tables: p50 {pct(mine, 50):.3f} s, p99 {pct(mine, 99):.3f} s "
                f"over {len(mine)} changes")
        log(f"{label}: quiet-table latency p50 {out['p50_s']:.3f} s, p99 {out['p99_s']:.3f} s, max {out['max_s']:.3f} s "
            f"over {writes} changes ({lost} never arrived); busy catch-up "
            f"{out['busy_catch_up_s'] if out['busy_catch_up_s'] is None else round(out['busy_catch_up_s'], 1)} s; "
            f"peak RSS {', '.join(f'{m:.0f}' for m in out['rss_peak_mb'])} MB")
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-tables", type=int, default=1000)
    parser.add_argument("--my-tables", type=int, default=200)
    parser.add_argument("--busy-events", type=int, default=200_000, help="events per busy table")
    parser.add_argument("--quiet-every", type=float, default=0.2, help="seconds between quiet-table changes")
    parser.add_argument("--min-quiet", type=int, default=50, help="quiet changes at least")
    parser.add_argument("--max-seconds", type=float, default=900, help="longest load phase")
    parser.add_argument("--idle-seconds", type=float, default=None,
                        help="idle window (default: FULL_PASS_INTERVAL + 10 s)")
    parser.add_argument("--full-pass-interval", type=float, default=None,
                        help="PDR FULL_PASS_INTERVAL for the workers (default: the library's)")
    parser.add_argument("--library", choices=("worktree", "head"), default="worktree")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--one-worker", action="store_true", help="skip the 3-worker phase (diagnosis)")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="record each worker's stacks (py-spy, all threads, idle included) during the "
                             "load phases into DIR (diagnosis; py-spy must be installed)")
    args = parser.parse_args()
    pdr = {}
    if args.full_pass_interval is not None:
        pdr["FULL_PASS_INTERVAL"] = args.full_pass_interval
    os.environ["PDR_TEST_PDR_JSON"] = json.dumps(pdr)
    bench = Scale(args)
    results = {"machine": machine(), "args": vars(args)}
    procs = []
    try:
        bench.snapshot(args.library)
        results["library"] = bench.library
        bench.start_servers(mariadb=True)
        bench.setup_django()
        from django.db import connection

        with connection.cursor() as cur:
            # Django's own database (SQLite here) in WAL mode, as docs/operations.md advises
            # for a running worker: its threads' progress writes then never wait for a reader
            cur.execute("PRAGMA journal_mode=WAL")
        from django_pdr import conf

        interval = float(conf.get("FULL_PASS_INTERVAL"))
        args.idle_seconds = args.idle_seconds or interval + 10
        bench.create_tables(args)
        results["install_s"] = bench.configure(args)
        procs = bench.workers(1, 19464)
        results["idle_1"] = bench.idle(args, procs)
        results["load_1"] = bench.heavy(args, procs, "1 worker")
        for p in procs:
            bench.stop_worker(p)
        procs = []
        if not args.one_worker:
            procs = bench.workers(3, 19470)
            results["load_3"] = bench.heavy(args, procs, "3 workers")
    finally:
        for p in procs:
            try:
                bench.stop_worker(p)
            except Exception:
                pass
        bench.stop_servers()
    print()
    print(f"django-pdr at scale: {args.pg_tables} PostgreSQL + {args.my_tables} MariaDB source tables, "
          f"library {results['library']}")
    print(f"  install capture: {results['install_s']['postgresql']:.1f} s for {args.pg_tables} PostgreSQL tables, "
          f"{results['install_s']['mysql']:.1f} s for {args.my_tables} MariaDB tables")
    i = results["idle_1"]
    spread = (f"its periodic full passes (every {interval:g} s) included" if i["seconds"] >= interval
              else f"shorter than the full-pass period of {interval:g} s: those passes not included")
    print(f"  idle, 1 worker ({i['seconds']:.0f} s, {spread}): "
          f"{i['cpu_pct']:.1f}% of a core, {i['pg_xacts_per_s']:.1f} PG transactions/s, "
          f"{i['my_questions_per_s']:.1f} MariaDB queries/s, RSS {i['rss_mb']:.0f} MB")
    print(f"    a full pass costs {i['full_pass_cpu_ms']:.0f} ms of CPU (the first round's average): the periodic "
          f"full passes add {i['full_passes_cpu_pct']:.1f}% of a core on average")
    for key, label in (("load_1", "1 worker"), ("load_3", "3 workers")):
        if key not in results:
            continue
        r = results[key]
        print(f"  {label}: quiet-table commit→visible p50 {r['p50_s']:.3f} s, p99 {r['p99_s']:.3f} s, "
              f"max {r['max_s']:.3f} s ({r['quiet_changes']} changes, {r['never_arrived']} never arrived) while "
              f"{BUSY} busy tables caught up {r['busy_events']:,} events in "
              f"{'not finished' if r['busy_catch_up_s'] is None else format(r['busy_catch_up_s'], '.1f') + ' s'}; "
              f"peak RSS {', '.join(f'{m:.0f}' for m in r['rss_peak_mb'])} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
