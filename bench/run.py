"""django-pdr performance benchmark: one command, its own servers, one table.

    /tmp/venv/bin/python bench/run.py              # full run (1M-event backlogs), ~15 min on 2 cores today
    /tmp/venv/bin/python bench/run.py --quick      # 100k-event backlogs, ~5 min (3 runs of PG->PG)
    /tmp/venv/bin/python bench/run.py --events 300000 --repeat 3 --mem5m
    /tmp/venv/bin/python bench/run.py --profile 200000   # only: cProfile of a PG->PG catch-up
    /tmp/venv/bin/python bench/run.py --only a --pairs pg-pg,fb-pg,pg-fb --events 100000 --repeat 1
    /tmp/venv/bin/python bench/run.py --profile 20000 --pairs fb-pg   # where the time goes, Firebird->PG

Starts two PostgreSQL 15 servers (A: sources and logical-replication publisher;
B: destinations and subscriber; both wal_level=logical, fsync=on,
synchronous_commit=on, full_page_writes=on) and one MariaDB 10.11 server
(innodb_flush_log_at_trx_commit=2, as in the test servers), and a Firebird 3.0
server (tests/live_servers.py's, ServerMode Super, default cache, databases with
forced writes) only when a Firebird pair is asked, all on free ports under /tmp,
stopped and removed at the end.

Measures (see docs/performance.md for what each one means):
  (a) catch-up throughput of a backlog (60% insert, 30% update, 10% delete,
      100 changes per transaction, 7-column table) for PG->PG, PG->MariaDB,
      MariaDB->PG, SQLite->PG, and PostgreSQL's native logical replication on
      the same workload (subscription created disabled before the backlog);
      opt-in (--pairs fb-pg,pg-fb): Firebird->PG and PG->Firebird, on a
      --fb-events backlog (default 100,000), timestamps at Firebird's 100 µs,
      destination compared with the source row by row; no target yet (issue 19);
      where their time goes: the phase table printed after the run, and
      --profile EVENTS --pairs fb-pg (or pg-fb) for cProfile and per-statement times;
  (b) commit -> visible latency at ~1,000 one-row transactions/s, PG->PG,
      worker `pdr-reflect -i 1` (the default settings; --interval) vs logical replication;
  (c) capture overhead: pgbench TPS (2 clients, durable commit) of one-row
      INSERT and UPDATE transactions with/without the capture triggers, and a
      200k-row INSERT ... SELECT with/without;
  (d) worker peak RSS at the backlog size (and at 5M with --mem5m);
  (e) initial load rows/s PG->PG, and PostgreSQL's own initial table
      synchronisation (a subscription with copy_data = true) of the same table,
      5 of each, alternating.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
PGBIN = "/usr/lib/postgresql/15/bin"
USER = PASSWORD = "pdr"
HOST = "127.0.0.1"

from tests.live_servers import FirebirdServer, MariaDBServer, PostgresServer  # noqa: E402


LOADAVG = []


def log(msg):
    load = os.getloadavg()[0]
    LOADAVG.append(load)
    print(f"[{time.strftime('%H:%M:%S')} load {load:.1f}] {msg}", file=sys.stderr, flush=True)


#: The targets of issue 20 printed beside the figures (the ratios are computed from the run).
PAIR_RATE = 150_000  # events/s, every pair other than PG→PG
RSS_MB = 100  # worker peak RSS, every pair, flat from 1M to 5M
CAPTURE_LOSS, CAPTURE_BULK = 0.05, 1.25  # one-row TPS loss; 200k-row INSERT ... SELECT

# --------------------------------------------------------------------------- servers
PG_SHARED_BUFFERS = os.environ.get("PDR_BENCH_PG_SHARED_BUFFERS", "512MB")  # diagnosis only


class BenchPostgres(PostgresServer):
    """PostgreSQL 15 with durable commits (fsync, synchronous_commit, full_page_writes on)."""

    def _spawn(self):
        self._popen([os.path.join(self.bindir, "postgres"), "-D", self.datadir, "-k", self.socket,
                     "-c", f"listen_addresses={HOST}", "-c", f"port={self.port}",
                     "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
                     "-c", "wal_level=logical", "-c", "max_connections=100", "-c", "max_wal_senders=20",
                     "-c", "max_replication_slots=20", "-c", f"shared_buffers={PG_SHARED_BUFFERS}",
                     "-c", "max_wal_size=8GB", "-c", "checkpoint_timeout=30min",
                     "-c", "max_logical_replication_workers=8", "-c", "max_worker_processes=16",
                     # the launcher starts apply workers at most once per this interval (default 5 s):
                     # back-to-back timed subscription runs would otherwise include a 5 s wait
                     "-c", "wal_retrieve_retry_interval=100ms"],
                    **self._as_pg())


class BenchMariaDB(MariaDBServer):
    def _spawn(self):
        cmd = [self.mariadbd, "--no-defaults", "--user=root", f"--datadir={self.datadir}",
               f"--socket={self.socket}", f"--port={self.port}", f"--bind-address={HOST}",
               f"--pid-file={os.path.join(self.tmpdir, 'mariadbd.pid')}",
               "--skip-log-bin", "--skip-name-resolve", "--character-set-server=utf8mb4",
               "--collation-server=utf8mb4_unicode_ci", "--max-connections=300",
               "--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=512M",
               "--innodb-log-file-size=512M", "--innodb-fast-shutdown=2"]
        self._popen(cmd, env=dict(os.environ))


class BenchFirebird(FirebirdServer):
    """Firebird 3.0 as the tests run it (ServerMode Super, DefaultDbCachePages 2048); the
    databases are created with the driver's defaults (forced writes on: durable commits)."""

    label = "firebird"


# --------------------------------------------------------------------------- SQL helpers
def pg_connect(server, db, autocommit=False):
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=server.port, user=USER, password=PASSWORD, dbname=db,
                            options="-c timezone=UTC")
    conn.autocommit = autocommit
    return conn


def fb_path(server, db):
    """Server-side path of database ``db`` (a file in the Firebird server's data directory)."""
    return os.path.join(server.socket, f"{db}.fdb")


def fb_connect(server, db):
    from firebird.driver import connect

    return connect(f"{HOST}/{server.port}:{fb_path(server, db)}", user=server.user, password=PASSWORD,
                   charset="UTF8")


def fb_create(server, db):
    from firebird.driver import create_database

    create_database(f"{HOST}/{server.port}:{fb_path(server, db)}", user=server.user, password=PASSWORD,
                    charset="UTF8").close()


def my_connect(server, db):
    import pymysql

    return pymysql.connect(host=HOST, port=server.port, user=USER, password=PASSWORD, database=db,
                           charset="utf8mb4", autocommit=False)


def pg_admin(server, *statements, db="pdr"):
    conn = pg_connect(server, db, autocommit=True)
    with conn.cursor() as cur:
        for s in statements:
            cur.execute(s)
    conn.close()


def wait_for(cur, sql, ready, timeout, what):
    """Run ``sql`` every 10 ms until ``ready(its first row)``; SystemExit after ``timeout`` s."""
    started = time.monotonic()
    while True:
        cur.execute(sql)
        if ready(cur.fetchone()):
            return
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what} in {timeout} s")
        time.sleep(0.01)


def pg_scalar(server, db, sql):
    conn = pg_connect(server, db, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(sql)
        value = cur.fetchone()[0]
    conn.close()
    return value


DDL = {
    "postgresql": ("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, name varchar(40), "
                   "score double precision, amount numeric(12,2), created timestamp, flag boolean)"),
    "mysql": ("CREATE TABLE t (id bigint PRIMARY KEY, n integer NOT NULL, name varchar(40), "
              "score double, amount decimal(12,2), created datetime(6), flag boolean) ENGINE=InnoDB"),
    "sqlite": ("CREATE TABLE t (id BIGINT PRIMARY KEY, n INTEGER NOT NULL, name VARCHAR(40), "
               "score REAL, amount NUMERIC(12,2), created DATETIME, flag BOOLEAN)"),
    "firebird": ("CREATE TABLE t (id bigint NOT NULL PRIMARY KEY, n integer NOT NULL, name varchar(40), "
                 "score double precision, amount numeric(12,2), created timestamp, flag boolean)"),
}
SENTINEL = 10 ** 12


class Source:
    """A source database (one engine) the workload writes into, table ``t``."""

    def __init__(self, kind, server=None, name=None, path=None):
        self.kind, self.server, self.name, self.path = kind, server, name, path

    @classmethod
    def create(cls, kind, server=None, name=None, workdir=None):
        if kind == "postgresql":
            pg_admin(server, f'CREATE DATABASE "{name}"')
            src = cls(kind, server, name)
        elif kind == "mysql":
            conn = my_connect(server, "pdr")
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            conn.close()
            src = cls(kind, server, name)
        elif kind == "firebird":
            fb_create(server, name)
            src = cls(kind, server, name)
        else:
            path = os.path.join(workdir, f"{name}.sqlite3")
            src = cls(kind, path=path)
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.close()
        src.execute(DDL[kind])
        return src

    def connect(self):
        if self.kind == "postgresql":
            return pg_connect(self.server, self.name)
        if self.kind == "mysql":
            return my_connect(self.server, self.name)
        if self.kind == "firebird":
            return fb_connect(self.server, self.name)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def execute(self, *statements):
        conn = self.connect()
        cur = conn.cursor()
        if self.kind == "sqlite":
            cur.execute("BEGIN")
        for s in statements:
            cur.execute(s)
        conn.commit() if self.kind != "sqlite" else cur.execute("COMMIT")
        conn.close()

    def model(self, label):
        from django_pdr.models import Database

        if self.kind == "sqlite":
            return Database.objects.create(name=label, kind="sqlite", database=self.path)
        if self.kind == "firebird":
            return Database.objects.create(name=label, kind="firebird", host=HOST, port=self.server.port,
                                           username=self.server.user, password=PASSWORD,
                                           database=fb_path(self.server, self.name))
        return Database.objects.create(name=label, kind=self.kind, host=HOST, port=self.server.port,
                                       username=USER, password=PASSWORD, database=self.name)

    def summary(self, table="t"):
        """(row count, sum of n, sum of name lengths): compared after each catch-up."""
        conn = self.connect()
        cur = conn.cursor()
        length = "char_length" if self.kind == "firebird" else "length"
        cur.execute(f"SELECT count(*), coalesce(sum(n), 0), coalesce(sum({length}(name)), 0) FROM {table}")
        row = tuple(int(x) for x in cur.fetchone())
        conn.close()
        return row

    def rows(self, table="t"):
        """Every row of ``table`` as a tuple of Python values (compared row by row after the
        catch-ups of the Firebird pairs; Decimal, float, datetime and bool compare by value)."""
        conn = self.connect()
        cur = conn.cursor()
        cur.execute(f"SELECT id, n, name, score, amount, created, flag FROM {table} ORDER BY id")
        out = [tuple(r) for r in cur.fetchall()]
        conn.close()
        return out


def row_differences(expected, got, show=3):
    """(number of rows that differ, a few of them): rows missing, extra or changed."""
    diff = set(expected) ^ set(got)
    return len(diff), sorted(diff, key=lambda r: (r[0], r in set(got)))[:show]


def dest_pg(server, name):
    pg_admin(server, f'CREATE DATABASE "{name}"')
    return Source("postgresql", server, name)


def dest_fb(server, name):
    fb_create(server, name)
    return Source("firebird", server, name)


def dest_my(server, name):
    conn = my_connect(server, "pdr")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return Source("mysql", server, name)


# --------------------------------------------------------------------------- workload
def _lit_row(i, rng, micro_step=1):
    """One row's SQL literal.  ``micro_step=100``: the fraction of a second truncated to
    Firebird's 100 µs, written with 4 digits (the same random draws in the same order, so
    the same workload otherwise)."""
    name = "".join(rng.choices(string.ascii_letters, k=rng.randint(8, 30)))
    head = (f"({i}, {rng.randint(0, 10 ** 6)}, '{name}', {rng.random() * 1000:.6f}, "
            f"{rng.randint(0, 10 ** 8) / 100:.2f}, '2026-01-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.")
    micro = rng.randint(0, 999999)
    fraction = f"{micro // 100:04d}" if micro_step == 100 else f"{micro:06d}"
    return f"{head}{fraction}', {'TRUE' if rng.random() < 0.5 else 'FALSE'})"


def _insert(kind, rows):
    """One statement inserting ``rows`` (literals): multi-row VALUES, or for Firebird 3
    (which has none) an EXECUTE BLOCK of one-row INSERTs -- one round trip either way."""
    columns = "INSERT INTO t (id, n, name, score, amount, created, flag) VALUES "
    if kind == "firebird":
        return "EXECUTE BLOCK AS BEGIN\n" + "".join(f"{columns}{r};\n" for r in rows) + "END"
    return columns + ", ".join(rows)


def generate_backlog(src: Source, events: int, seed=2026, per_tx=100, micro_step=1):
    """``events`` row changes, ``per_tx`` per transaction: 60% INSERT, 30% UPDATE, 10% DELETE.

    One multi-row statement per kind per transaction (so PostgreSQL's statement-level
    triggers fire three times per transaction, MariaDB's and Firebird's row triggers once
    per row).  The last transaction also inserts a sentinel row (id 10**12): the logical
    replication timer waits for it.  ``micro_step``: see _lit_row (100 for the pairs with
    Firebird).  Returns (events written, seconds)."""
    rng = random.Random(seed)
    n_ins, n_upd = int(per_tx * 0.6), int(per_tx * 0.3)
    n_del = per_tx - n_ins - n_upd
    live: list[int] = []
    next_id = 1
    conn = src.connect()
    cur = conn.cursor()
    if src.kind == "postgresql":
        cur.execute("SET synchronous_commit = off")  # building the backlog only; timing is elsewhere
        conn.commit()
    started = time.perf_counter()
    written = 0
    txs = max(1, events // per_tx)
    for tx in range(txs):
        if src.kind == "sqlite":
            cur.execute("BEGIN")
        rows = []
        for _ in range(n_ins):
            rows.append(_lit_row(next_id, rng, micro_step))
            live.append(next_id)
            next_id += 1
        cur.execute(_insert(src.kind, rows))
        picks = rng.sample(range(len(live)), n_upd + n_del)
        upd = [live[i] for i in picks[:n_upd]]
        dele_idx = sorted(picks[n_upd:], reverse=True)
        dele = [live[i] for i in dele_idx]
        word = "".join(rng.choices(string.ascii_letters, k=12))
        cur.execute(f"UPDATE t SET n = n + 1, name = '{word}', score = score + 1 WHERE id IN "
                    f"({', '.join(map(str, upd))})")
        cur.execute(f"DELETE FROM t WHERE id IN ({', '.join(map(str, dele))})")
        for i in dele_idx:  # swap-remove
            live[i] = live[-1]
            live.pop()
        written += per_tx
        if tx == txs - 1:
            cur.execute(_insert(src.kind, [_lit_row(SENTINEL, rng, micro_step)]))
            written += 1
        if src.kind == "sqlite":
            cur.execute("COMMIT")
        else:
            conn.commit()
    conn.close()
    return written, time.perf_counter() - started


def _cpu_seconds(pid):
    """user+system CPU seconds of a process (the polling worker's cost while idle-waiting)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- PDR plumbing
class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="pdr-bench-")
        self.py_spy = getattr(args, "py_spy", None)
        self.django_db = os.path.join(self.workdir, "django.sqlite3")
        self.servers = []
        self.results = {}
        self.notes = []

    # -- servers ----------------------------------------------------------------
    def start_servers(self, mariadb=True, firebird=False):
        self.pga, self.pgb = BenchPostgres(), BenchPostgres()
        self.pga.label, self.pgb.label = "postgresql A (sources, publisher)", "postgresql B (destinations, subscriber)"
        self.my = BenchMariaDB() if mariadb else None
        self.fb = BenchFirebird() if firebird else None
        todo = [s for s in (self.pga, self.pgb, self.my, self.fb) if s is not None]
        threads, errors = [], []
        for s in todo:
            self.servers.append(s)

            def start(s=s):
                try:
                    s.start()
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            threads.append(threading.Thread(target=start))
            threads[-1].start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def stop_servers(self):
        from django_pdr.connections import dispose_all

        try:
            dispose_all()
        except Exception:
            pass
        for s in self.servers:
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping {s.label}: {exc}")

    # -- library snapshot -------------------------------------------------------------
    def snapshot(self, source):
        """Copy the library (and the test settings) into the work directory and run that copy.

        Other people edit django_pdr/ while a long run goes on: a run must measure one
        consistent version.  ``source`` is "worktree" (the files as they are now; retried
        for a minute if the copy does not import, e.g. caught mid-edit) or "head" (git HEAD)."""
        import shutil

        def head_rev():
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()

        for attempt in range(13):
            snap = os.path.join(self.workdir, f"snap{attempt}")
            os.makedirs(os.path.join(snap, "tests"))
            os.makedirs(os.path.join(snap, "bench"))
            if source == "head":
                arch = subprocess.run(["git", "archive", "HEAD", "django_pdr", "tests/__init__.py",
                                       "tests/settings.py", "tests/urls.py"], cwd=ROOT, capture_output=True)
                subprocess.run(["tar", "-x", "-C", snap], input=arch.stdout, check=True)
                desc = f"git HEAD {head_rev()}"
            else:
                shutil.copytree(os.path.join(ROOT, "django_pdr"), os.path.join(snap, "django_pdr"),
                                ignore=shutil.ignore_patterns("__pycache__"))
                for f in ("__init__.py", "settings.py", "urls.py"):
                    shutil.copy(os.path.join(ROOT, "tests", f), os.path.join(snap, "tests", f))
                dirty = subprocess.run(["git", "status", "--short", "django_pdr"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.split("\n")
                dirty = [line[3:] for line in dirty if line.strip()]
                desc = (f"working tree at {time.strftime('%Y-%m-%d %H:%M')} on git HEAD {head_rev()}"
                        + (f" + uncommitted changes to {len(dirty)} file(s) under django_pdr/" if dirty else ""))
            shutil.copy(os.path.join(ROOT, "bench", "_worker.py"), os.path.join(snap, "bench", "_worker.py"))
            check = subprocess.run(
                [PY, "-c", "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings');"
                           "django.setup(); import django_pdr.worker, django_pdr.engine.runner"],
                cwd=snap, env=dict(os.environ, PYTHONPATH=snap,
                                   PDR_TEST_SQLITE_PATH=os.path.join(self.workdir, "check.sqlite3")),
                capture_output=True, text=True)
            if check.returncode == 0:
                self.snap, self.library = snap, desc
                log(f"benchmarking the library as of: {desc} (copied to {snap})")
                return
            last = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "?"
            if source == "head":
                raise SystemExit(f"git HEAD's library does not import: {last}")
            log(f"the working tree's library does not import right now ({last}); retrying in 5 s")
            time.sleep(5)
        raise SystemExit("the working tree's library did not import for a minute: try --library head")

    # -- django ----------------------------------------------------------------
    def setup_django(self):
        os.environ.update({"DJANGO_SETTINGS_MODULE": "tests.settings", "PDR_TEST_SQLITE_PATH": self.django_db,
                           "PDR_TEST_DJANGO_DB": "sqlite", "PYTHONPATH": self.snap})
        sys.path.insert(0, self.snap)
        for name in [m for m in sys.modules if m == "tests" or m.startswith("tests.")]:
            del sys.modules[name]  # tests.live_servers came from the checkout; settings must come from the copy
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        import django_pdr

        log(f"django_pdr imported from {os.path.dirname(django_pdr.__file__)}")

    def reflection(self, src_db, table, dest_db, label):
        from django_pdr.models import Reflection, SourceTable

        st = SourceTable.objects.filter(database=src_db, table=table).first()
        if st is None:
            st = SourceTable(database=src_db, table=table)
            st.full_clean()
            st.save()
            st.install()
        return Reflection.objects.create(source=st, destination=dest_db, destination_table=table)

    def worker_pass(self, reflection):
        """Run the worker in-process until the reflection is caught up (set-up, untimed)."""
        from django_pdr import worker

        while True:
            r = worker.run_round(ids=[reflection.pk])
            if r.failed:
                raise SystemExit(f"worker failed: {r.failed[0][1]}")
            reflection.refresh_from_db()
            if r.events == 0 and (reflection.load_progress or {}).get("phase") != "load":
                return

    def timed_worker(self, reflection, profile=None):
        """Catch up in a fresh process (bench/_worker.py); returns its JSON report."""
        from django_pdr.connections import dispose_all

        dispose_all()
        cmd = [PY, os.path.join(self.snap, "bench", "_worker.py"), "--reflection", str(reflection.pk)]
        if profile:
            cmd += ["--profile", profile]
        if os.environ.get("PDR_BENCH_PYSPY"):  # sample both threads: py-spy record -f raw
            out = f"{os.environ['PDR_BENCH_PYSPY']}-{reflection.pk}.txt"
            cmd = ["py-spy", "record", "--idle", "--threads", "-r", "200", "-f", "raw", "-o", out, "--"] + cmd
        proc = subprocess.run(cmd, cwd=self.snap, env=dict(os.environ), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"timed worker failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])

    # -- (a) catch-up -------------------------------------------------------------
    def source_server(self, kind):
        return {"postgresql": self.pga, "mysql": self.my, "firebird": self.fb, "sqlite": None}[kind]

    def destination(self, kind, name):
        if kind == "postgresql":
            return dest_pg(self.pgb, name)
        return dest_fb(self.fb, name) if kind == "firebird" else dest_my(self.my, name)

    def catchup_pair(self, label, src_kind, dst_kind, events, repeat, seed):
        """Catch-up of one backlog by ``repeat`` reflections in turn.  Pairs with Firebird:
        timestamps at 100 µs, and the destination compared with the source row by row
        (the others: row count and two sums)."""
        firebird = "firebird" in (src_kind, dst_kind)
        tag = re.sub(r"\W", "", label.lower())
        src = Source.create(src_kind, self.source_server(src_kind), f"src_{tag}", self.workdir)
        src_db = src.model(f"src-{tag}")
        runs = []
        reflections = []
        for i in range(repeat):
            dst = self.destination(dst_kind, f"dst_{tag}_{i}")
            refl = self.reflection(src_db, "t", dst.model(f"dst-{tag}-{i}"), label)
            self.worker_pass(refl)  # initial load of the empty table: stream phase from here
            reflections.append((refl, dst))
        log(f"{label}: building a {events:,}-event backlog (worker stopped)")
        n, secs = generate_backlog(src, events, seed=seed, micro_step=100 if firebird else 1)
        log(f"{label}: backlog of {n:,} events written in {secs:.1f} s ({n / secs:,.0f}/s)")
        expected = src.rows() if firebird else src.summary()
        for i, (refl, dst) in enumerate(reflections):
            rep = self.timed_worker(refl)
            if firebird:
                differ, sample = row_differences(expected, dst.rows())
                ok = differ == 0
                verdict = (f"matches row by row ({len(expected):,} rows)" if ok else
                           f"DIFFERS in {differ:,} rows (missing, extra or changed), e.g. {sample}")
            else:
                got = dst.summary()
                ok = got == expected
                verdict = "matches" if ok else f"DIFFERS: {got} vs {expected}"
            apply_s = rep["seconds"] - rep["purge_seconds"]
            rep.update(ok=ok, backlog=n, rate=rep["events"] / apply_s if apply_s else 0,
                       rate_incl_purge=rep["events"] / rep["seconds"])
            runs.append(rep)
            log(f"{label} run {i + 1}: {rep['events']:,} events in {rep['seconds']:.1f} s "
                f"(purge {rep['purge_seconds']:.1f} s) -> {rep['rate']:,.0f} events/s; "
                f"peak RSS {rep['rss_peak_mb']:.0f} MB; destination {verdict}")
        return runs

    def logical_replication(self, events, repeat, seed, tag="lr"):
        """Native publication/subscription on the same workload; subscriptions created
        disabled (slots made) before the backlog, enabled one at a time and timed until
        the sentinel row (in the last transaction) is visible on the subscriber.  ``tag``:
        prefix of its databases, publication, subscriptions and slots."""
        pg_admin(self.pga, f'CREATE DATABASE "{tag}_src"')
        src = Source("postgresql", self.pga, f"{tag}_src")
        src.execute(DDL["postgresql"], f"CREATE PUBLICATION {tag}_pub FOR TABLE t")
        dsts = []
        for i in range(repeat):
            dst = dest_pg(self.pgb, f"{tag}_dst_{i}")
            dst.execute(DDL["postgresql"])
            pg_admin(self.pgb,
                     f"CREATE SUBSCRIPTION {tag}_sub_{i} CONNECTION "
                     f"'host={HOST} port={self.pga.port} user={USER} "
                     f"password={PASSWORD} dbname={tag}_src' PUBLICATION {tag}_pub "
                     f"WITH (enabled = false, copy_data = false, create_slot = true, "
                     f"slot_name = '{tag}_slot_{i}')",
                     db=f"{tag}_dst_{i}")
            dsts.append(dst)
        log(f"logical replication: building a {events:,}-event backlog (subscriptions disabled)")
        n, secs = generate_backlog(src, events, seed=seed)
        log(f"logical replication: backlog of {n:,} events written in {secs:.1f} s")
        expected = src.summary()
        runs = []
        for i, dst in enumerate(dsts):
            conn = pg_connect(self.pgb, f"{tag}_dst_{i}", autocommit=True)
            cur = conn.cursor()
            t0 = time.perf_counter()
            cur.execute(f"ALTER SUBSCRIPTION {tag}_sub_{i} ENABLE")
            wait_for(cur, f"SELECT count(*) FROM t WHERE id = {SENTINEL}", lambda row: row[0], 3600,
                     "logical replication did not catch up")
            secs = time.perf_counter() - t0
            cur.execute(f"ALTER SUBSCRIPTION {tag}_sub_{i} DISABLE")
            conn.close()
            got = dst.summary()
            runs.append({"events": n, "seconds": secs, "rate": n / secs, "ok": got == expected})
            log(f"logical replication run {i + 1}: {n:,} events in {secs:.1f} s -> {n / secs:,.0f} events/s; "
                f"subscriber {'matches' if got == expected else 'DIFFERS'}")
        for i in range(repeat):
            pg_admin(self.pgb, f"DROP SUBSCRIPTION {tag}_sub_{i}", db=f"{tag}_dst_{i}")
        pg_admin(self.pga, f'DROP DATABASE "{tag}_src" WITH (FORCE)')
        return runs

    # -- (b) latency ----------------------------------------------------------------
    def _latency_run(self, write_conns, read_conn, seconds, rate, base=10 ** 9):
        """One-row durable commits at ``rate``/s spread over the connections of
        ``write_conns`` (one thread each, ids interleaved), for ``seconds``; a poller on the
        destination notes when each id appears (every 5 ms: the ids above the lowest one
        not seen yet, so that ids committed out of order by several writers are timed
        each)."""
        commits: dict[int, float] = {}
        visible: dict[int, float] = {}
        stop = threading.Event()
        writers = len(write_conns)
        written = [0] * writers

        def poller():
            cur = read_conn.cursor()
            low = base  # every id at or below it was seen
            while not stop.is_set():
                cur.execute(f"SELECT id FROM t WHERE id > {low}")
                now = time.monotonic()
                for (i,) in cur.fetchall():
                    visible.setdefault(i, now)
                while low + 1 in visible:
                    low += 1
                time.sleep(0.005)

        def writer(t, conn):
            cur = conn.cursor()  # durable commits (synchronous_commit=on): with it off, WAL reaches the
            # walsender only at the WAL writer's next flush (wal_writer_delay 200 ms), which would bias the baseline
            interval = writers / rate
            i = 0
            while True:
                due = t0 + i * interval + t * interval / writers
                now = time.monotonic()
                if now - t0 >= seconds:
                    break
                if due > now:
                    time.sleep(due - now)
                key = base + 1 + i * writers + t
                cur.execute(f"INSERT INTO t (id, n, name) VALUES ({key}, {i}, 'latency')")
                conn.commit()
                commits[key] = time.monotonic()
                i += 1
            written[t] = i

        reader = threading.Thread(target=poller, daemon=True)
        reader.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=writer, args=(t, conn)) for t, conn in enumerate(write_conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while any(k not in visible for k in list(commits)) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        reader.join()
        warm = t0 + 1.0  # skip the first second
        lat = sorted((visible[k] - c) * 1000 for k, c in commits.items() if k in visible and c >= warm)
        missing = sum(1 for k in commits if k not in visible)

        def pct(p):
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

        return {"rate": len(commits) / elapsed, "p50": pct(50), "p95": pct(95), "p99": pct(99),
                "max": lat[-1] if lat else 0, "samples": len(lat), "missing": missing, "commits": len(commits),
                "writers": writers, "lat": lat}

    def start_worker(self, refl, interval, label):
        """``pdr-reflect -i interval -r refl`` as a real process (stop it with stop_worker)."""
        logf = open(os.path.join(self.workdir, f"{label}-worker.log"), "w")
        proc = subprocess.Popen([PY, "-m", "django", "pdr-reflect", "-i", str(interval), "-v", "0",
                                 "-r", str(refl.pk)], cwd=self.snap, env=dict(os.environ), stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.logf = logf
        return proc

    @staticmethod
    def stop_worker(proc):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.logf.close()

    def _notification_counter(self, db, is_writer):
        """Count the capture notifications on ``db`` until called: (from backends for which
        ``is_writer(pid)``, from others — the worker telling workers asleep on its arm)."""
        from django_pdr.dialects.postgresql import NOTIFY_CHANNEL

        conn = pg_connect(self.pga, db, autocommit=True)
        conn.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")
        counts, stop = [0, 0], threading.Event()

        def listen():
            import select as select_module

            while not stop.is_set():
                select_module.select([conn], [], [], 0.05)
                conn.poll()
                for n in conn.notifies:
                    counts[0 if is_writer(n.pid) else 1] += 1
                conn.notifies.clear()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()

        def finish():
            stop.set()
            thread.join()
            conn.close()
            return tuple(counts)
        return finish

    def latency(self, seconds, rate, interval, writers=1, rounds=3):
        """django-pdr (``pdr-reflect -i interval`` as a real process) and native logical
        replication, measured in ``rounds`` alternating windows of ``seconds / rounds``
        each (pdr, native, pdr, native, ...): background work left by the sections before
        (autovacuum of the catch-ups' tables) falls on both alike.  Percentiles are of all
        the windows' commits pooled; each window's p50/p99 are kept too."""
        from django_pdr.connections import dispose_all

        window = seconds / rounds
        src = Source.create("postgresql", self.pga, "lat_src")
        dst = dest_pg(self.pgb, "lat_dst")
        refl = self.reflection(src.model("lat-src"), "t", dst.model("lat-dst"), "latency")
        self.worker_pass(refl)
        dispose_all()
        pg_admin(self.pga, 'CREATE DATABASE "latlr_src"')
        lsrc = Source("postgresql", self.pga, "latlr_src")
        lsrc.execute(DDL["postgresql"], "CREATE PUBLICATION latlr_pub FOR TABLE t")
        ldst = dest_pg(self.pgb, "latlr_dst")
        ldst.execute(DDL["postgresql"])
        pg_admin(self.pgb, f"CREATE SUBSCRIPTION latlr_sub CONNECTION 'host={HOST} port={self.pga.port} "
                           f"user={USER} password={PASSWORD} dbname=latlr_src' PUBLICATION latlr_pub "
                           f"WITH (copy_data = false)", db="latlr_dst")
        lsrc.execute("INSERT INTO t (id, n) VALUES (1, 0)")  # wait for the apply worker to stream
        t0 = time.time()
        while ldst.summary()[0] < 1 and time.time() - t0 < 60:
            time.sleep(0.05)
        proc = self.start_worker(refl, interval, "latency")
        runs = {"pdr": [], "lr": []}
        try:
            time.sleep(3)
            pdr_ws, pdr_r = [src.connect() for _ in range(writers)], dst.connect()
            lr_ws, lr_r = [lsrc.connect() for _ in range(writers)], ldst.connect()
            pdr_r.autocommit = lr_r.autocommit = True
            pids = {w.get_backend_pid() for w in pdr_ws}
            heard = self._notification_counter("lat_src", lambda p: p in pids)
            cpu = busy = 0.0
            for n in range(rounds):
                base = 10 ** 9 + n * 10 ** 7
                spy = None
                if self.py_spy and n == 0:  # the worker's stacks (all threads, idle included) while it keeps up
                    spy = subprocess.Popen([os.path.join(os.path.dirname(PY), "py-spy"), "record", "--pid",
                                            str(proc.pid), "--threads", "--idle", "--nonblocking", "--format",
                                            "raw", "--rate", "200", "-d", str(int(window)), "-o", self.py_spy],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu0, started = _cpu_seconds(proc.pid), time.monotonic()
                runs["pdr"].append(self._latency_run(pdr_ws, pdr_r, window, rate, base))
                if spy is not None:
                    spy.wait()
                cpu, busy = cpu + _cpu_seconds(proc.pid) - cpu0, busy + time.monotonic() - started
                runs["lr"].append(self._latency_run(lr_ws, lr_r, window, rate, base))
                log(f"latency round {n + 1}: django-pdr p50 {runs['pdr'][-1]['p50']:.1f} / p99 "
                    f"{runs['pdr'][-1]['p99']:.1f} ms, native p50 {runs['lr'][-1]['p50']:.1f} / p99 "
                    f"{runs['lr'][-1]['p99']:.1f} ms")
            notified = heard()
            [w.close() for w in pdr_ws + lr_ws], pdr_r.close(), lr_r.close()
        finally:
            self.stop_worker(proc)
        pg_admin(self.pgb, "DROP SUBSCRIPTION latlr_sub", db="latlr_dst")
        out = {key: _pooled(values) for key, values in runs.items()}
        out["pdr"]["worker_cpu"] = cpu / max(busy, 1e-9)
        out["pdr"]["notified"], out["pdr"]["notified_by_worker"] = notified
        log(f"latency PDR: {out['pdr']}")
        log(f"latency logical replication: {out['lr']}")
        return out

    # -- (c) capture overhead ------------------------------------------------------------
    def capture_overhead(self, seconds, runs, bulk_rows):
        src = Source.create("postgresql", self.pga, "cap")
        src.execute(DDL["postgresql"].replace("CREATE TABLE t", "CREATE TABLE b"),
                    "CREATE SEQUENCE cap_seq START 1000000",
                    "INSERT INTO t SELECT g, g % 1000, 'name-' || g, g * 0.5, g * 0.01, now(), g % 2 = 0 "
                    "FROM generate_series(1, 100000) g")
        db = src.model("cap")
        from django.test import override_settings

        from django_pdr.models import SourceTable

        for table in ("t", "b"):
            st = SourceTable(database=db, table=table)
            st.full_clean()
            st.save()
            st.install()
        capture_t = SourceTable.objects.get(database=db, table="t")

        def notify(on):  # reinstall t's capture with or without NOTIFY (PDR["NOTIFY"])
            with override_settings(PDR={"NOTIFY": on}):
                capture_t.install()
        pg_admin(self.pga, "VACUUM ANALYZE", db="cap")
        scripts = {
            "insert": "\\set r random(1, 1000000)\n"
                      "INSERT INTO t (id, n, name, score, amount, created, flag) VALUES "
                      "(nextval('cap_seq'), :r, 'pgbench-row-name', 1.5, 12.34, now(), true);\n",
            "update": "\\set id random(1, 100000)\nUPDATE t SET n = n + 1 WHERE id = :id;\n",
        }
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGAPPNAME="pdr-bench-writer")
        live = self.reflection(db, "t", dest_pg(self.pgb, "cap_dst").model("cap-dst"), "cap-live")
        self.worker_pass(live)
        out = {}
        for name, text in scripts.items():
            path = os.path.join(self.workdir, f"{name}.sql")
            with open(path, "w") as f:
                f.write(text)
            tps = {"off": [], "on": [], "asleep": [], "quiet": [], "worker": [], "lr": []}
            notified = []
            for _ in range(runs):
                # on: the default capture, no worker asleep (none, or a busy one): no NOTIFY;
                # asleep: a worker sleeps through the whole run, so every transaction
                # notifies (a real worker wakes at the first and disarms); quiet: NOTIFY off;
                # worker: the default capture while `pdr-reflect -i 1` replicates the table
                # live (its CPU competes with the writers': read its notification count);
                # lr: no triggers, a native logical replication subscription live instead
                for mode in ("off", "on", "asleep", "quiet", "worker", "lr"):
                    if mode in ("on", "quiet", "worker"):
                        notify(mode != "quiet")
                    pg_admin(self.pga, f"ALTER TABLE t {'DISABLE' if mode in ('off', 'lr') else 'ENABLE'} "
                                       f"TRIGGER USER", db="cap")
                    sleeper = self.sleeping_worker() if mode == "asleep" else None
                    if mode == "lr":
                        self.subscribe_capture_table()
                    if mode == "worker":
                        from django_pdr.connections import dispose_all

                        self.worker_pass(live)  # what the other modes wrote
                        dispose_all()
                        proc = self.start_worker(live, 1, "capture")
                        time.sleep(3)
                        heard = self._notification_counter("cap", self._is_pgbench())
                    bench = subprocess.run([os.path.join(PGBIN, "pgbench"), "-n", "-c", "2", "-j", "2", "-T",
                                            str(seconds), "-f", path, "-h", HOST, "-p", str(self.pga.port),
                                            "-U", USER, "cap"], env=env, capture_output=True, text=True)
                    if sleeper is not None:
                        sleeper.close()
                    m = re.search(r"tps = ([\d.]+) \(without initial", bench.stdout)
                    if not m:
                        raise SystemExit(f"pgbench failed: {bench.stdout}\n{bench.stderr}")
                    tps[mode].append(float(m.group(1)))
                    if mode == "lr":
                        pg_admin(self.pgb, "DROP SUBSCRIPTION cap_sub", db="cap_lr")
                    if mode == "worker":
                        writers, others = heard()
                        self.stop_worker(proc)
                        done = int(re.search(r"number of transactions actually processed: (\d+)",
                                             bench.stdout).group(1))
                        notified.append((writers, done, others))
            pg_admin(self.pga, "ALTER TABLE t ENABLE TRIGGER USER", db="cap")
            out[name] = tps
            out[f"{name}_notified"] = notified
            log(f"capture {name}: TPS without triggers {tps['off']}, with {tps['on']}, "
                f"with a worker asleep {tps['asleep']}, with triggers without NOTIFY {tps['quiet']}, "
                f"with a worker replicating {tps['worker']} (notified/transactions/by the worker {notified})")
        # bulk INSERT ... SELECT (durable commit)
        bulk = {"off": [], "on": []}
        conn = pg_connect(self.pga, "cap", autocommit=True)
        cur = conn.cursor()
        from django_pdr.models import SourceTable as ST

        event_b = ST.objects.get(database=db, table="b").event_table
        for _ in range(runs):
            for mode in ("off", "on"):
                cur.execute(f'TRUNCATE b, "{event_b}"')
                cur.execute(f"ALTER TABLE b {'DISABLE' if mode == 'off' else 'ENABLE'} TRIGGER USER")
                cur.execute("CHECKPOINT")
                t0 = time.perf_counter()
                cur.execute(f"INSERT INTO b SELECT g, g % 1000, 'name-' || g, g * 0.5, g * 0.01, now(), g % 2 = 0 "
                            f"FROM generate_series(1, {bulk_rows}) g")
                bulk[mode].append(time.perf_counter() - t0)
        cur.execute("ALTER TABLE b ENABLE TRIGGER USER")
        conn.close()
        out["bulk"] = bulk
        log(f"capture bulk {bulk_rows:,} rows: seconds without {bulk['off']}, with {bulk['on']}")
        return out

    def subscribe_capture_table(self):
        """A logical replication subscription of cap's table t on server B, streaming (the
        first one copies the table; later ones start from now: the rows the UPDATE
        script touches are there)."""
        first = not getattr(self, "_cap_lr_ready", False)
        if first:
            pg_admin(self.pgb, 'CREATE DATABASE "cap_lr"')
            Source("postgresql", self.pgb, "cap_lr").execute(DDL["postgresql"])
            pg_admin(self.pga, "CREATE PUBLICATION cap_pub FOR TABLE t", db="cap")
            self._cap_lr_ready = True
        pg_admin(self.pgb, f"CREATE SUBSCRIPTION cap_sub CONNECTION 'host={HOST} port={self.pga.port} user={USER} "
                           f"password={PASSWORD} dbname=cap' PUBLICATION cap_pub "
                           f"WITH (copy_data = {'true' if first else 'false'})", db="cap_lr")
        deadline = time.time() + 120
        while pg_scalar(self.pgb, "cap_lr", "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'") \
                and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the apply worker streams

    def _is_pgbench(self):
        """is_writer for _notification_counter: the backend is one of pgbench's clients."""
        conn = pg_connect(self.pga, "cap", autocommit=True)
        known = {}

        def is_writer(pid):
            if pid not in known:
                with conn.cursor() as cur:
                    cur.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,))
                    row = cur.fetchone()
                known[pid] = row is not None and row[0] == "pdr-bench-writer"
            return known[pid]
        return is_writer

    def sleeping_worker(self):
        """A connection that listens and holds the sleep lock, as an idle worker's does."""
        from django_pdr.dialects.postgresql import NOTIFY_CHANNEL, SLEEP_LOCK_CLASS

        conn = pg_connect(self.pga, "cap", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {NOTIFY_CHANNEL}")
            cur.execute("SELECT pg_advisory_lock(%s, 0)", (SLEEP_LOCK_CLASS,))
        return conn

    # -- (e) initial load ------------------------------------------------------------------
    def initial_loads(self, rows, runs):
        """``runs`` loads by django-pdr and as many native synchronisations of the same
        table, alternating (one of each in turn: the machine's drift hits both alike)."""
        src = Source.create("postgresql", self.pga, "load_src")
        src.execute("INSERT INTO t SELECT g, g % 1000, 'name-' || md5(g::text), g * 0.5, g * 0.01, "
                    f"now(), g % 2 = 0 FROM generate_series(1, {rows}) g")
        pg_admin(self.pga, "VACUUM ANALYZE", db="load_src")
        src.execute("CREATE PUBLICATION load_pub FOR TABLE t")
        src_db = src.model("load-src")
        ours, native = [], []
        for i in range(runs):
            ours.append(self.initial_load(src, src_db, i))
            native.append(self.native_initial_load(src, rows, i))
        return ours, native

    def initial_load(self, src, src_db, i):
        dst = dest_pg(self.pgb, f"load_dst_{i}")
        refl = self.reflection(src_db, "t", dst.model(f"load-dst-{i}"), "load")
        rep = self.timed_worker(refl)
        ok = dst.summary() == src.summary()
        rep.update(ok=ok, rate=rep["loaded"] / rep["seconds"])
        log(f"initial load run {i + 1}: {rep['loaded']:,} rows in {rep['seconds']:.1f} s -> "
            f"{rep['rate']:,.0f} rows/s; {'matches' if ok else 'DIFFERS'}")
        return rep

    def native_initial_load(self, src, rows, i):
        """PostgreSQL's own initial table synchronisation of the same table (a subscription
        with copy_data = true), timed from CREATE SUBSCRIPTION until the table is
        synchronised (pg_subscription_rel state 's' or 'r': its copy committed)."""
        name = f"load_lr_{i}"
        dst = dest_pg(self.pgb, name)
        dst.execute(DDL["postgresql"])
        watch = pg_connect(self.pgb, name, autocommit=True)
        cur = watch.cursor()
        t0 = time.monotonic()
        cur.execute(f"CREATE SUBSCRIPTION {name} CONNECTION 'host={HOST} port={self.pga.port} user={USER} "
                    f"password={PASSWORD} dbname=load_src' PUBLICATION load_pub "
                    f"WITH (copy_data = true, slot_name = '{name}')")
        wait_for(cur, "SELECT count(*), count(*) FILTER (WHERE srsubstate IN ('s', 'r')) FROM pg_subscription_rel",
                 lambda row: row[0] and row[1] == row[0], 600, "native initial synchronisation did not finish")
        seconds = time.monotonic() - t0
        cur.execute(f"DROP SUBSCRIPTION {name}")
        watch.close()
        ok = dst.summary() == src.summary()
        log(f"native initial synchronisation run {i + 1}: {rows:,} rows in {seconds:.1f} s -> "
            f"{rows / seconds:,.0f} rows/s; {'matches' if ok else 'DIFFERS'}")
        return {"seconds": seconds, "rate": rows / seconds, "ok": ok}


# --------------------------------------------------------------------------- report
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _pooled(windows):
    """One latency result of several windows (``_latency_run``): percentiles of all their
    commits pooled, rates averaged, each window's p50 and p99 kept."""
    lat = sorted(x for w in windows for x in w["lat"])

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    return {"rate": sum(w["rate"] for w in windows) / len(windows), "p50": pct(50), "p95": pct(95),
            "p99": pct(99), "max": lat[-1] if lat else 0, "samples": len(lat),
            "missing": sum(w["missing"] for w in windows), "commits": sum(w["commits"] for w in windows),
            "writers": windows[0]["writers"], "windows": [(w["p50"], w["p99"]) for w in windows]}


def fmt_runs(values, unit_fmt="{:,.0f}"):
    return " / ".join(unit_fmt.format(v) for v in values)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GB RAM, {platform.platform()}, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k-event backlogs, shorter runs (~3-4 min)")
    parser.add_argument("--events", type=int, help="backlog size for (a) and (d) (default 1,000,000; quick 100,000)")
    parser.add_argument("--repeat", type=int, help="catch-up runs for PG->PG and logical replication (default 3 "
                                                   "when --events <= 200,000, else 1; LR always >= 3)")
    parser.add_argument("--repeat-others", type=int, default=1, help="catch-up runs for the non-PG->PG pairs")
    parser.add_argument("--mem5m", action="store_true", help="also measure worker RSS on a 5M-event backlog")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--pairs", default="pg-pg,pg-mariadb,mariadb-pg,sqlite-pg",
                        help="catch-up pairs for (a): pg-pg, pg-mariadb, mariadb-pg, sqlite-pg, and opt-in "
                             "fb-pg, pg-fb (Firebird; starts a Firebird server)")
    parser.add_argument("--fb-events", type=int, default=100_000,
                        help="backlog size for the Firebird pairs (default 100,000: they catch up at a few "
                             "thousand events/s)")
    parser.add_argument("--capture-runs", type=int, default=7, help="(c): rounds of off/on/asleep/quiet runs")
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--latency-rate", type=float, default=1000)
    parser.add_argument("--latency-writers", type=int,
                        help="(b): writer connections sharing --latency-rate (default: one per 1,000 commits/s)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="pdr-reflect -i for the latency test (default 1: the worker's default settings)")
    parser.add_argument("--py-spy", metavar="FILE", help="(b): record the worker's stacks into FILE (py-spy raw format; diagnosis, py-spy must be installed)")
    parser.add_argument("--load-rows", type=int)
    parser.add_argument("--profile", type=int, metavar="EVENTS",
                        help="only profile a catch-up of EVENTS events (cProfile, per-statement times) "
                             "of the first of --pairs (default PG->PG) and print hot spots")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--library", choices=["worktree", "head"], default="worktree",
                        help="which django_pdr to measure: a copy of the working tree (default) or git HEAD")
    args = parser.parse_args()
    events = args.events or (100_000 if args.quick else 1_000_000)
    # catch-up of a 1M backlog is the slow measure (minutes per run while the apply path is slow):
    # one run per pair by default at 1M, three at <= 200k
    repeat = args.repeat or (3 if events <= 200_000 else 1)
    lat_seconds = args.latency_seconds or (8 if args.quick else 20)
    # the issue's table size (1M rows; 200,000 until the fourth round of issue 20)
    load_rows = args.load_rows or (50_000 if args.quick else 1_000_000)
    cap_seconds, cap_runs = (3, 3) if args.quick else (5, args.capture_runs)
    only = set(args.only.split(","))

    bench = Bench(args)
    started = time.time()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    res = {}
    try:
        asked = args.pairs.split(",")[:1] if args.profile else args.pairs.split(",")
        unknown = [p for p in asked if p not in PAIRS]
        if unknown:
            raise SystemExit(f"unknown pair(s) {unknown}: choose among {', '.join(PAIRS)}")
        need_my = ("a" in only or args.profile) and any("mariadb" in p for p in asked)
        need_fb = ("a" in only or args.profile) and any("fb" in p.split("-") for p in asked)
        bench.snapshot(args.library)
        bench.start_servers(mariadb=need_my, firebird=need_fb)
        bench.setup_django()
        if args.profile:
            return profile(bench, args.profile, asked[0])
        pairs = PAIRS
        if "a" in only or "d" in only:
            res["lr"] = bench.logical_replication(events, max(3, repeat), seed=7) if "a" in only else None
            res["pairs"] = {}
            for key in args.pairs.split(","):
                label, s, d = pairs[key]
                if key != "pg-pg" and "a" not in only:
                    continue
                n = repeat if key == "pg-pg" else args.repeat_others
                size = args.fb_events if "firebird" in (s, d) else events
                res["pairs"][label] = bench.catchup_pair(label, s, d, size, n, seed=7)
        if args.mem5m and ("d" in only):
            res["mem5m"] = bench.catchup_pair("PG→PG 5M", "postgresql", "postgresql", 5_000_000, 1, seed=11)
            if "a" in only:  # the control: does native replication slow down as much at 5M?
                res["lr5m"] = bench.logical_replication(5_000_000, 1, seed=11, tag="lr5m")
        if "e" in only:
            res["load"], res["load_lr"] = bench.initial_loads(load_rows, 5)
        if "b" in only:
            writers = args.latency_writers or max(1, math.ceil(args.latency_rate / 1000))
            res["latency"] = bench.latency(lat_seconds, args.latency_rate, args.interval, writers)
        if "c" in only:
            res["capture"] = bench.capture_overhead(cap_seconds, cap_runs, 200_000)
    finally:
        bench.stop_servers()
    total = time.time() - started
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print_table(res, events, args, total, lat_seconds, load_rows, cap_seconds, bench.library)
    bad = [label for label, runs in (res.get("pairs") or {}).items() if not all(r["ok"] for r in runs)]
    bad += ["logical replication"] if res.get("lr") and not all(r["ok"] for r in res["lr"]) else []
    bad += ["logical replication 5M"] if res.get("lr5m") and not all(r["ok"] for r in res["lr5m"]) else []
    bad += ["initial load"] if res.get("load") and not all(r["ok"] for r in res["load"]) else []
    bad += ["native initial load"] if res.get("load_lr") and not all(r["ok"] for r in res["load_lr"]) else []
    if bad:
        print(f"\nFAILED: the destination differs from the source after: {', '.join(bad)} "
              "(see the log above)", file=sys.stderr)
        sys.exit(1)


PAIRS = {"pg-pg": ("PG→PG", "postgresql", "postgresql"),
         "pg-mariadb": ("PG→MariaDB", "postgresql", "mysql"),
         "mariadb-pg": ("MariaDB→PG", "mysql", "postgresql"),
         "sqlite-pg": ("SQLite→PG", "sqlite", "postgresql"),
         "fb-pg": ("Firebird→PG", "firebird", "postgresql"),
         "pg-fb": ("PG→Firebird", "postgresql", "firebird")}


def print_table(res, events, args, total, lat_seconds, load_rows, cap_seconds, library):
    cmd = "python bench/run.py " + " ".join(sys.argv[1:])
    print()
    print(f"django-pdr benchmark — {machine()}")
    print(f"library: {library}")
    print(f"command: {cmd.strip()}   (total {total / 60:.1f} min; 1-min load average during the run: "
          f"median {med(LOADAVG):.1f}, max {max(LOADAVG or [0]):.1f} on {os.cpu_count()} cores)")
    print("servers: PostgreSQL 15 A (sources/publisher) + B (destinations/subscriber), fsync=on, "
          "synchronous_commit=on, wal_level=logical; MariaDB 10.11 innodb_flush_log_at_trx_commit=2"
          + ("; Firebird 3.0 ServerMode Super, DefaultDbCachePages 2048, forced writes on"
             if any("Firebird" in k for k in res.get("pairs") or {}) else ""))
    print()
    print("| measure | median | runs | target | vs target / baseline |")
    print("|---|---|---|---|---|")
    lr_rate = None
    if res.get("lr"):
        lr_rate = med([r["rate"] for r in res["lr"]])
        ok = all(r["ok"] for r in res["lr"])
        print(f"| (a) native logical replication PG→PG, {events:,}-event backlog | {lr_rate:,.0f} events/s | "
              f"{fmt_runs([r['rate'] for r in res['lr']])}{'' if ok else ' (MISMATCH)'} | baseline | 1.00× |")
    for label, runs in (res.get("pairs") or {}).items():
        rate = med([r["rate"] for r in runs])
        incl = med([r["rate_incl_purge"] for r in runs])
        ok = all(r["ok"] for r in runs)
        size = runs[0].get("backlog", events) - 1  # the backlog less its sentinel row
        if label == "PG→PG":
            target = "≥ 1.0× native"
            verdict = f"{rate / lr_rate:.2f}× native" if lr_rate else ""
        else:
            target = f"≥ {PAIR_RATE:,} events/s"
            verdict = (("rows compared one by one; " if "Firebird" in label else "")
                       + f"{rate / PAIR_RATE:.2f}× target" + (f"; {rate / lr_rate:.2f}× native" if lr_rate else ""))
        print(f"| (a) django-pdr {label} catch-up, {size:,}-event backlog | {rate:,.0f} events/s "
              f"({incl:,.0f} incl. purge) | {fmt_runs([r['rate'] for r in runs])}{'' if ok else ' (MISMATCH)'} | "
              f"{target} | {verdict} |")
    lat = res.get("latency")
    if lat:
        p, l = lat["pdr"], lat["lr"]
        notified = ""
        if "notified" in p:
            notified = (f"; {p['notified']:,} commits notified ({p['notified'] / max(1, p['commits']):.1%}), "
                        f"the worker {p['notified_by_worker']:,} times")
        def windows(r):
            return " / ".join(f"{a:.1f}·{b:.1f}" for a, b in r.get("windows", ()))

        print(f"| (b) latency commit→visible PG→PG, django-pdr (`pdr-reflect -i {args.interval}`; "
              f"{p['rate']:,.0f} tx/s from {p.get('writers', 1)} connection(s), {lat_seconds:.0f} s in "
              f"{len(p.get('windows', ())) or 1} windows alternating with native) | p50 {p['p50']:.1f} ms, "
              f"p95 {p['p95']:.1f} ms, p99 {p['p99']:.1f} ms | windows p50·p99 {windows(p)}; "
              f"{p['samples']:,} commits, {p['missing']} unseen; worker CPU "
              f"{p.get('worker_cpu', float('nan')) * 100:.0f}% of a core{notified} | p50 ≤ 2× native, p99 ≤ 4× native | "
              f"p50 {p['p50'] / max(l['p50'], 1e-9):.1f}× native, p99 {p['p99'] / max(l['p99'], 1e-9):.1f}× native |")
        print(f"| (b) latency commit→visible, native logical replication ({l['rate']:,.0f} tx/s) | "
              f"p50 {l['p50']:.1f} ms, p95 {l['p95']:.1f} ms, p99 {l['p99']:.1f} ms | windows p50·p99 {windows(l)}; "
              f"{l['samples']:,} commits | "
              f"baseline | (5 ms poller included in both) |")
    cap = res.get("capture")
    if cap:
        for name in ("insert", "update"):
            off, on = med(cap[name]["off"]), med(cap[name]["on"])
            paired = med([b / a for a, b in zip(cap[name]["off"], cap[name]["on"])])
            print(f"| (c) pgbench one-row {name.upper()} tx, 2 clients, durable, {cap_seconds} s runs | "
                  f"{off:,.0f} TPS without → {on:,.0f} with triggers (default capture, no worker asleep) | "
                  f"off {fmt_runs(cap[name]['off'])}; "
                  f"on {fmt_runs(cap[name]['on'])} | ≤ {CAPTURE_LOSS:.0%} TPS loss | "
                  f"{(1 - paired) * 100:+.1f}% loss "
                  f"(median of paired runs) |")
            for mode, label in (("asleep", "a worker asleep throughout (every transaction notifies)"),
                                ("quiet", "triggers with PDR[\"NOTIFY\"] = False"),
                                ("worker", "a worker (`pdr-reflect -i 1`) replicating live, its CPU competing"),
                                ("lr", "no triggers, native logical replication to server B live (for comparison)")):
                if not cap[name].get(mode):
                    continue
                value = med(cap[name][mode])
                paired = med([b / a for a, b in zip(cap[name]["off"], cap[name][mode])])
                extra = ""
                if mode == "worker" and cap.get(f"{name}_notified"):
                    counts = cap[f"{name}_notified"]
                    extra = (f"; transactions that notified: "
                             f"{' / '.join(f'{w / max(1, d):.1%}' for w, d, _ in counts)}, "
                             f"worker's own notices {' / '.join(str(o) for _, _, o in counts)}")
                print(f"| (c) same, {label} | {off:,.0f} TPS without → "
                      f"{value:,.0f} with triggers | {mode} {fmt_runs(cap[name][mode])}{extra} | "
                      f"≤ {CAPTURE_LOSS:.0%} TPS loss | "
                      f"{(1 - paired) * 100:+.1f}% loss (median of paired runs) |")
        off, on = med(cap["bulk"]["off"]), med(cap["bulk"]["on"])
        paired = med([b / a for a, b in zip(cap["bulk"]["off"], cap["bulk"]["on"])])
        print(f"| (c) INSERT … SELECT 200,000 rows, durable | {off:.2f} s without → {on:.2f} s with triggers | "
              f"off {fmt_runs(cap['bulk']['off'], '{:.2f}')}; on {fmt_runs(cap['bulk']['on'], '{:.2f}')} | "
              f"≤ {CAPTURE_BULK}× | {paired:.2f}× (median of paired runs) |")
    pg = (res.get("pairs") or {}).get("PG→PG")
    if pg:
        peak = max(r["rss_peak_mb"] for r in pg)
        start = med([r["rss_start_mb"] for r in pg])
        print(f"| (d) worker peak RSS, PG→PG catch-up of {events:,} events | {peak:.0f} MB "
              f"(after Django start-up {start:.0f} MB) | {fmt_runs([r['rss_peak_mb'] for r in pg])} | "
              f"≤ {RSS_MB} MB, "
              f"flat to 5M | {'within' if peak <= RSS_MB else 'over'} |")
    others = {k: v for k, v in (res.get("pairs") or {}).items() if k != "PG→PG"}
    if others:
        def at(runs):
            size = runs[0].get("backlog", events) - 1
            return f" (at {size:,})" if size != events else ""
        print(f"| (d) worker peak RSS, other pairs, {events:,} events | "
              + ", ".join(f"{k} {max(r['rss_peak_mb'] for r in v):.0f} MB{at(v)}" for k, v in others.items())
              + f" | | ≤ {RSS_MB} MB | "
              + ("within" if all(r["rss_peak_mb"] <= RSS_MB for v in others.values() for r in v) else "over on some")
              + " |")
    if res.get("mem5m"):
        r = res["mem5m"][0]
        print(f"| (d) worker peak RSS, PG→PG catch-up of {r['events']:,} events | {r['rss_peak_mb']:.0f} MB | "
              f"{r['rate']:,.0f} events/s | ≤ {RSS_MB} MB, flat | "
              f"{'within' if r['rss_peak_mb'] <= RSS_MB else 'over'} |")
        ours = med([x["rate"] for x in (res.get("pairs") or {}).get("PG→PG") or []] or [0])
        if ours:
            print(f"| (a) PG→PG catch-up at 5M against 1M | {r['rate']:,.0f} events/s | 1 run "
                  f"| ≥ 0.95× the 1M rate | {r['rate'] / ours:.2f}× |")
        if res.get("lr5m") and lr_rate and ours:
            native = res["lr5m"][0]["rate"]
            print(f"| (a) native logical replication at 5M against 1M (control) | {native:,.0f} events/s "
                  f"| 1 run"
                  f"{'' if res['lr5m'][0]['ok'] else ', subscriber DIFFERS'} | | {native / lr_rate:.2f}× "
                  f"(django-pdr: {r['rate'] / ours:.2f}×) |")
    if res.get("load"):
        rate = med([r["rate"] for r in res["load"]])
        ok = all(r["ok"] for r in res["load"])
        print(f"| (e) initial load PG→PG, {load_rows:,} rows | {rate:,.0f} rows/s | "
              f"{fmt_runs([r['rate'] for r in res['load']])}{'' if ok else ' (MISMATCH)'} | ≥ 1.0× native | "
              f"see the next row |")
    if res.get("load_lr"):
        native = med([r["rate"] for r in res["load_lr"]])
        ok = all(r["ok"] for r in res["load_lr"])
        ours = med([r["rate"] for r in res.get("load") or []])
        print(f"| (e) native initial table synchronisation (subscription, copy_data = true), {load_rows:,} rows | "
              f"{native:,.0f} rows/s | {fmt_runs([r['rate'] for r in res['load_lr']])}{'' if ok else ' (MISMATCH)'} | "
              f"baseline | django-pdr {ours / native:.2f}× native |")
    for label, runs in (res.get("pairs") or {}).items():
        if label != "PG→PG" and "Firebird" not in label:
            continue
        print()
        seconds = med([r["seconds"] for r in runs])
        print(f"Where the {label} catch-up time goes (median run, seconds of {seconds:.1f}; nested phases "
              "overlap; reading runs in its own thread, beside the destination transaction):")
        phases = {}
        for r in runs:
            for k, v in r["phases"].items():
                phases.setdefault(k, []).append(v)
        for k, v in sorted(phases.items(), key=lambda kv: -med(kv[1])):
            print(f"  {med(v):8.2f} s  {k}")
        if "Firebird" in label:
            print(f"  (cProfile and per-statement times: python bench/run.py --profile 20000 --pairs "
                  f"{'fb-pg' if label.startswith('Firebird') else 'pg-fb'})")


def profile(bench, events, pair="pg-pg"):
    import pstats

    _, src_kind, dst_kind = PAIRS[pair]
    firebird = "firebird" in (src_kind, dst_kind)
    src = Source.create(src_kind, bench.source_server(src_kind), "prof_src", bench.workdir)
    dst = bench.destination(dst_kind, "prof_dst")
    refl = bench.reflection(src.model("prof-src"), "t", dst.model("prof-dst"), "profile")
    bench.worker_pass(refl)
    n, secs = generate_backlog(src, events, seed=5, micro_step=100 if firebird else 1)
    log(f"profile: backlog of {n:,} events written in {secs:.1f} s")
    out = os.path.join(ROOT, "bench", f"apply-profile-{pair}.pstats")
    rep = bench.timed_worker(refl, profile=out)
    differ = row_differences(src.rows(), dst.rows())[0] if firebird else None
    bench.stop_servers()
    print(f"\n{pair} catch-up of {rep['events']:,} events under cProfile: {rep['seconds']:.1f} s "
          f"({rep['events'] / rep['seconds']:,.0f} events/s with profiler overhead); stats in {out}"
          + (f"; {differ} rows differ" if differ is not None else ""))
    print("\nPhase timers (s):")
    for k, v in sorted(rep["phases"].items(), key=lambda kv: -kv[1]):
        print(f"  {v:8.2f}  {k}  ({rep['calls'][k]} calls)")
    print("\nStatements by time (every engine and thread, statement by statement):")
    for text, count, seconds in rep.get("statements", []):
        print(f"  {seconds:7.2f} s {count:6d}x  {text}")
    print("\ncProfile of the committing thread (the reading thread is in the statements above):")
    stats = pstats.Stats(out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    if differ:
        print(f"\nFAILED: {differ} rows differ between source and destination", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
