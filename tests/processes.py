"""Real worker processes for crash and multi-worker tests (also used by bench/crash.py)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import sqlalchemy as sa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def django_env(django_db_path: str, **extra) -> dict:
    env = dict(os.environ)
    env.update({"PDR_TEST_SQLITE_PATH": django_db_path, "DJANGO_SETTINGS_MODULE": "tests.settings",
                "PYTHONPATH": ROOT, "PDR_TEST_DJANGO_DB": "sqlite"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(env, *args, log=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "django", "pdr-reflect", *args], env=env, cwd=ROOT,
                                            stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL,
                            start_new_session=True)


def run_worker_once(env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "django", "pdr-reflect", "-v", "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Writer(threading.Thread):
    """Random inserts, updates, deletes and key changes on table ``t`` (id int key, v text, n int).

    ``bulk``: the share of transactions that also run one statement changing over a
    thousand rows (PostgreSQL capture writes key arrays for those).

    Options for server-crash runs (bench/server_crash.py); the defaults keep the plain behaviour:

    ``own_keys``: updates, deletes and key changes pick keys from ``first_id`` up only (several
    writers on one table, each with its own key range).  ``hold``: (min, max) seconds each
    transaction stays open after its changes before it ends (a long transaction while others
    commit).  ``rollback``: the share of transactions rolled back instead of committed.
    ``reconnect``: an error (server crash, deadlock, lock timeout) does not stop the writer:
    the transaction is lost (``interrupted`` counts them), it reconnects and goes on."""

    def __init__(self, engine, seed=1, first_id=1, batch=20, pause=0.0, max_ops=None, bulk=0.0,
                 own_keys=False, hold=None, rollback=0.0, reconnect=False, table="t"):
        super().__init__(daemon=True)
        self.engine, self.random = engine, random.Random(seed)
        self.next_id, self.batch, self.pause, self.max_ops = first_id, batch, pause, max_ops
        self.bulk = bulk
        self.first_id, self.own_keys, self.hold, self.rollback = first_id, own_keys, hold, rollback
        self.reconnect, self.table = reconnect, table
        self.changes = 0  # rows changed (a bulk statement counts every row)
        self.bulk_statements = 0
        self.stop_event = threading.Event()
        self.ops = 0
        self.error = None
        self.committed = 0  # transactions whose commit returned
        self.committed_changes = 0  # row changes of those
        self.rolled_back = 0  # transactions rolled back on purpose
        self.interrupted = 0  # transactions lost to an error (reconnect=True)
        self.began = 0  # transactions begun
        self.errors = []  # the last few of those errors (reconnect=True)

    def _pick_key(self):
        return self.random.randrange(self.first_id if self.own_keys else 1, self.next_id)

    def _warming(self):
        return (self.next_id - self.first_id if self.own_keys else self.next_id) < 50

    def _go_on(self):
        return not self.stop_event.is_set() and (self.max_ops is None or self.ops < self.max_ops)

    def run(self):
        t = sa.table(self.table, sa.column("id"), sa.column("v"), sa.column("n"))
        while self._go_on():
            began = self.began
            try:
                with self.engine.connect() as conn:
                    while self._go_on():
                        self._transaction(conn, t)
                        if self.pause:
                            time.sleep(self.pause)
            except Exception as exc:  # surfaced by the test
                if not self.reconnect:
                    self.error = exc
                    return
                if self.began > began:  # else the server refused the connection: nothing lost
                    self.interrupted += 1
                message = (str(exc) or "?").splitlines()[0][:200]
                self.errors = (self.errors + [f"{type(exc).__name__}: {message}"])[-5:]
                self.stop_event.wait(0.2)

    def _transaction(self, conn, t):
        changes = self.changes
        self.began += 1
        with conn.begin() as transaction:
            for _ in range(self.batch):
                roll = self.random.random()
                if roll < 0.6 or self._warming():
                    conn.execute(t.insert().values(id=self.next_id, v=f"v{self.next_id}", n=0))
                    self.next_id += 1
                elif roll < 0.9:
                    target = self._pick_key()
                    conn.execute(t.update().where(t.c.id == target)
                                 .values(n=t.c.n + 1, v=f"u{self.ops}"))
                elif roll < 0.97:
                    conn.execute(t.delete().where(t.c.id == self._pick_key()))
                else:  # move a row to a new key
                    conn.execute(t.update().where(t.c.id == self._pick_key())
                                 .values(id=self.next_id))
                    self.next_id += 1
                self.ops += 1
                self.changes += 1
            if self.bulk and self.random.random() < self.bulk:
                self._bulk_statement(conn, t)
            if self.hold:  # a long transaction: open while the other writers commit
                self.stop_event.wait(self.random.uniform(*self.hold))
            if self.rollback and self.random.random() < self.rollback:
                transaction.rollback()
                self.rolled_back += 1
                return
        self.committed += 1
        self.committed_changes += self.changes - changes

    def _bulk_statement(self, conn, t):
        roll, low = self.random.random(), self.random.randrange(1, max(2, self.next_id))
        if roll < 0.4 and conn.dialect.name.startswith("firebird"):
            # no multi-row VALUES in Firebird 3: one EXECUTE BLOCK (one request) inserts them
            first, self.next_id = self.next_id, self.next_id + 1500
            name = conn.dialect.identifier_preparer.format_table(t)
            conn.exec_driver_sql(f"EXECUTE BLOCK AS DECLARE i BIGINT; BEGIN i = {first}; "
                                 f"WHILE (i < {self.next_id}) DO BEGIN "
                                 f"INSERT INTO {name} (id, v, n) VALUES (:i, 'b' || :i, 0); i = i + 1; END END")
            result = type("Inserted", (), {"rowcount": 1500})()
        elif roll < 0.4:
            first, self.next_id = self.next_id, self.next_id + 1500
            result = conn.execute(t.insert().values([{"id": i, "v": f"b{i}", "n": 0}
                                                     for i in range(first, self.next_id)]))
        elif roll < 0.7:
            result = conn.execute(t.update().where(t.c.id.between(low, low + 2499))
                                  .values(n=t.c.n + 1, v=f"r{self.ops}"))
        elif roll < 0.85:
            result = conn.execute(t.delete().where(t.c.id.between(low, low + 1199)))
        else:  # move a range of rows to new keys
            result = conn.execute(t.update().where(t.c.id.between(low, low + 1099))
                                  .values(id=t.c.id + (self.next_id - low)))
            self.next_id += 1100
        self.ops += 1
        self.changes += max(result.rowcount, 0)
        self.bulk_statements += result.rowcount > 1000

    def stop(self):
        self.stop_event.set()
        self.join(timeout=60)


def catches(pid, signum) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux: SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
    return bool(caught >> (signum - 1) & 1)


def wait_started(proc, timeout=60):
    """Wait until ``pdr-reflect`` (``proc``) is past its start-up (Django set up, checks
    run): it then handles SIGTERM.  Start-up takes 0.5 s on a quiet machine, 2.5 s and
    more on a loaded one: a fixed wait would often end before any work began."""
    deadline = time.monotonic() + timeout
    while not catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None, f"pdr-reflect exited during start-up ({proc.returncode})"
        assert time.monotonic() < deadline, "pdr-reflect never finished its start-up"
        time.sleep(0.02)


def kill_cycle(env, kills: int, rng: random.Random, min_run=0.2, max_run=1.5, log=None, between=None) -> int:
    """Start the worker and SIGKILL it at random moments of its work (``min_run`` to
    ``max_run`` seconds after its start-up), ``kills`` times (``between(n)``: called after
    the n-th kill, before the next start)."""
    done = 0
    for _ in range(kills):
        proc = start_worker(env, "-i", "0.05", log=log)
        wait_started(proc)
        time.sleep(rng.uniform(min_run, max_run))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done += 1
        if between is not None:
            between(done)
    return done


def table_rows(engine, table="t", key="id"):
    with engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), autoload_with=conn)
        return [tuple(r) for r in conn.execute(sa.select(t.c.id, t.c.v, t.c.n).order_by(t.c[key]))]
