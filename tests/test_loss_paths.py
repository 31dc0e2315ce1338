"""Paths on which a change could vanish, go stale or be skipped silently: each is now
detected, handled or reported as an error (docs/reliability.md, "Loss paths").

Each test failed on the code before these fixes (git 3a8f5f6).  Data is written through
the engines' own SQL.
"""
import threading
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr import capture, worker
from django_pdr.models import DeadLetter, Reflection
from django_pdr.engine.checkpoint import StaleCheckpoint
from django_pdr.engine.runner import ReflectionRunner
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


def mirror(make_target, source_kind, dest_kind, table="t", create="CREATE TABLE t (id int PRIMARY KEY, v varchar(40))"):
    source, dest = make_target(source_kind), make_target(dest_kind)
    source.execute(create)
    st = watch(source.model(f"src-{source.name}"), table)
    reflection = Reflection.objects.create(source=st, destination=dest.model(f"dst-{dest.name}"),
                                           destination_table=table)
    return source, dest, st, reflection


def same(source, dest, table="t"):
    return rows(dest.engine, table, ["id"]) == rows(source.engine, table, ["id"])


# -- 1. capture removed and installed again; capture gone outside django-pdr ------------

@pytest.mark.parametrize("kinds", [("sqlite", "sqlite"), ("postgresql", "mysql"), ("mysql", "postgresql")])
def test_item1_reinstalled_capture_resyncs(make_target, kinds):
    source, dest, st, reflection = mirror(make_target, *kinds)
    source.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    worker.run_round()
    source.execute("UPDATE t SET v = 'b2' WHERE id = 2", "INSERT INTO t VALUES (4, 'd')")
    worker.run_round()
    assert same(source, dest)
    st.uninstall()
    source.execute("DELETE FROM t WHERE id = 1")  # uncaptured: the capture is off
    st.install()  # a new event table: its ids start at 1 again
    source.execute("INSERT INTO t VALUES (5, 'e')", "UPDATE t SET v = 'c2' WHERE id = 3",
                   "DELETE FROM t WHERE id = 4")
    result = worker.run_round()
    assert not result.failed
    assert same(source, dest)
    reflection.refresh_from_db()
    assert reflection.status == "running" and reflection.position["i"] == st.incarnation
    source.execute("INSERT INTO t VALUES (6, 'f')")
    worker.run_round()
    assert same(source, dest)


def test_item1_reinstalled_capture_can_stop_with_an_error(make_target, settings):
    settings.PDR = {"ON_CAPTURE_RESET": "error"}
    source, dest, st, reflection = mirror(make_target, "sqlite", "sqlite")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    st.uninstall()
    st.install()
    source.execute("INSERT INTO t VALUES (2, 'b')")
    with pytest.raises(CommandError, match="installed anew"):
        call_command("pdr-reflect", verbosity=0)
    reflection.refresh_from_db()
    assert reflection.status == "error" and "request a resync" in reflection.last_error
    Reflection.objects.filter(pk=reflection.pk).update(resync_requested=True)
    call_command("pdr-reflect", verbosity=0)
    assert same(source, dest)


@pytest.mark.parametrize("kind,sql", [
    ("postgresql", ["DROP TRIGGER {upd} ON t"]),
    ("postgresql", ["ALTER TABLE t DISABLE TRIGGER ALL"]),
    ("mysql", ["DROP TRIGGER {ins}"]),
    ("sqlite", ["DROP TRIGGER {del}"]),
])
def test_item1_capture_removed_outside_is_an_error(make_target, kind, sql):
    source, dest, st, reflection = mirror(make_target, kind, "sqlite")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    with source.engine.connect() as conn:
        names = capture.plan(conn, st).names
    source.execute(*[s.format(ins=names.insert_trigger, upd=names.update_trigger, **{"del": names.delete_trigger})
                     for s in sql])
    source.execute("INSERT INTO t VALUES (2, 'b')")
    with pytest.raises(CommandError, match="Capture missing on"):
        call_command("pdr-reflect", verbosity=0)
    reflection.refresh_from_db()
    assert reflection.status == "error" and "install the capture again" in reflection.last_error
    assert capture.status(st) == capture.PARTIAL
    # the worker never reinstalls it by itself: the error stays until someone does
    Reflection.objects.filter(pk=reflection.pk).update(next_attempt_at=None)
    assert worker.run_round().failed
    st.install()
    call_command("pdr-reflect", verbosity=0)  # new incarnation: the destination is reloaded
    assert same(source, dest)


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "sqlite"])
def test_item1_events_purged_under_a_pass_are_seen_by_the_event_read_itself(make_target, settings, monkeypatch,
                                                                            kind):
    """Events the reflection has not applied, purged while its pass runs (by hand, or by a
    worker that trusted a position restored from a backup): the event read carries the
    registry row in its own statement (one snapshot), sees the purged floor past its
    position, and the pass stops instead of skipping them."""
    import sqlalchemy as sa

    from django_pdr.engine import positions
    from django_pdr.engine.visibility import EventReader

    settings.PDR = {"ON_CAPTURE_RESET": "error"}
    source, dest, st, reflection = mirror(make_target, kind, "sqlite")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    source.execute(*[f"INSERT INTO t VALUES ({i}, 'b')" for i in range(2, 7)])
    with source.engine.connect() as conn:
        plan = capture.plan(conn, st)
        ids = [row[0] for row in conn.execute(sa.select(plan.event.c.pdr_id).order_by(plan.event.c.pdr_id))]
    real_read, seen = EventReader.read, []

    def purging_read(self, conn, *args, **kwargs):  # the first two new events go before the read
        if not seen:
            with source.engine.begin() as rogue:
                rogue.execute(sa.update(plan.registry).where(plan.registry.c.event_table == plan.event.name)
                              .values(purged_through=ids[1]))
                rogue.execute(sa.delete(plan.event).where(plan.event.c.pdr_id <= ids[1]))
        out = real_read(self, conn, *args, **kwargs)
        seen.append(self.confirmed)
        return out

    monkeypatch.setattr(EventReader, "read", purging_read)
    with pytest.raises(CommandError, match="purged"):
        call_command("pdr-reflect", verbosity=0)
    assert seen[0] is not None and seen[0][1] == ids[1]  # read with the events, in one statement
    assert sorted(r["id"] for r in rows(dest.engine, "t", ["id"])) == [1]  # nothing skipped over


# -- 3. MariaDB: a frozen INNODB_TRX view never closes a gap ---------------------------

def test_item3_stale_innodb_trx_never_closes_a_gap_early(make_target):
    source, dest, st, reflection = mirror(make_target, "mysql", "postgresql")
    source.execute("INSERT INTO t VALUES (1, 'a'), (5, 'five')")
    worker.run_round()
    stop = threading.Event()

    def monitor():  # a monitoring tool reading the view more often than every 0.1 s
        with source.engine.connect() as conn:
            while not stop.is_set():
                conn.exec_driver_sql("SELECT count(*) FROM information_schema.INNODB_TRX").all()
                conn.rollback()
                time.sleep(0.05)

    reader = threading.Thread(target=monitor, daemon=True)
    reader.start()
    try:
        time.sleep(0.3)  # the view's cache is now frozen
        slow = source.engine.connect()
        slow_tx = slow.begin()
        slow.exec_driver_sql("DELETE FROM t WHERE id = 5")  # takes an event id, stays open
        source.execute("INSERT INTO t VALUES (6, 'six')")
        for _ in range(4):
            worker.run_round()
            time.sleep(0.3)
        slow_tx.commit()
        slow.close()
        worker.run_round()
        assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 6]
        # the view stays frozen while the monitor reads it, but InnoDB's status report is
        # made when asked: the gap settles all the same (and events are purged)
        worker.run_round()
        reflection.refresh_from_db()
        assert reflection.position["g"] == []
    finally:
        stop.set()
        reader.join()


# -- 5. every destination write takes the checkpoint lock first --------------------------

def test_item5_repair_cannot_write_an_older_row_over_a_newer_one(make_target):
    from django_pdr import verify

    source, dest, st, reflection = mirror(make_target, "postgresql", "postgresql")
    source.execute("INSERT INTO t VALUES (1, 'v0')")
    worker.run_round()
    dest.execute("DELETE FROM t")  # a difference for the repair to fix
    source.execute("UPDATE t SET v = 'v1' WHERE id = 1")
    worker.run_round()
    dest.execute("DELETE FROM t")
    read, resume = threading.Event(), threading.Event()
    real = ReflectionRunner.keyed_rows

    def pausing(self, src, keys, window=None):
        out = real(self, src, keys, window)
        if threading.current_thread().name == "repair":
            read.set()  # the repair has read v1
            resume.wait(10)
        return out

    ReflectionRunner.keyed_rows = pausing
    try:
        repair = threading.Thread(target=lambda: verify.verify(reflection, repair=True), name="repair")
        repair.start()
        assert read.wait(10)
        source.execute("UPDATE t SET v = 'v2' WHERE id = 1")  # the application writes v2
        apply = threading.Thread(target=worker.run_round, name="worker")
        apply.start()
        apply.join(5)  # the worker applies v2 (or waits for the repair's lock; 5 s: room for a loaded machine)
        resume.set()
        repair.join(10)
        apply.join(30)
    finally:
        ReflectionRunner.keyed_rows = real
    assert rows(dest.engine, "t", ["id"]) == [{"id": 1, "v": "v2"}]


# -- 6. restored destinations; a real lock on SQLite destinations ------------------------

def test_item6_destination_restored_from_a_backup_resyncs(make_target):
    source, dest, st, reflection = mirror(make_target, "postgresql", "postgresql")
    source.execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 50) g")
    worker.run_round()
    dest.execute("CREATE TABLE backup_t AS SELECT * FROM t",
                 "CREATE TABLE backup_cp AS SELECT * FROM pdr_checkpoint")
    source.execute("UPDATE t SET v = 'b' WHERE id <= 10", "DELETE FROM t WHERE id > 45",
                   "INSERT INTO t VALUES (100, 'new')")
    worker.run_round()  # applied, then purged from the source
    assert same(source, dest)
    dest.execute("DELETE FROM t", "INSERT INTO t SELECT * FROM backup_t",
                 "DELETE FROM pdr_checkpoint", "INSERT INTO pdr_checkpoint SELECT * FROM backup_cp")
    source.execute("UPDATE t SET v = 'c' WHERE id = 20")
    result = worker.run_round()
    assert not result.failed
    assert same(source, dest)


def _race_two_workers(st, reflection, owner_cls, method):
    """Runner A applies a batch and holds its destination transaction open inside
    ``owner_cls.method``; runner B runs the same batch meanwhile.  Returns
    {"a": batch_once's result or StaleCheckpoint, "b": the same}."""
    from django_pdr.connections import connect

    runner_a, runner_b = ReflectionRunner(reflection), ReflectionRunner(reflection)
    applying, go_on, owner, outcome = threading.Event(), threading.Event(), {}, {}
    real = getattr(owner_cls, method)

    def pausing(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if owner.get(threading.current_thread().name) == "a":
            applying.set()  # A holds its transaction (and the checkpoint row) here
            go_on.wait(10)
        return out

    def run(name, runner):
        owner[threading.current_thread().name] = name
        try:
            with connect(st.database) as src, connect(reflection.destination) as dst:
                runner.prepare(src, dst)
                state, _ = runner._reconcile(runner.read_state(dst), runner._check_capture(src))
                outcome[name] = runner.batch_once(src, dst, state)
        except StaleCheckpoint as exc:
            outcome[name] = exc

    setattr(owner_cls, method, pausing)
    try:
        a = threading.Thread(target=run, args=("a", runner_a))
        a.start()
        assert applying.wait(10)
        b = threading.Thread(target=run, args=("b", runner_b))
        b.start()
        b.join(5)  # B must wait for A's lock (or, without one, pass its fence now; 5 s: time to
        # connect and read its batch on a loaded machine, else this would pass without a lock)
        assert "b" not in outcome, outcome
        go_on.set()
        a.join(30)
        b.join(30)
    finally:
        setattr(owner_cls, method, real)
    return outcome


def test_item6_two_workers_cannot_both_commit_from_one_sqlite_checkpoint(make_target):
    source, dest, st, reflection = mirror(make_target, "sqlite", "sqlite")
    worker.run_round()
    source.execute("INSERT INTO t VALUES (1, 'a')")
    outcome = _race_two_workers(st, reflection, ReflectionRunner, "_apply")
    assert not isinstance(outcome["a"], Exception)
    assert isinstance(outcome["b"], StaleCheckpoint), outcome


def test_item6_two_workers_cannot_both_commit_from_one_checkpoint_on_the_text_path(make_target, monkeypatch):
    """PostgreSQL → PostgreSQL text batches move the checkpoint in one UPDATE from the state
    they read (Checkpoint.advance) before their rows: the second worker waits for the first
    one's lock, finds the checkpoint moved, and abandons its batch."""
    from django_pdr.dialects.postgresql import PostgreSQLDialect

    source, dest, st, reflection = mirror(make_target, "postgresql", "postgresql")
    worker.run_round()
    source.execute("INSERT INTO t VALUES (1, 'a')")
    # a batch this small goes in one statement (the next test); here in a transaction.
    # A pauses in apply_marked: only a text batch gets there (applying.wait fails otherwise)
    monkeypatch.setattr(PostgreSQLDialect, "apply_marked_guarded", lambda *args, **kwargs: None)
    outcome = _race_two_workers(st, reflection, PostgreSQLDialect, "apply_marked")
    assert outcome["a"][1] == 1, outcome  # one event applied
    assert isinstance(outcome["b"], StaleCheckpoint), outcome
    assert same(source, dest)


def test_item6_a_batch_written_in_one_statement_writes_nothing_once_its_checkpoint_moved(make_target,
                                                                                        monkeypatch):
    """A small PostgreSQL → PostgreSQL text batch is written in one statement that moves the
    checkpoint first (PostgreSQLDialect.apply_marked_guarded): a worker whose batch was read
    from a checkpoint another worker has moved since writes nothing, not even its rows,
    and abandons the batch; the newer row the other worker wrote stays."""
    from django_pdr.connections import connect
    from django_pdr.dialects.postgresql import PostgreSQLDialect

    source, dest, st, reflection = mirror(make_target, "postgresql", "postgresql")
    worker.run_round()
    source.execute("INSERT INTO t VALUES (1, 'a')")
    outcomes, real = [], PostgreSQLDialect.apply_marked_guarded

    def spy(self, *args, **kwargs):
        outcomes.append(real(self, *args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(PostgreSQLDialect, "apply_marked_guarded", spy)
    runners = ReflectionRunner(reflection), ReflectionRunner(reflection)
    with connect(st.database) as src, connect(reflection.destination) as dst:
        batches = []
        for runner in runners:
            runner.prepare(src, dst)
            state, _ = runner._reconcile(runner.read_state(dst), runner._check_capture(src))
            batches.append((state, runner.read_batch(src, state)))
        (state_a, batch_a), (state_b, batch_b) = batches
        moved, _, _ = runners[0].commit_batch(dst, state_a, batch_a)
        source.execute("UPDATE t SET v = 'b' WHERE id = 1")
        runners[0].batch_once(src, dst, moved)  # A goes on: 'b' is written
        with pytest.raises(StaleCheckpoint):
            runners[1].commit_batch(dst, state_b, batch_b)  # B's batch, read when the row said 'a'
    assert outcomes == [(True, 1), (True, 1), (False, 0)], outcomes
    assert same(source, dest) and rows(dest.engine, "t", ["id"])[0]["v"] == "b"


# -- 7. changes the triggers never see --------------------------------------------------

@pytest.mark.parametrize("dest_kind", ["sqlite", "mysql"])
def test_item7_postgresql_truncate_empties_the_mirror(make_target, dest_kind):
    source, dest, st, reflection = mirror(make_target, "postgresql", dest_kind)
    source.execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 20) g")
    worker.run_round()
    source.execute("UPDATE t SET v = 'b' WHERE id = 3", "TRUNCATE t", "INSERT INTO t VALUES (3, 'after'), (30, 'x')")
    worker.run_round()
    assert same(source, dest)
    source.execute("TRUNCATE t")
    worker.run_round()
    assert rows(dest.engine, "t", ["id"]) == []


def test_item7_postgresql_truncate_in_fan_in_keeps_the_other_sources_rows(make_target):
    a, b, dest = make_target("postgresql"), make_target("postgresql"), make_target("sqlite")
    a.execute("CREATE TABLE people (id int PRIMARY KEY, name text)",
              "INSERT INTO people VALUES (1, 'Ann'), (2, 'Bob'), (3, 'Cy')")
    b.execute("CREATE TABLE scores (id int PRIMARY KEY, score int)", "INSERT INTO scores VALUES (1, 10), (2, 20)")
    dest.execute("CREATE TABLE merged (id int PRIMARY KEY, name text, score int)")
    dest_db = dest.model("dst")
    for target, table, column in ((a, "people", "name"), (b, "scores", "score")):
        st = watch(target.model(f"src-{table}"), table)
        Reflection.objects.create(source=st, destination=dest_db, destination_table="merged",
                                  mapping=f'{{"columns": {{"id": "id", "{column}": "{column}"}}}}')
    worker.run_round()
    assert len(rows(dest.engine, "merged", ["id"])) == 3
    a.execute("TRUNCATE people")
    worker.run_round()
    assert rows(dest.engine, "merged", ["id"]) == [{"id": 1, "name": None, "score": 10},
                                                    {"id": 2, "name": None, "score": 20}]


def test_item7_postgresql_replica_sessions_are_captured(make_target):
    source, dest, st, reflection = mirror(make_target, "postgresql", "sqlite")
    worker.run_round()
    # what logical-replication subscribers and some restore tools run with
    source.execute("SET session_replication_role = replica", "INSERT INTO t VALUES (1, 'from a subscriber')")
    worker.run_round()
    assert same(source, dest) and rows(dest.engine, "t", ["id"])


# -- 8. the exit code of a one-shot run --------------------------------------------------

def test_item8_one_shot_run_fails_while_a_reflection_is_in_error(make_target):
    source, dest, st, reflection = mirror(make_target, "sqlite", "sqlite")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    bad = reflection.destination
    good_path = bad.database
    bad.database = "/nonexistent/dir/x.sqlite3"
    bad.save()
    for _ in range(3):  # the second and third runs fall inside the back-off window
        with pytest.raises(CommandError, match="1 reflection\\(s\\) failed"):
            call_command("pdr-reflect", verbosity=0)
    reflection.refresh_from_db()
    assert reflection.status == "error" and reflection.next_attempt_at is not None
    bad.database = good_path
    bad.save()
    call_command("pdr-reflect", verbosity=0)  # tried at once, despite the back-off: up to date
    assert same(source, dest)


def test_item8_one_shot_run_fails_while_rows_are_dead_lettered(make_target):
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v >= 0))")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    source.execute("INSERT INTO t VALUES (1, 1), (2, -2)")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    assert DeadLetter.objects.filter(reflection=reflection).count() == 1
    assert rows(dest.engine, "t", ["id"]) == [{"id": 1, "v": 1}]


# -- 2. thousands of gaps under 2,000 open transactions ----------------------------------

def test_item2_thousands_of_gaps_under_2000_open_transactions(make_target, settings):
    """2,000 prepared (two-phase) transactions hold event ids open while 2,000 more ids
    are rolled back; every gap is examined, proven by one number, and settled only once
    its transactions have ended."""
    import json
    import random

    settings.PDR = {"NOTIFY": False}  # a transaction that notified cannot be prepared
    source, dest, st, reflection = mirror(make_target, "postgresql", "sqlite")
    worker.run_round()
    held = []
    with source.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for i in range(1, 2001):
            conn.exec_driver_sql(f"BEGIN; INSERT INTO t VALUES ({i}, 'held'); PREPARE TRANSACTION 'pdr_p{i}'")
            held.append(i)
            conn.exec_driver_sql(f"INSERT INTO t VALUES ({10000 + i}, 'seen')")
        for i in range(1, 2001):
            conn.exec_driver_sql(f"BEGIN; INSERT INTO t VALUES ({20000 + i}, 'never'); ROLLBACK")
            conn.exec_driver_sql(f"INSERT INTO t VALUES ({30000 + i}, 'seen')")
    open_ids = set(held)
    try:
        worker.run_round()
        reflection.refresh_from_db()
        gaps = reflection.position["g"]
        assert len(gaps) >= 4000
        worker.run_round()
        assert len(rows(dest.engine, "t", ["id"])) == 4000  # the committed rows, nothing held
        # held ids commit in any order: each row arrives at the next pass, even in the last gaps
        random.Random(7).shuffle(held)
        with source.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for step in range(4):
                for i in held[step * 500:(step + 1) * 500]:
                    conn.exec_driver_sql(f"COMMIT PREPARED 'pdr_p{i}'")
                    open_ids.discard(i)
                worker.run_round()
                assert len(rows(dest.engine, "t", ["id"])) == 4000 + (step + 1) * 500
                if step == 0:
                    reflection.refresh_from_db()
                    gaps = reflection.position["g"]
                    # one number per gap, whatever the number of open transactions
                    assert len(gaps) >= 3500 and all(len(g) == 3 and isinstance(g[2], int) for g in gaps)
                    assert len(json.dumps(reflection.position)) < 60 * len(gaps)
        worker.run_round()
        assert same(source, dest)
        reflection.refresh_from_db()
        assert reflection.position["g"] == []
    finally:
        with source.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for i in open_ids:
                conn.exec_driver_sql(f"ROLLBACK PREPARED 'pdr_p{i}'")


# -- 4. temporary errors are retried; rows a destination cannot take are set aside ----------

def test_item4_read_only_destination_is_retried_not_dead_lettered(make_target):
    source, dest, st, reflection = mirror(make_target, "sqlite", "postgresql")
    worker.run_round()
    dest.execute(f'ALTER DATABASE "{dest.name}" SET default_transaction_read_only = on')  # a fail-over
    from django_pdr.connections import dispose_all

    dispose_all()
    source.execute("INSERT INTO t VALUES (1, 'a')")  # a one-row batch
    result = worker.run_round()
    assert result.failed and "read-only" in result.failed[0][1]
    assert not DeadLetter.objects.filter(reflection=reflection).exists()
    reflection.refresh_from_db()
    assert reflection.status == "error"
    dest.execute("SET default_transaction_read_only = off",
                 f'ALTER DATABASE "{dest.name}" SET default_transaction_read_only = off')
    dispose_all()
    call_command("pdr-reflect", verbosity=0)
    assert same(source, dest)


@pytest.mark.parametrize("source_kind,dest_kind,column,value", [
    ("mysql", "postgresql", "v varchar(40)", "'nul\\0inside'"),  # PostgreSQL text cannot hold NUL
    ("sqlite", "mysql", "v double precision", "9e999"),  # MariaDB DOUBLE has no infinity
])
def test_item4_a_value_the_driver_refuses_is_dead_lettered(make_target, source_kind, dest_kind, column, value):
    source, dest, st, reflection = mirror(make_target, source_kind, dest_kind,
                                          create=f"CREATE TABLE t (id int PRIMARY KEY, {column})")
    worker.run_round()
    source.execute(f"INSERT INTO t VALUES (1, {value})", "INSERT INTO t VALUES (2, 1), (3, 2)")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [2, 3]
    letter = DeadLetter.objects.get(reflection=reflection)
    assert letter.key == [1]
    # the initial load too
    Reflection.objects.filter(pk=reflection.pk).update(resync_requested=True)
    DeadLetter.objects.all().delete()
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [2, 3]


def test_item4_a_row_over_max_allowed_packet_is_dead_lettered_with_the_reason(make_target):
    source, dest, st, reflection = mirror(make_target, "postgresql", "mysql",
                                          create="CREATE TABLE t (id int PRIMARY KEY, body text)")
    worker.run_round()
    with dest.engine.connect() as conn:
        limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
    source.execute(f"INSERT INTO t VALUES (1, repeat('x', {limit + 1024 * 1024}))",
                   "INSERT INTO t VALUES (2, 'small'), (3, repeat('y', 1000))")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [2, 3]
    letter = DeadLetter.objects.get(reflection=reflection)
    assert "'body'" in letter.error and "max_allowed_packet" in letter.error
    source.execute("UPDATE t SET body = 'now small' WHERE id = 1")
    call_command("pdr-reflect", retry_dead_letters=True, verbosity=0)
    assert same(source, dest)


def test_item4_lock_timeout_on_the_destination_is_retried_not_dead_lettered(make_target):
    source, dest, st, reflection = mirror(make_target, "postgresql", "mysql")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    from django_pdr.connections import dispose_all

    dest.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    dispose_all()
    locker = dest.engine.connect()
    try:
        locker.exec_driver_sql("SELECT * FROM t WHERE id = 1 FOR UPDATE")  # a long report holds the row
        source.execute("UPDATE t SET v = 'b' WHERE id = 1")  # a one-row batch
        result = worker.run_round()
        assert result.failed and "Lock wait timeout" in result.failed[0][1]
        assert not DeadLetter.objects.filter(reflection=reflection).exists()
    finally:
        locker.rollback()
        locker.close()
        dest.execute("SET GLOBAL innodb_lock_wait_timeout = 50")
        dispose_all()
    call_command("pdr-reflect", verbosity=0)
    assert same(source, dest)


def test_item2_a_gap_held_by_the_newest_writer_stays_open(make_target):
    """The newest open writer is not in a snapshot's in-progress list when no later
    transaction has completed (PostgreSQL 14+: xmax is one past the latest completed
    xid), yet it may hold an event id below a committed one."""
    source, dest, st, reflection = mirror(make_target, "postgresql", "sqlite")
    worker.run_round()
    older, newest = source.engine.connect(), source.engine.connect()
    try:
        older.exec_driver_sql("SELECT pg_current_xact_id()")  # begins writing first (a lower xid)
        newest.exec_driver_sql("INSERT INTO t VALUES (1, 'newest writer')")  # a higher xid, the lower event id
        older.exec_driver_sql("INSERT INTO t VALUES (2, 'older writer')")  # the higher event id
        older.commit()
        for _ in range(3):
            worker.run_round()
        assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [2]
        newest.commit()
        worker.run_round()
        assert same(source, dest)
    finally:
        older.close()
        newest.close()


def test_item1_capture_and_checkpoints_of_an_earlier_release_are_adopted_without_a_resync(make_target):
    """Upgrading: no registry row, checkpoints without an incarnation."""
    import json

    source, dest, st, reflection = mirror(make_target, "postgresql", "sqlite")
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    source.execute("DROP TABLE pdr_capture")  # as an earlier release installed it
    with dest.engine.begin() as conn:
        state = json.loads(conn.exec_driver_sql("SELECT state FROM pdr_checkpoint").scalar())
        state.pop("inc")
        conn.exec_driver_sql("UPDATE pdr_checkpoint SET state = ?", (json.dumps(state),))
    source.execute("INSERT INTO t VALUES (2, 'b')")
    assert worker.run_round().failed  # outdated: the worker says to run pdr-install
    call_command("pdr-install", verbosity=0)
    Reflection.objects.update(next_attempt_at=None)
    result = worker.run_round()
    assert not result.failed and result.events == 1 and result.rows == 1  # one event, no reload
    assert same(source, dest)
    reflection.refresh_from_db()
    assert reflection.load_progress["loaded"] == 1 and reflection.position["i"]
