"""A running worker purges a source's applied events once 1,000 wait (at most every
PURGE_INTERVAL) or after a minute; a one-shot pass at once."""
import pytest

from django_pdr import worker
from django_pdr.models import Reflection
from tests.targets import watch

pytestmark = [pytest.mark.django_db(transaction=True)]


def _events(source, st):
    with source.engine.connect() as conn:
        return conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}"').scalar()


def test_purges_wait_for_enough_events_or_time_and_the_interval(make_target, monkeypatch):
    monkeypatch.setattr(worker, "_last_purge", {})
    monkeypatch.setattr(worker, "_purge_due", {})
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    clock = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    worker.run_round(purge_interval=1)  # initial load
    source.execute("INSERT INTO t VALUES (0, 'x')")
    worker.run_round(purge_interval=1)
    assert _events(source, st) == 1  # one change of a quiet table: no purge of its own at once
    clock[0] += 30
    worker.run_round(purge_interval=1)  # an idle pass: still not due
    assert _events(source, st) == 1
    clock[0] += 31
    worker.run_round(purge_interval=1)  # an idle pass, 61 s after: the waiting purge happens
    assert _events(source, st) == 0

    source.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) "
                   "INSERT INTO t SELECT 100 + i, 'bulk' FROM n")
    worker.run_round(purge_interval=1)
    assert _events(source, st) == 1500  # enough events, but the last purge was under a second ago
    clock[0] += 1
    worker.run_round(purge_interval=1)  # the interval has passed: 1,500 events purged
    assert _events(source, st) == 0

    source.execute("INSERT INTO t VALUES (2, 'x')")
    worker.run_round()  # a one-shot pass purges at once
    assert _events(source, st) == 0


def test_make_durable_waits_once_per_process_and_after_each_asynchronous_commit(monkeypatch):
    from django_pdr.engine import checkpoint

    monkeypatch.setattr(checkpoint, "_commits", {})
    flushes = []

    class Dialect:
        commits_asynchronously = True

        def make_durable(self, conn):
            flushes.append(conn)

    checkpoint.make_durable(Dialect(), "dst", 7)  # first in this process: an earlier one's commits
    checkpoint.make_durable(Dialect(), "dst", 7)
    assert flushes == ["dst"]
    checkpoint.committed_asynchronously(7)
    checkpoint.committed_asynchronously(7)
    checkpoint.make_durable(Dialect(), "dst", 8)  # another destination: its own first flush
    checkpoint.make_durable(Dialect(), "dst", 7)
    checkpoint.make_durable(Dialect(), "dst", 7)
    assert flushes == ["dst"] * 3
    Dialect.commits_asynchronously = False
    checkpoint.committed_asynchronously(9)
    checkpoint.make_durable(Dialect(), "dst", 9)  # an engine that never commits asynchronously
    assert flushes == ["dst"] * 3


@pytest.mark.live
@pytest.mark.parametrize("asynchronous", [True, False])
def test_a_position_is_recorded_for_purges_only_once_the_destination_holds_it_on_disk(
        make_target, monkeypatch, settings, asynchronous):
    """Small PostgreSQL batches commit without waiting for their flush (as PostgreSQL's own
    subscriptions do): the position purges go by is recorded only after the destination
    flushed them (a destination crash may lose such batches; their events are still there)."""
    from django_pdr.dialects.postgresql import PostgreSQLDialect
    from django_pdr.engine import checkpoint

    settings.PDR = {"ASYNCHRONOUS_COMMIT": asynchronous}
    monkeypatch.setattr(checkpoint, "_commits", {})
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()  # initial load
    seen, commits = [], []
    real_durable, real_guarded = PostgreSQLDialect.make_durable, PostgreSQLDialect.apply_marked_guarded

    def durable(self, conn):
        seen.append(Reflection.objects.get(pk=reflection.pk).position)  # as recorded before the flush
        return real_durable(self, conn)

    def guarded(self, *args, **kwargs):
        commits.append(kwargs.get("asynchronous"))
        return real_guarded(self, *args, **kwargs)

    monkeypatch.setattr(PostgreSQLDialect, "make_durable", durable)
    monkeypatch.setattr(PostgreSQLDialect, "apply_marked_guarded", guarded)
    before = Reflection.objects.get(pk=reflection.pk).position
    source.execute("INSERT INTO t VALUES (1, 'a')")
    worker.run_round()
    after = Reflection.objects.get(pk=reflection.pk).position
    assert commits == [asynchronous] and after["c"] > before["c"]
    # (the load's first recording in this process flushed once, for an earlier process's
    # commits) after an asynchronous commit, the flush comes before the new position is
    # recorded; without one, nothing waits
    assert seen == ([before] if asynchronous else [])
    source.execute("INSERT INTO t VALUES (2, 'b')")
    seen.clear()
    worker.run_round()
    assert seen == ([after] if asynchronous else [])


@pytest.mark.live
def test_only_small_batches_and_load_chunks_commit_asynchronously(make_target, monkeypatch):
    """A large streaming batch (past the one-statement size) commits in a transaction that
    waits for its flush, as before ASYNCHRONOUS_COMMIT; the small batches' one-statement path
    and the load chunks do not wait."""
    from django_pdr.dialects.postgresql import PostgreSQLDialect

    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)",
                   "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    transactions, real = [], PostgreSQLDialect.commit_asynchronously

    def spy(self, conn):
        transactions.append(conn)
        return real(self, conn)

    monkeypatch.setattr(PostgreSQLDialect, "commit_asynchronously", spy)
    worker.run_round()  # the load: its chunk commits asynchronously
    assert len(transactions) == 1
    source.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(11, 2000) g")
    worker.run_round()  # one batch of 1,990 rows: a transaction that waits for its flush
    assert len(transactions) == 1
    with dest.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2000
