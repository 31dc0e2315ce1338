"""A running worker's rounds at scale (issue 18, item 1): idle reflections skipped after one
probe per source database, quiet tables served before busy ones, one busy slice per round."""
import threading
import time
from types import SimpleNamespace

import pytest
from django.test.utils import override_settings

from django_pdr import capture, metrics, scheduling, worker
from django_pdr.models import Reflection
from django_pdr.scheduling import Probe as _Probe
from django_pdr.scheduling import Scheduler, idle, probe
from tests.targets import KINDS, rows, watch


# -- the rules, without a database -------------------------------------------------------
def Probe(max_id, incarnation, purged, capturing=True):  # noqa: N802 (the dataclass, triggers in place)
    return _Probe(max_id, incarnation, purged, capturing)


def fake(pk, cursor=10, gaps=(), inc="A", status="running", resync=False, source=1):
    position = {"c": cursor, "g": [[lo, hi, None] for lo, hi in gaps], "i": inc}
    return SimpleNamespace(pk=pk, position=position, status=status, resync_requested=resync,
                           source=SimpleNamespace(pk=source))


@pytest.mark.parametrize("reflection,found,expected", [
    (fake(1), Probe(10, "A", 0), True),
    (fake(1), Probe(11, "A", 0), False),  # a new event
    (fake(1, gaps=[(5, 5)]), Probe(10, "A", 0), False),  # an open gap: its event may commit any time
    (fake(1), Probe(3, "B", 0), False),  # reinstalled: a new incarnation
    (fake(1), Probe(10, None, 0), False),  # no registry row: capture removed
    (fake(1), Probe(10, "A", 0, capturing=False), False),  # a trigger dropped or disabled
    (fake(1), Probe(10, "A", 12), False),  # purged beyond the cursor (a restored destination)
    (fake(1, status="error"), Probe(10, "A", 0), False),
    (fake(1, status="loading"), Probe(10, "A", 0), False),
    (fake(1, resync=True), Probe(10, "A", 0), False),
    (fake(1, inc=None), Probe(10, "A", 0), False),  # a checkpoint without an incarnation
])
def test_idle_only_when_no_event_can_be_waiting(reflection, found, expected):
    assert idle(reflection, {1: found}) is expected
    assert idle(reflection, {}) is False  # not probed: run it


def test_plan_skips_idle_orders_quiet_first_and_busy_by_turn():
    clock = SimpleNamespace(now=100.0)
    scheduler = Scheduler(full_pass_interval=30, batch_size=1000, clock=lambda: clock.now)
    reflections = [fake(1, source=1), fake(2, source=2), fake(3, source=3), fake(4, source=4), fake(5, source=5)]
    probes = {1: Probe(10, "A", 0), 2: Probe(15, "A", 0), 3: Probe(50000, "A", 0), 4: Probe(12, "A", 0),
              5: Probe(90000, "A", 0)}
    # the first round: every reflection is due its full pass
    quiet, busy, skipped = scheduler.plan(reflections, probes, set())
    assert [r.pk for r in quiet] == [1, 4, 2] and [r.pk for r in busy] == [3, 5] and skipped == 0
    for r in reflections:
        scheduler.ran(r, busy=r.pk == 3)
    clock.now += 1
    quiet, busy, skipped = scheduler.plan(reflections, probes, set())
    assert [r.pk for r in quiet] == [4, 2] and skipped == 1  # 1 is idle
    assert [r.pk for r in busy] == [5, 3]  # 3 had the last slice
    assert [r.pk for r in scheduler.plan(reflections, probes, {1})[0]][0] == 1  # a dead letter to retry
    clock.now += 30
    assert scheduler.plan(reflections, probes, set())[2] == 0  # the full pass is due again


# -- the probe, live ---------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.live
@pytest.mark.parametrize("kind", KINDS)
def test_probe_reads_every_event_tables_maximum_and_registry(make_target, monkeypatch, kind):
    target = make_target(kind)
    database = target.model()
    tables = []
    for i in range(3):
        target.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY)")
        tables.append(watch(database, f"t{i}"))
    # one row a statement (Firebird 3 has no multi-row VALUES)
    target.execute("INSERT INTO t1 VALUES (1)", "INSERT INTO t1 VALUES (2)", "INSERT INTO t1 VALUES (3)",
                   "INSERT INTO t2 VALUES (1)", "DELETE FROM t2")
    monkeypatch.setattr(scheduling, "TRIGGER_CHECK_SECONDS", 0.0)  # read the triggers at every probe
    found = probe(database, tables)
    assert [found[t.pk].max_id for t in tables] == [0, 3, 2]
    assert [found[t.pk].incarnation for t in tables] == [t.incarnation for t in tables]
    assert all(found[t.pk].purged_through == 0 for t in tables)
    assert all(found[t.pk].capturing for t in tables)
    # a trigger dropped (or, on PostgreSQL, disabled): that table is not capturing
    with target.engine.connect() as conn:
        trigger = sorted(conn.execute(capture.plan(conn, tables[1]).dialect.schema_triggers_query(
            capture.plan(conn, tables[1]).schema)).scalars())
    # Firebird: one trigger (..._trg) captures the three operations
    name = next(n for n in trigger if n.startswith(tables[1].event_table[:-3]) and n.endswith(("_upd", "_trg")))
    if kind == "postgresql":
        target.execute(f'ALTER TABLE t1 DISABLE TRIGGER "{name}"')
    else:
        target.execute(f"DROP TRIGGER {name}")
    found = probe(database, tables)
    assert [found[t.pk].capturing for t in tables] == [True, False, True]


# -- a running worker, live --------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.live
@override_settings(PDR={"BATCH_SIZE": 500, "TIME_SLICE": 0.2, "FULL_PASS_INTERVAL": 30.0})
def test_a_quiet_tables_change_is_not_held_back_by_a_busy_table(make_target):
    source, dest = make_target("postgresql"), make_target("postgresql")
    src_db, dst_db = source.model("src"), dest.model("dst")
    names = ["busy"] + [f"quiet{i}" for i in range(20)]
    for name in names:
        source.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        reflection = Reflection(source=watch(src_db, name), destination=dst_db, destination_table=name)
        reflection.full_clean()
        reflection.save()
    assert not worker.run().failed  # loaded (empty) and running
    # The busy mirror is made slow on purpose (50 ms a write statement, each batch writes at least
    # one): its 60,000 events take seconds however fast the machine, so the quiet change can only
    # arrive first by being scheduled first (a fast CI machine once caught up in 0.4 s).
    dest.execute("CREATE FUNCTION pdr_test_slow() RETURNS trigger LANGUAGE plpgsql"
                 " AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$",
                 "CREATE TRIGGER pdr_test_slow AFTER INSERT OR UPDATE OR DELETE ON busy"
                 " FOR EACH STATEMENT EXECUTE FUNCTION pdr_test_slow()")

    stop = threading.Event()
    thread = threading.Thread(target=lambda: worker.run(interval=0.05, stop_event=stop), daemon=True)
    thread.start()
    try:
        rounds = metrics.STATS.passes
        deadline = time.monotonic() + 30
        while metrics.STATS.passes < rounds + 2:  # the first round: every table's full pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        passes, rounds = metrics.STATS.reflection_passes, metrics.STATS.passes
        time.sleep(1.0)  # idle rounds: every table is skipped
        assert metrics.STATS.passes > rounds, "no round ran"
        assert metrics.STATS.reflection_passes - passes == 0, "idle reflections were opened"

        source.execute("INSERT INTO busy SELECT g, 'x' FROM generate_series(1, 30000) g",
                       "UPDATE busy SET v = 'y'")  # 60,000 events: many slices of catch-up
        time.sleep(0.3)
        source.execute("INSERT INTO quiet7 VALUES (1, 'urgent')")
        written = time.monotonic()
        while not rows(dest.engine, "quiet7", ["id"]) and time.monotonic() - written < 20:
            time.sleep(0.02)
        latency = time.monotonic() - written
        busy_done = len([r for r in rows(dest.engine, "busy", ["id"]) if r["v"] == "y"])
        assert rows(dest.engine, "quiet7", ["id"]) == [{"id": 1, "v": "urgent"}]
        print(f"quiet change visible after {latency:.2f} s; busy rows updated by then: {busy_done}")
        assert busy_done < 30000, "the busy table had caught up first: the test proves nothing"
        deadline = time.monotonic() + 120
        while len([r for r in rows(dest.engine, "busy", ["id"]) if r["v"] == "y"]) < 30000:
            assert time.monotonic() < deadline, "the busy table never caught up"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert rows(dest.engine, "busy", ["id"]) == rows(source.engine, "busy", ["id"])


def test_periodic_full_passes_are_spread_over_the_interval():
    clock = SimpleNamespace(now=0.0)
    scheduler = Scheduler(full_pass_interval=100, batch_size=1000, clock=lambda: clock.now)
    reflections = [fake(pk, source=pk) for pk in range(1, 101)]
    probes = {pk: Probe(10, "A", 0) for pk in range(1, 101)}
    quiet, _, _ = scheduler.plan(reflections, probes, set())
    assert len(quiet) == 100  # never checked by this worker: all at once, at start
    for r in quiet:
        scheduler.ran(r, busy=False)
    per_round = []
    for second in range(1, 251):  # a round every second
        clock.now = float(second)
        quiet, _, _ = scheduler.plan(reflections, probes, set())
        for r in quiet:
            scheduler.ran(r, busy=False)
        per_round.append(len(quiet))
    assert max(per_round) <= 2 and sum(per_round[:99]) == 0  # none due before the interval
    assert sum(per_round) >= 150  # every reflection checked again about every 100 s
    assert all(clock.now - t <= 100 + 2 for t in scheduler.last_full.values())


@pytest.mark.django_db(transaction=True)
@pytest.mark.live
@override_settings(PDR={"FULL_PASS_INTERVAL": 3600.0})
def test_operator_breakage_on_idle_tables_is_noticed_by_a_running_worker(make_target, monkeypatch):
    """What an operator does to an idle table while the worker skips it: restore an old
    backup of the destination, drop a trigger, reinstall capture.  Each is noticed within
    seconds, not at the next hourly full pass."""
    monkeypatch.setattr(scheduling, "CHECK_SECONDS", 0.5)
    monkeypatch.setattr(scheduling, "TRIGGER_CHECK_SECONDS", 0.5)
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    st = watch(source.model("src"), "t")
    reflection = Reflection(source=st, destination=dest.model("dst"), destination_table="t")
    reflection.full_clean()
    reflection.save()
    assert not worker.run().failed

    def wait(check, what, seconds=20):
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    # a backup of the destination (rows and checkpoint), taken now
    with dest.engine.connect() as conn:
        backup_rows = conn.exec_driver_sql("SELECT id, v FROM t").all()
        backup_state = conn.exec_driver_sql("SELECT reflection, state FROM pdr_checkpoint").all()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: worker.run(interval=0.1, stop_event=stop), daemon=True)
    thread.start()
    try:
        source.execute("INSERT INTO t VALUES (3, 'c')", "UPDATE t SET v = 'B' WHERE id = 2")
        wait(lambda: rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"]), "changes not applied")
        time.sleep(1.0)  # idle: skipped by the scheduler from here

        # 1. the destination restored from the old backup: found and mended
        with dest.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM t")
            for row in backup_rows:
                conn.exec_driver_sql("INSERT INTO t VALUES (%s, %s)", tuple(row))
            conn.exec_driver_sql("DELETE FROM pdr_checkpoint")
            for row in backup_state:
                conn.exec_driver_sql("INSERT INTO pdr_checkpoint (reflection, state, updated_at) "
                                     "VALUES (%s, %s, now())", tuple(row))
        wait(lambda: rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"]),
             "a destination restored from a backup stayed stale")

        # 2. a trigger dropped: the reflection goes to error (the worker never reinstalls)
        time.sleep(1.0)
        name = next(n for n in sorted(source.engine.connect().exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal").scalars()) if n.endswith("_ins"))
        source.execute(f'DROP TRIGGER "{name}" ON t')

        def in_error():
            reflection.refresh_from_db()
            return reflection.status == "error" and "missing" in reflection.last_error
        wait(in_error, "a dropped trigger on an idle table was not reported")

        # 3. reinstalled capture (a new incarnation): the reflection resyncs and runs again
        st.refresh_from_db()
        st.install()
        source.execute("INSERT INTO t VALUES (4, 'd')")
        wait(lambda: rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"]),
             "replication did not resume after the reinstall")
        reflection.refresh_from_db()
        wait(lambda: (reflection.refresh_from_db() or reflection.status) == "running", "still in error")
    finally:
        stop.set()
        thread.join(30)


def test_a_probe_is_reused_only_for_a_source_proved_quiet_and_only_briefly(monkeypatch):
    """Scheduler.probes: a source database the worker's notifications proved quiet keeps
    its last probe for TRIGGER_CHECK_SECONDS, while its tables and capture are the same."""
    clock = SimpleNamespace(now=0.0)
    probed = []

    def fake_probe_all(reflections):
        probed.append(sorted({r.source.database_id for r in reflections}))
        return {r.source.pk: Probe(7, "inc", 0, capturing=True) for r in reflections}

    monkeypatch.setattr(scheduling, "probe_all", fake_probe_all)
    scheduler = Scheduler(3600.0, 20000, clock=lambda: clock.now)

    def reflection(pk, database, fingerprint="f1"):
        return SimpleNamespace(pk=pk, source=SimpleNamespace(pk=pk, database_id=database, event_table=f"ev{pk}",
                                                             installed_fingerprint=fingerprint))

    light = [reflection(1, 10), reflection(2, 20)]
    assert set(scheduler.probes(light)) == {1, 2} and probed == [[10, 20]]
    clock.now = 1.0
    assert set(scheduler.probes(light, {10})) == {1, 2} and probed[-1] == [20]  # 10 reused
    clock.now = 2.0
    scheduler.probes(light)  # not proved quiet: probed
    assert probed[-1] == [10, 20]
    clock.now = 3.0
    scheduler.probes([reflection(1, 10, fingerprint="f2"), reflection(2, 20)], {10, 20})
    assert probed[-1] == [10]  # capture installed anew (by pdr-install or the admin)
    clock.now = 3.0 + scheduling.TRIGGER_CHECK_SECONDS
    scheduler.probes([reflection(1, 10, fingerprint="f2"), reflection(2, 20)], {10, 20})
    assert probed[-1] == [10, 20]  # too old: dropped triggers are looked for again
    clock.now += 1
    scheduler.probes([reflection(1, 10, fingerprint="f2"), reflection(2, 20), reflection(3, 20)], {10, 20})
    assert probed[-1] == [20]  # a table added to source 20


def test_a_checkpoint_read_before_the_copy_was_written_does_not_judge_it():
    """idle(): a checkpoint that differs from the copy makes the reflection run (a restored
    destination), unless the copy was written after the read (UNKNOWN: another worker's pass)."""
    r = fake(1)
    found = {1: Probe(10, "A", 0)}
    assert idle(r, found, {1: dict(r.position)}) is True
    assert idle(r, found, {1: dict(r.position, c=3)}) is False  # restored from an older backup
    assert idle(r, found, {}) is False  # no checkpoint read, or none held: run it
    assert idle(r, found, {1: scheduling.UNKNOWN}) is True


@pytest.mark.django_db(transaction=True)
@pytest.mark.live
def test_a_pass_vouched_by_its_rounds_probe_skips_its_capture_check_and_a_stale_vouch_decides_nothing(
        make_target, monkeypatch):
    """A running worker's pass trusts its round's probe (triggers in place, registry row)
    instead of checking the capture again, only while the probe agrees with the checkpoint;
    a probe older than a reinstall never makes a pass resync, nor hides the reinstall."""
    from django_pdr.engine import positions

    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    assert not worker.run().failed
    vouched = worker.vouched_registrations(probe(st.database, [st]))
    assert st.pk in vouched and vouched[st.pk].incarnation == st.incarnation
    checks = []
    real = positions.Reconciling._check_capture
    monkeypatch.setattr(positions.Reconciling, "_check_capture", lambda self, src: checks.append(1) or real(self, src))

    def attempt():
        reflection.refresh_from_db()
        outcome, exc = worker._attempt(reflection, None, lambda: False, 30.0, vouched[st.pk])
        assert exc is None, exc
        assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
        return outcome

    source.execute("INSERT INTO t VALUES (2, 'b')")
    outcome = attempt()
    assert outcome.events == 1 and outcome.caught_up and checks == []  # vouched: no check of its own

    # reinstalled after the probe: the stale vouch still agrees with the checkpoint, the
    # read's confirmation finds the new incarnation, the pass checks for itself and resyncs
    name = next(n for n in sorted(source.engine.connect().exec_driver_sql(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal").scalars()) if n.endswith("_ins"))
    source.execute(f'DROP TRIGGER "{name}" ON t')
    st.refresh_from_db()
    st.install()  # a capture that was partial is installed anew: a new incarnation
    st.refresh_from_db()
    assert st.incarnation != vouched[st.pk].incarnation
    source.execute("INSERT INTO t VALUES (3, 'c')")
    outcome = attempt()
    assert checks and outcome.loaded == 3

    # the checkpoint is of the new incarnation now: the stale vouch disagrees, is not used,
    # and decides no resync
    checks.clear()
    source.execute("UPDATE t SET v = 'B' WHERE id = 2")
    outcome = attempt()
    assert checks and outcome.loaded == 0 and outcome.events == 1
