"""Chaos run: the DATABASE SERVERS crash (kill -9 / immediate stop) under concurrent writers.

    python bench/server_crash.py --crashes 10
    python bench/server_crash.py --crashes 3 --pairs postgresql:postgresql,mysql:postgresql --seed 7

It starts its own throwaway PostgreSQL and MariaDB servers (tests/live_servers.py's functions, free
ports, files under /tmp) and stops them at the end: no `tests/live_servers.py run --` wrapper, and it
never touches servers started by anyone else.  Needs PostgreSQL 15 and MariaDB installed (the
functions apt-get install them when run as root); run it with the project's venv.

For each pair (default: every pair of {postgresql, mysql, sqlite} with a server end, i.e. all but
sqlite:sqlite):

- a source table ``t`` and a reflection of it (as bench/crash.py does); a MariaDB source gets a second
  reflection of the same table into a second destination, and a separate process reading
  information_schema.INNODB_TRX every 50 ms on that server ("two readers of each MariaDB server"; InnoDB
  refills that view's cache only after 0.1 s without any read, so the view stays stale meanwhile);
- writer threads (tests/processes.py's Writer) making random inserts, updates, deletes and key
  changes, each in its own key range: ``--writers`` short-transaction writers and ``--long-writers``
  whose transactions stay open ``--hold`` seconds while the others commit, then commit, or roll back
  (``--rollback``).  Writers survive crashes: an interrupted transaction is lost (at the source too)
  and the writer reconnects;
- a ``pdr-reflect -i 0.2`` worker process running throughout (restarted, and counted, if it exits);
- ``--crashes`` times: after ``--duration-between`` seconds, crash the source server, the destination
  server or both (one server when both ends are on it): PostgreSQL with ``pg_ctl stop -m immediate``
  (as the postgres user), MariaDB with kill -9 of mariadbd; restart each after ``--down`` seconds on
  the same port and data directory.  Once the crashed servers accept connections again a marker row
  (negative id) is inserted on the source; the *resume time* is from the server accepting connections
  to the marker being visible in the destination (polled every 50 ms);
- at the end: writers stopped, the worker stopped, one clean one-shot ``pdr-reflect`` pass (after any
  retry back-off has expired), then every row of every destination is compared with the source (set of
  (id, v, n) tuples).  Differences are listed: missing / extra / different rows, the source events
  still kept for those keys and for their transactions (id, op, txid, transaction start), the gaps of
  the reflection's position that covered them (sampled from the Django database every 0.1 s: when
  seen, with their open-transaction proof) and the crash times, to tell what happened.

The worker runs with the test settings (tests/settings.py: default RETRY_BACKOFF 1 s doubling to 60 s),
so the resume time is mostly the back-off slot that follows the restart.  A SQLite source has one
write lock, which the long transactions hold most of the time: few changes, and markers wait for it.

PostgreSQL runs with synchronous_commit=on for role pdr (tests/live_servers.py starts it with
synchronous_commit=off, under which an immediate stop loses recently acknowledged commits: a change
the worker already copied can vanish from the source, and a destination batch from the destination).
``--pg-async-commit`` keeps the server default, to see that happen.

Prints one line per pair and a Markdown table; exits 1 on any difference or failed final pass.  The
work directory (worker logs) is kept when something failed.  It runs the library of the checkout it
lives in (worker processes get PYTHONPATH=<checkout>): to test another version, run the copy of this
file inside a copy of that version (e.g. ``git archive HEAD | tar -x -C /tmp/pdr-head``).
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sqlalchemy as sa  # noqa: E402

from tests import live_servers  # noqa: E402

KINDS = ("postgresql", "mysql", "sqlite")
SERVER_KIND = {"postgresql": "pg", "mysql": "mysql"}  # live_servers' names
DEFAULT_PAIRS = ",".join(f"{s}:{d}" for s in KINDS for d in KINDS if (s, d) != ("sqlite", "sqlite"))
KEY_RANGE = 10_000_000  # each writer inserts from its own multiple of this


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def number_range(text):
    low, _, high = text.partition(",")
    low, high = float(low), float(high or low)
    if low < 0 or high < low:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with 0 <= MIN <= MAX, got {text!r}")
    return low, high


def retry(fn, timeout=60.0, pause=0.1):
    """fn() until it does not raise (a server may be starting, a pooled connection stale)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)


# --------------------------------------------------------------------------- servers


def crash(server):
    """Crash ``server`` (a live_servers.Server): immediate stop / kill -9, no clean shutdown."""
    if server.kind == "pg":
        subprocess.run([os.path.join(server.bindir, "pg_ctl"), "stop", "-m", "immediate", "-w", "-t", "30",
                        "-D", server.datadir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, **server._as_pg())
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pg_ctl failed: make it a crash anyway
        os.killpg(server.pid, signal.SIGKILL)
        server.proc.wait()


def restart(server):
    """Start ``server`` again on the same port and data directory; wait until it accepts connections."""
    server._spawn()
    server._wait_ready()


POLLER = r"""
import json, signal, sys, time
import pymysql
host, user, password = sys.argv[1], sys.argv[3], sys.argv[4]
port, every = int(sys.argv[2]), float(sys.argv[5])
stats = {"reads": 0, "errors": 0, "max_open": 0, "changes": 0}
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
last = None
while not stop:
    try:
        conn = pymysql.connect(host=host, port=port, user=user, password=password, connect_timeout=2)
        cursor = conn.cursor()
        while not stop:
            cursor.execute("SELECT trx_id, trx_state, trx_rows_modified FROM information_schema.INNODB_TRX")
            rows = cursor.fetchall()
            conn.commit()
            stats["reads"] += 1
            stats["max_open"] = max(stats["max_open"], len(rows))
            stats["changes"] += rows != last
            last = rows
            time.sleep(every)
    except Exception:
        stats["errors"] += 1
        time.sleep(0.2)
print(json.dumps(stats), flush=True)
"""


class TrxPoller:
    """A process reading information_schema.INNODB_TRX every ``every`` seconds on a MariaDB server
    (a second reader of that view: InnoDB refills its cache only after 0.1 s without any read)."""

    def __init__(self, port, every=0.05):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", POLLER, live_servers.HOST, str(port), live_servers.USER,
             live_servers.PASSWORD, str(every)], stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.reads = self.errors = self.max_open = self.changes = 0

    def stop(self):
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        with contextlib.suppress(ValueError, IndexError):
            stats = json.loads(out.strip().splitlines()[-1])
            self.reads, self.errors = stats["reads"], stats["errors"]
            self.max_open, self.changes = stats["max_open"], stats["changes"]


class PositionTracker(threading.Thread):
    """Samples the reflections' positions (Django database) every 0.1 s: when each gap was
    first and last seen, for the diagnosis of a lost change."""

    def __init__(self, ids):
        super().__init__(daemon=True)
        self.ids = ids
        self.stop_event = threading.Event()
        self.gaps = {}  # (reflection id, lo, hi) -> [first seen, last seen, proof or waitset last seen]

    def run(self):
        from django.db import connection

        from django_pdr.models import Reflection

        try:
            while not self.stop_event.is_set():
                now = time.time()
                with contextlib.suppress(Exception):
                    positions = Reflection.objects.filter(pk__in=self.ids).values_list("pk", "position")
                    for pk, position in positions:
                        for gap in (position or {}).get("g", []):
                            seen = self.gaps.setdefault((pk, gap[0], gap[1]), [now, now, None])
                            seen[1], seen[2] = now, gap[2] if len(gap) > 2 else None
                self.stop_event.wait(0.1)
        finally:
            connection.close()

    def covering(self, pk, event_id):
        return sorted((v[0], v[1], lo, hi, v[2]) for (p, lo, hi), v in self.gaps.items()
                      if p == pk and lo <= event_id <= hi)

    def stop(self):
        self.stop_event.set()
        self.join(timeout=30)


# --------------------------------------------------------------------------- one pair


class PairRun:
    def __init__(self, pair, args, rng, servers, workdir, tag):
        from tests.targets import Target

        self.pair, self.args, self.rng, self.workdir = pair, args, rng, workdir
        self.source_kind, self.dest_kind = pair.split(":")
        self.source = Target(self.source_kind, Path(workdir))
        self.dests = [Target(self.dest_kind, Path(workdir))]
        if self.source_kind == "mysql":  # the second reader of the MariaDB source: another reflection
            self.dests.append(Target(self.dest_kind, Path(workdir)))
        self.source_server = servers.get(self.source_kind)
        self.dest_server = servers.get(self.dest_kind)
        self.tag = tag
        self.crashes = {"source": 0, "destination": 0}
        self.resume, self.after_commit = [], []  # seconds, per crash
        self.worker_restarts = 0
        self.worker = None
        self.backlog = (0, [])
        self.crash_log = []  # (wall time of the crash, wall time all were ready, servers)
        self.tracker = None
        self.poller = None
        self.writers = []
        self.marker = 0
        self.log_path = os.path.join(workdir, f"worker-{pair.replace(':', '-')}-{tag}.log")

    # -- set-up
    def setup(self):
        from django_pdr.models import Reflection, SourceTable

        self.source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
        st = SourceTable(database=self.source.model(f"src-{self.pair}-{self.tag}"), table="t")
        st.full_clean()
        st.save()
        st.install()
        self.source_table = st
        self.reflections = [
            Reflection.objects.create(source=st, destination=d.model(f"dst{i}-{self.pair}-{self.tag}"),
                                      destination_table="t", batch_size=2000)
            for i, d in enumerate(self.dests)]

    def start_worker(self):
        from tests.processes import start_worker

        self.worker_log = open(self.log_path, "ab")
        self.worker = start_worker(self.env, "-i", "0.2", log=self.worker_log)

    def check_worker(self):
        if self.worker.poll() is not None:
            log(f"{self.pair}: the worker exited with {self.worker.returncode}; restarting it "
                f"(see {self.log_path})")
            self.worker_restarts += 1
            self.start_worker()

    def stop_worker(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
        self.worker_log.close()

    # -- markers
    def insert_marker(self):
        """Insert the next marker row on the source (retried until it commits); its id."""
        self.marker -= 1
        marker = self.marker

        def insert():
            with self.source.engine.begin() as conn:
                if conn.execute(sa.text("SELECT 1 FROM t WHERE id = :id"), {"id": marker}).first():
                    return  # committed by an earlier try whose answer was lost
                conn.execute(sa.text("INSERT INTO t (id, v, n) VALUES (:id, 'marker', 0)"), {"id": marker})

        retry(insert, timeout=120)
        return marker

    def wait_visible(self, marker, timeout):
        """Seconds until ``marker`` is in the first destination (monotonic time), or None."""
        query = sa.text("SELECT 1 FROM t WHERE id = :id")
        deadline = time.monotonic() + timeout
        engine = self.dests[0].engine
        while time.monotonic() < deadline:
            self.check_worker()
            try:
                with engine.connect() as conn:
                    if conn.execute(query, {"id": marker}).first():
                        return time.monotonic()
            except Exception:  # table not created yet, server starting, stale pooled connection
                pass
            time.sleep(0.05)
        return None

    # -- the run
    def victims(self):
        src, dst = self.source_server, self.dest_server
        if src is not None and src is dst:
            self.crashes["source"] += 1
            self.crashes["destination"] += 1
            return [src]
        if src is None or dst is None:
            self.crashes["source" if dst is None else "destination"] += 1
            return [src or dst]
        roll = self.rng.random()
        chosen = [src] if roll < 0.4 else [dst] if roll < 0.8 else [src, dst]
        self.crashes["source"] += src in chosen
        self.crashes["destination"] += dst in chosen
        return chosen

    def run(self, env):
        from tests.processes import Writer

        args, rng = self.args, self.rng
        self.env = env
        self.setup()
        started = time.monotonic()
        self.writers = []
        for i in range(args.writers + args.long_writers):
            long = i >= args.writers
            self.writers.append(Writer(
                self.source.engine, seed=rng.randrange(10 ** 6), first_id=1 + i * KEY_RANGE, own_keys=True,
                reconnect=True, batch=args.long_batch if long else args.writer_batch,
                pause=args.long_pause if long else args.pause,
                hold=args.hold if long else None, rollback=args.rollback if long else 0.0))
        self.tracker = PositionTracker([r.pk for r in self.reflections])
        self.tracker.start()
        self.start_worker()
        for w in self.writers:
            w.start()
        self.poller = (TrxPoller(self.source_server.port, args.trx_poll) if self.source_kind == "mysql"
                       and args.trx_poll > 0 else None)
        try:
            first = self.insert_marker()
            t0 = time.monotonic()
            seen = self.wait_visible(first, args.resume_timeout)
            first_seen = f"first marker after {seen - t0:.1f} s" if seen else "first marker NOT VISIBLE"
            log(f"{self.pair}: replicating ({first_seen})")
            for n in range(1, args.crashes + 1):
                deadline = time.monotonic() + rng.uniform(*args.duration_between)
                while time.monotonic() < deadline:
                    self.check_worker()
                    time.sleep(0.1)
                victims = self.victims()
                downs = sorted(((rng.uniform(*args.down), v) for v in victims), key=lambda d: d[0])
                crashed_at, wall = time.monotonic(), time.time()
                for victim in victims:
                    crash(victim)
                for down, victim in downs:
                    time.sleep(max(0.0, crashed_at + down - time.monotonic()))
                    restart(victim)
                ready = time.monotonic()
                self.crash_log.append((wall, wall + ready - crashed_at, "+".join(v.label for v in victims)))
                marker = self.insert_marker()
                committed = time.monotonic()
                seen = self.wait_visible(marker, args.resume_timeout)
                names = "+".join(v.label for v in victims)
                if seen is None:
                    self.resume.append(float("inf"))
                    self.after_commit.append(float("inf"))
                    log(f"{self.pair}: crash {n}/{args.crashes} ({names}, down {downs[-1][0]:.1f} s): "
                        f"marker {marker} NOT visible after {args.resume_timeout:.0f} s")
                else:
                    self.resume.append(seen - ready)
                    self.after_commit.append(seen - committed)
                    restart_took = ready - crashed_at - downs[-1][0]
                    log(f"{self.pair}: crash {n}/{args.crashes} ({names}, down {downs[-1][0]:.1f} s, restart "
                        f"{restart_took:.1f} s): resumed {seen - ready:.2f} s after ready "
                        f"(marker committed +{committed - ready:.2f} s)")
            self.backlog = self.event_backlog()
        finally:
            for w in self.writers:
                w.stop_event.set()
            for w in self.writers:
                w.stop()
            if self.poller:
                self.poller.stop()
        kinds = sorted({e.split(":")[0] for w in self.writers for e in w.errors})
        if kinds:
            log(f"{self.pair}: writer errors seen (last few per writer): {', '.join(kinds)}")
        final_marker = self.insert_marker()
        self.caught_up_live = self.wait_visible(final_marker, args.resume_timeout) is not None
        self.stop_worker()
        self.tracker.stop()
        self.final = self.final_pass()
        self.compare()
        self.seconds = time.monotonic() - started

    def event_backlog(self):
        """(event rows kept in the source, gaps of each reflection's position) at the end of the
        crashes: how far purging lags (a gap that never settles holds every later event)."""
        from django_pdr.models import Reflection

        def count():
            with self.source.engine.connect() as conn:
                return conn.execute(sa.text(f"SELECT count(*) FROM {self.source_table.event_table}")).scalar()

        kept = retry(count, timeout=30)
        positions = Reflection.objects.filter(pk__in=[r.pk for r in self.reflections])
        gaps = [len((p or {}).get("g", [])) for p in positions.values_list("position", flat=True)]
        return kept, gaps

    def final_pass(self):
        """One clean one-shot pass, once every retry back-off has expired."""
        from django.utils import timezone

        from django_pdr.models import Reflection
        from tests.processes import run_worker_once

        ids = [r.pk for r in self.reflections]
        due = Reflection.objects.filter(pk__in=ids).values_list("next_attempt_at", flat=True)
        later = [t for t in due if t]
        wait = max([(t - timezone.now()).total_seconds() for t in later] + [0.0])
        if wait > 0:
            log(f"{self.pair}: waiting {wait:.1f} s for the retry back-off before the final pass")
            time.sleep(wait + 0.1)
        t0 = time.monotonic()
        result = run_worker_once(self.env, timeout=self.args.final_timeout)
        log(f"{self.pair}: final pass in {time.monotonic() - t0:.1f} s (exit {result.returncode})")
        if result.returncode != 0:
            log(f"{self.pair}: final pass failed:\n{result.stderr[-3000:]}")
        return result

    def compare(self):
        from tests.processes import table_rows

        for target in [self.source, *self.dests]:
            target.engine.dispose()  # pooled connections from before the last crash
        src_rows = retry(lambda: table_rows(self.source.engine))
        self.compared = 0
        self.differences = 0
        self.details = []
        for reflection, dest in zip(self.reflections, self.dests):
            dst_rows = retry(lambda: table_rows(dest.engine))
            self.compared += len(src_rows)
            diff = set(src_rows) ^ set(dst_rows)
            self.differences += len(diff)
            if diff:
                reflection.refresh_from_db()
                self.details.append(self.describe(reflection, src_rows, dst_rows))
        self.source_rows = len(src_rows)

    def describe(self, reflection, src_rows, dst_rows):
        src, dst = {r[0]: r for r in src_rows}, {r[0]: r for r in dst_rows}
        missing = sorted(k for k in src if k not in dst)
        extra = sorted(k for k in dst if k not in src)
        changed = sorted(k for k in src if k in dst and src[k] != dst[k])
        lines = [f"  reflection {reflection.pk} ({reflection.destination.name}): {len(missing)} missing, "
                 f"{len(extra)} extra, {len(changed)} different; position {reflection.position}; "
                 f"status {reflection.status} {reflection.last_error[:200]!r}"]
        for name, keys in (("missing", missing), ("extra", extra), ("different", changed)):
            for k in keys[:20]:
                lines.append(f"    {name} id={k}: source {src.get(k)} destination {dst.get(k)}")
        keys = (missing + extra + changed)[:50]
        if keys:
            lines.extend(self.event_history(reflection, keys))
        return "\n".join(lines)

    def event_history(self, reflection, keys):
        """The source events still kept for ``keys`` (and the other events of their
        transactions), the gaps that covered them, and the crashes: to tell what happened."""
        stamp = lambda t: time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
        lines = ["    crashes: " + "; ".join(f"{v} down {stamp(c)}, ready {stamp(r)}"
                                            for c, r, v in self.crash_log)]
        event_table = reflection.source.event_table
        try:
            with self.source.engine.connect() as conn:
                events = conn.execute(sa.text(
                    f"SELECT pdr_id, pdr_op, pdr_txid, pdr_at, pdr_k0 FROM {event_table} "
                    f"WHERE pdr_k0 IN ({','.join(map(str, keys))}) ORDER BY pdr_id")).all()
                txids = sorted({e[2] for e in events if e[2] is not None})
                same_tx = []
                if txids:
                    same_tx = conn.execute(sa.text(
                        f"SELECT pdr_id, pdr_op, pdr_txid, pdr_at, pdr_k0 FROM {event_table} "
                        f"WHERE pdr_txid IN ({','.join(map(str, txids))}) ORDER BY pdr_id")).all()
        except Exception as exc:
            return lines + [f"    (source events not read: {exc})"]
        if not events:
            return lines + ["    no source event left for those keys (purged: they were settled as applied)"]
        lines.append("    source events kept for those keys (id, op, txid, transaction start, key): "
                     + ", ".join(str(tuple(e)) for e in events[:40]))
        if same_tx:
            lines.append("    every event kept of those transactions: "
                         + ", ".join(str(tuple(e)) for e in same_tx[:60]))
        for event in events[:10]:
            covering = self.tracker.covering(reflection.pk, event[0]) if self.tracker else []
            if covering:
                text = "; ".join(f"[{lo}-{hi}] seen {stamp(a)}..{stamp(b)} proof/waitset {w}"
                                 for a, b, lo, hi, w in covering[-4:])
            else:
                text = "never seen as a gap in the sampled positions (sampled every 0.1 s)"
            lines.append(f"    event {event[0]}: {text}")
        return lines

    # -- figures
    def committed_changes(self):
        return sum(w.committed_changes for w in self.writers) + (-self.marker)

    def summary(self):
        w = self.writers
        ok = [r for r in self.resume if r != float("inf")]
        resume = (f"resume median {statistics.median(ok):.2f} s / max {max(self.resume):.2f} s" if ok
                  else "resume n/a")
        after = [r for r in self.after_commit if r != float("inf")]
        poller = (f", INNODB_TRX read {self.poller.reads:,} times by the poller (result changed "
                  f"{self.poller.changes} times, at most {self.poller.max_open} transactions listed)"
                  if self.poller else "")
        final = "" if self.final.returncode == 0 else f", FINAL PASS FAILED (exit {self.final.returncode})"
        return (f"{self.pair}: {len(self.resume)} server crashes "
                f"(source {self.crashes['source']}, destination {self.crashes['destination']}), "
                f"{self.committed_changes():,} row changes committed "
                f"({sum(x.committed for x in w):,} transactions, "
                f"{sum(x.rolled_back for x in w)} rolled back, "
                f"{sum(x.interrupted for x in w)} interrupted), {len(self.reflections)} reflection(s), "
                f"{self.compared:,} rows compared, {self.differences} differences, {resume} "
                f"(from marker commit: median {statistics.median(after) if after else float('nan'):.2f} s), "
                f"worker restarts {self.worker_restarts}, "
                f"live catch-up {'yes' if self.caught_up_live else 'NO'}, "
                f"{self.backlog[0]:,} source events unpurged and "
                f"{'/'.join(map(str, self.backlog[1]))} gaps open before the writers stopped"
                f"{poller}{final}, {self.seconds:.0f} s")

    def row(self):
        ok = [r for r in self.resume if r != float("inf")]
        resume = f"{statistics.median(ok):.1f} s / {max(self.resume):.1f} s" if ok else "n/a"
        crashes = f"{self.crashes['source']} / {self.crashes['destination']}"
        return (f"| {self.pair.replace(':', ' → ')} | {crashes} "
                f"| {self.committed_changes():,} | {self.compared:,} | {self.differences} | {resume} |")

    def cleanup(self):
        from django_pdr.models import Reflection

        ids = [r.pk for r in getattr(self, "reflections", [])]
        Reflection.objects.filter(pk__in=ids).update(active=False)
        for target in [self.source, *self.dests]:
            with contextlib.suppress(Exception):
                if target.kind != "sqlite":
                    target._admin.dispose()  # its pooled connection may predate a crash
                retry(target.drop, timeout=30)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crashes", type=int, default=10, help="server crashes per pair (default 10)")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS,
                        help=f"source:destination,... (default {DEFAULT_PAIRS})")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--duration-between", type=number_range, default=(2.0, 6.0), metavar="MIN,MAX",
                        help="seconds of running between a resume and the next crash (default 2,6)")
    parser.add_argument("--down", type=number_range, default=(1.0, 5.0), metavar="MIN,MAX",
                        help="seconds a crashed server stays down before its restart (default 1,5)")
    parser.add_argument("--writers", type=int, default=2, help="short-transaction writers (default 2)")
    parser.add_argument("--writer-batch", type=int, default=10, help="row changes per short transaction")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between short transactions")
    parser.add_argument("--long-writers", type=int, default=2, help="long-transaction writers (default 2)")
    parser.add_argument("--long-batch", type=int, default=5, help="row changes per long transaction")
    parser.add_argument("--long-pause", type=float, default=0.1, help="seconds between long transactions")
    parser.add_argument("--hold", type=number_range, default=(1.0, 4.0), metavar="MIN,MAX",
                        help="seconds a long transaction stays open (default 1,4)")
    parser.add_argument("--rollback", type=float, default=0.25, help="share of long transactions rolled back")
    parser.add_argument("--trx-poll", type=float, default=0.05, metavar="SECONDS",
                        help="interval of the INNODB_TRX reader on a MariaDB source (default 0.05; 0: none)")
    parser.add_argument("--resume-timeout", type=float, default=180.0,
                        help="seconds to wait for a marker in the destination")
    parser.add_argument("--final-timeout", type=float, default=1800.0,
                        help="timeout of the final one-shot pass (s)")
    parser.add_argument("--pg-async-commit", action="store_true",
                        help="leave PostgreSQL at synchronous_commit=off "
                             "(crashes then lose acknowledged commits)")
    args = parser.parse_args()

    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    for pair in pairs:
        ends = pair.split(":")
        if len(ends) != 2 or not set(ends) <= set(KINDS):
            parser.error(f"bad pair {pair!r}: expected source:destination among {', '.join(KINDS)}")
        if ends == ["sqlite", "sqlite"]:
            parser.error("sqlite:sqlite has no server to crash")
    kinds = [k for k in ("postgresql", "mysql") if any(k in p.split(":") for p in pairs)]

    workdir = tempfile.mkdtemp(prefix="pdr-server-crash-")
    django_db = os.path.join(workdir, "django.sqlite3")
    for name in [k for k in os.environ if k.startswith(("PDR_TEST_PG_", "PDR_TEST_MYSQL_"))]:
        del os.environ[name]  # never the servers of someone else's shell
    os.environ.update({"DJANGO_SETTINGS_MODULE": "tests.settings", "PDR_TEST_SQLITE_PATH": django_db,
                       "PDR_TEST_DJANGO_DB": "sqlite"})

    guardian = live_servers.Guardian()  # stops our servers should this process die
    started = []
    failed = True
    try:
        started = live_servers.start_servers([SERVER_KIND[k] for k in kinds], guardian=guardian)
        servers = {k: s for k in kinds for s in started if s.kind == SERVER_KIND[k]}
        os.environ.update(live_servers.servers_env(started))
        if "postgresql" in servers and not args.pg_async_commit:
            engine = sa.create_engine(sa.engine.URL.create(
                "postgresql+psycopg2", username=live_servers.USER, password=live_servers.PASSWORD,
                host=live_servers.HOST, port=servers["postgresql"].port, database=live_servers.DB),
                isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql(f"ALTER ROLE {live_servers.USER} SET synchronous_commit = on")
            engine.dispose()

        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from tests.processes import django_env

        env = django_env(django_db)
        rng = random.Random(args.seed)
        results = []
        tag = uuid.uuid4().hex[:6]
        for index, pair in enumerate(pairs):
            run = PairRun(pair, args, rng, servers, workdir, f"{tag}{index}")
            try:
                run.run(env)
            finally:
                if run.worker is not None and run.worker.poll() is None:
                    run.stop_worker()
                run.cleanup()
            results.append(run)
            print(run.summary(), flush=True)
            for detail in run.details:
                print(detail, flush=True)

        print("\n| pair | server crashes (source / destination) | row changes | rows compared | differences "
              "| resume after restart (median / max) |")
        print("|---|---|---|---|---|---|")
        for run in results:
            print(run.row())
        failed = any(r.differences or r.final.returncode != 0 for r in results)
    finally:
        live_servers.stop_servers(started)
        guardian.release()
        if failed:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
