"""An idle worker wakes on a PostgreSQL source's notification, not at the end of its interval."""
import time

import pytest

from django_pdr import wakeup, worker
from django_pdr.models import Database, Reflection
from tests.targets import rows, run_worker_thread, watch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


def _mirrored(make_target):
    """PostgreSQL table t replicated to SQLite, loaded: (source, destination) targets."""
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()
    return source, dest


def test_notification_wakes_an_idle_worker(make_target):
    source, dest = _mirrored(make_target)
    stop, thread = run_worker_thread(60)  # a poll would come only after a minute
    try:
        time.sleep(1.5)  # the worker is now asleep
        latencies = []
        for i in range(5):
            started = time.time()
            source.execute(f"INSERT INTO t VALUES ({i}, 'x')")
            while len(rows(dest.engine, "t", ["id"])) <= i and time.time() - started < 10:
                time.sleep(0.01)
            latencies.append(time.time() - started)
            time.sleep(0.3)
    finally:
        stop.set()
        source.execute("INSERT INTO t VALUES (100, 'wake up to see the stop')")
        thread.join(timeout=90)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])][:5] == [0, 1, 2, 3, 4]
    assert max(latencies) < 5, latencies


def test_without_notify_capture_sends_nothing_and_the_worker_polls(make_target, settings):
    settings.PDR = {"NOTIFY": False}
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    with source.engine.connect() as conn:
        body = conn.exec_driver_sql(
            "SELECT prosrc FROM pg_proc WHERE proname = %s", (f"{st.event_table[:-3]}_fn",)).scalar()
    assert body is not None and "pg_notify" not in body
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    waker = wakeup.Waker()
    try:
        assert waker.wait([Database.objects.get(name="src")], timeout=0.05) is False
        assert waker._listeners == {}  # nothing to listen to: the worker polls every interval
    finally:
        waker.close()
    source.execute("INSERT INTO t VALUES (1, 'x')")
    worker.run_round()
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1]


def _captured_source(make_target):
    """A PostgreSQL source with table t captured: (target, [its Database])."""
    source = make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    watch(source.model("src"), "t")
    return source, [Database.objects.get(name="src")]


def _listener(source):
    """A connection that LISTENs on the capture channel, as a bystander would."""
    pooled = source.engine.raw_connection()
    pooled.detach()  # autocommit and LISTEN: not for the pool
    raw = pooled.dbapi_connection
    raw.autocommit = True
    raw.cursor().execute("LISTEN pdr_events")
    return raw


def _notified(raw, wait=0.5, until_one=False):
    """NOTIFYs heard within ``wait`` s; ``until_one``: up to 5 s, as soon as one arrived
    (a loaded machine may take longer than ``wait`` to deliver the one expected)."""
    import select

    deadline, count = time.monotonic() + (5 if until_one else wait), 0
    while not (until_one and count) and (remaining := deadline - time.monotonic()) > 0:
        select.select([raw], [], [], remaining)
        raw.poll()
        count += len(raw.notifies)
        raw.notifies.clear()
    return count


def test_writers_notify_only_while_a_worker_sleeps(make_target):
    source, databases = _captured_source(make_target)
    bystander = _listener(source)
    source.execute("INSERT INTO t VALUES (1, 'x')")
    assert _notified(bystander) == 0  # no worker sleeps: no NOTIFY, no commit serialisation
    waker = wakeup.Waker()
    try:
        assert waker.wait(databases, timeout=5) is True  # armed just now: returns at once to look again
        assert len(waker._armed) == 1
        from django_pdr.connections import get_engine

        with get_engine(databases[0]).connect() as conn:  # the listener is not in the pool
            assert conn.connection.dbapi_connection.autocommit is False
        source.execute("UPDATE t SET v = 'y'")
        assert _notified(bystander, until_one=True) == 1  # a worker sleeps: the writer notifies
        started = time.monotonic()
        assert waker.wait(databases, timeout=5) is True
        assert time.monotonic() - started < 4
        assert waker._armed == {}  # woken: disarmed, writers stop notifying
        source.execute("DELETE FROM t")
        assert _notified(bystander) == 0
        assert waker.wait(databases, timeout=5) is True  # armed again; the look finds work:
        waker.busy()  # disarmed while the worker works
        assert _notified(bystander, until_one=True) == 1  # (it tells workers that slept on its arm)
        source.execute("INSERT INTO t VALUES (2, 'z')")
        assert _notified(bystander) == 0
    finally:
        waker.close()
        bystander.close()


def test_arming_waits_for_capturing_transactions_in_flight(make_target):
    """A commit the worker's last look missed must either notify or come before the arm."""
    source, databases = _captured_source(make_target)
    writer = source.engine.raw_connection()
    waker = wakeup.Waker()
    try:
        cursor = writer.cursor()
        cursor.execute("INSERT INTO t VALUES (1, 'x')")  # captured, not committed: it will not notify
        started = time.monotonic()
        assert waker.wait(databases, timeout=5) is False  # cannot arm: a short pause, not the interval
        assert time.monotonic() - started < 3
        assert waker._armed == {}
        writer.commit()
        assert waker.wait(databases, timeout=5) is True  # armed after the commit: look again
        assert len(waker._armed) == 1
    finally:
        waker.close()
        writer.close()


def test_two_sleeping_workers_are_both_woken(make_target):
    source, databases = _captured_source(make_target)
    wakers = [wakeup.Waker(), wakeup.Waker()]
    try:
        for waker in wakers:
            assert waker.wait(databases, timeout=5) is True
        # the first holds the arm, the second sleeps on it
        assert [t for w in wakers for t in w._armed.values()] == ["held", "shared"]
        source.execute("INSERT INTO t VALUES (1, 'x')")
        for waker in wakers:
            started = time.monotonic()
            assert waker.wait(databases, timeout=5) is True
            assert time.monotonic() - started < 4
        assert [w._armed for w in wakers] == [{}, {}]  # both awake: writers stop notifying
    finally:
        for waker in wakers:
            waker.close()


def test_no_wake_up_is_lost_whatever_the_worker_is_doing(make_target):
    """Commits at random moments, against a worker that would otherwise sleep a minute:
    each one must arrive in seconds, whether the worker was asleep, busy, looking again
    after arming, or could not arm because a write was in flight."""
    import random

    source, dest = _mirrored(make_target)
    stop, thread = run_worker_thread(60)
    rng = random.Random(7)
    slow = []

    def arrived(i):
        with dest.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT 1 FROM t WHERE id = ?", (i,)).first() is not None

    writer = source.engine.raw_connection()
    try:
        time.sleep(1)
        cursor = writer.cursor()
        for i in range(120):
            started = time.time()
            cursor.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
            if rng.random() < 0.3:  # a transaction held open a moment, or of two statements
                time.sleep(rng.random() * 0.02)
                cursor.execute("UPDATE t SET v = 'y' WHERE id = %s", (i,))
            writer.commit()
            while not arrived(i) and time.time() - started < 15:
                time.sleep(0.002)
            if time.time() - started > 5:
                slow.append((i, round(time.time() - started, 1)))
            time.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02, 0.1]))
    finally:
        writer.close()
        stop.set()
        source.execute("INSERT INTO t VALUES (1000, 'wake up to see the stop')")
        thread.join(timeout=90)
    assert slow == []
    assert len(rows(dest.engine, "t", ["id"])) >= 120


def test_a_worker_that_finds_work_wakes_the_workers_sleeping_on_its_arm(make_target):
    source, databases = _captured_source(make_target)
    holder, sharer = wakeup.Waker(), wakeup.Waker()
    try:
        assert holder.wait(databases, timeout=5) is True
        assert sharer.wait(databases, timeout=5) is True
        assert [holder._armed, sharer._armed] == [{databases[0].pk: "held"}, {databases[0].pk: "shared"}]
        holder.busy()  # its look found work: writers stop notifying, so the sharer must hear it now
        started = time.monotonic()
        assert sharer.wait(databases, timeout=5) is True
        assert time.monotonic() - started < 4
        assert sharer.wait(databases, timeout=5) is True and sharer._armed == {databases[0].pk: "held"}
        assert holder.wait(databases, timeout=5) is True and holder._armed == {databases[0].pk: "shared"}
    finally:
        holder.close()
        sharer.close()


def test_rolled_back_and_empty_statements_do_not_hold_off_a_sleeping_worker(make_target):
    source, databases = _captured_source(make_target)
    writer = source.engine.raw_connection()
    bystander = _listener(source)
    waker = wakeup.Waker()
    try:
        cursor = writer.cursor()
        cursor.execute("SAVEPOINT s")
        cursor.execute("INSERT INTO t VALUES (1, 'x')")
        cursor.execute("ROLLBACK TO SAVEPOINT s")  # its events and its share of the lock go together
        cursor.execute("UPDATE t SET v = 'y' WHERE id = 2")  # no row: no event, no lock
        assert waker.wait(databases, timeout=5) is True  # armed, though the transaction is open
        cursor.execute("DELETE FROM t WHERE id = 3")  # still nothing written: no notification
        writer.commit()
        assert _notified(bystander) == 0
        cursor.execute("INSERT INTO t VALUES (4, 'x')")
        cursor.execute("SAVEPOINT s")
        cursor.execute("INSERT INTO t VALUES (5, 'x')")
        cursor.execute("ROLLBACK TO SAVEPOINT s")
        writer.commit()  # the event of row 4 survived the rollback: it notified
        assert _notified(bystander, until_one=True) == 1
    finally:
        waker.close()
        writer.close()
        bystander.close()


def test_a_sleep_on_a_held_arm_without_a_notification_proves_the_source_quiet(make_target):
    """``Waker.quiet`` (the worker then reuses its last probe of that source): only a sleep
    on an arm this worker held throughout, without a notification; never a shared arm
    (its holder may die without a word, and writers then stop notifying)."""
    source, databases = _captured_source(make_target)
    pk = databases[0].pk
    holder, sharer = wakeup.Waker(), wakeup.Waker()
    try:
        assert holder.wait(databases, timeout=5) is True and holder.quiet == set()  # armed: look first
        assert holder.wait(databases, timeout=0.3) is False
        assert holder.quiet == {pk}
        assert sharer.wait(databases, timeout=5) is True and sharer._armed == {pk: "shared"}
        assert sharer.wait(databases, timeout=0.3) is False
        assert sharer.quiet == set()  # slept on another worker's arm: proves nothing
        source.execute("INSERT INTO t VALUES (1, 'x')")
        assert holder.wait(databases, timeout=5) is True
        assert holder.quiet == set()  # a commit came
        holder.busy()
        assert holder.quiet == set()
    finally:
        holder.close()
        sharer.close()
