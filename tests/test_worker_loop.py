"""The running worker's loop without servers: what it tells the Waker after each pass,
the purge interval it passes, and how the Waker paces its arming attempts."""
import socket
import threading
import time

import pytest

from django_pdr import wakeup, worker
from django_pdr.worker import RoundResult


class FakeWaker:
    def __init__(self, log):
        self.log = log
        self.quiet = set()

    def wait(self, databases, timeout, stop_event=None):
        self.log.append(("wait", timeout))
        self.quiet = {1}  # database 1 proved quiet by its notifications
        return False

    def busy(self):
        self.log.append(("busy",))
        self.quiet = set()

    def close(self):
        self.log.append(("close",))


def _run_loop(monkeypatch, events_per_round, interval):
    """worker.run with run_round faked to report ``events_per_round`` in turn (then stop)."""
    log, stop_event = [], threading.Event()
    rounds = list(events_per_round)

    def fake_round(ids=None, stop=None, owner=None, purge_interval=0.0, backoff=True, scheduler=None,
                   quiet_sources=frozenset(), lane=None, purger=None, side=None):
        log.append(("round", purge_interval) + ((set(quiet_sources),) if quiet_sources else ()))
        result = RoundResult()
        result.events = rounds.pop(0)
        if not rounds:
            stop_event.set()  # as a signal during the last pass would
        return result

    monkeypatch.setattr(worker, "run_round", fake_round)
    monkeypatch.setattr(worker, "Waker", lambda: FakeWaker(log))
    monkeypatch.setattr(worker, "source_databases", lambda ids: [])
    monkeypatch.setattr(worker, "release", lambda owner: None)
    monkeypatch.setattr(worker, "forget_descriptions", lambda: None)
    monkeypatch.setattr(worker, "not_up_to_date", lambda ids, result: [])
    worker.run(interval=interval, stop_event=stop_event)
    return log


def test_a_pass_that_found_work_disarms_and_an_idle_pass_sleeps(monkeypatch, settings):
    settings.PDR = {"PURGE_INTERVAL": 7.5}
    log = _run_loop(monkeypatch, [5, 0, 3, 0, 0, 1], interval=2.0)
    assert log == [
        ("round", 7.5), ("busy",),  # work: writers may stop notifying while it works
        ("round", 7.5), ("wait", 2.0),  # idle: sleep (armed) up to the interval
        ("round", 7.5, {1}), ("busy",),  # what the sleep proved quiet is not probed again
        ("round", 7.5), ("wait", 2.0),  # after work, every source is probed
        ("round", 7.5, {1}), ("wait", 2.0),
        ("round", 7.5, {1}),  # stopped during the pass: no sleep, no disarm
        ("close",),
    ]


def test_a_one_shot_run_purges_after_each_pass_and_never_sleeps(monkeypatch):
    log = _run_loop(monkeypatch, [4], interval=None)
    assert log == [("round", 0.0), ("close",)]


class SlowWriters:
    """A notifying engine whose writers are always in flight until ``free`` is set."""

    supports_notify = True

    def __init__(self):
        self.free = False
        self.attempts = 0

    def arm_wakeups(self, raw):
        self.attempts += 1
        return "held" if self.free else None

    def disarm_wakeups(self, raw, token, wake_others=False):
        pass

    def drain_notifications(self, raw):
        return 0


@pytest.fixture
def listening_waker(monkeypatch):
    """A Waker with one fake listener (a socket nobody writes to) and select() recorded."""
    a, b = socket.socketpair()
    dialect = SlowWriters()
    waker = wakeup.Waker()
    monkeypatch.setattr(waker, "_refresh", lambda databases: None)
    waker._listeners[1] = (None, dialect, a)
    timeouts = []

    def fake_select(readable, writable, errors, timeout):
        timeouts.append(timeout)
        return [], [], []

    monkeypatch.setattr(wakeup.select, "select", fake_select)
    yield waker, dialect, timeouts
    a.close()
    b.close()


def test_failed_arming_backs_off_doubling_up_to_the_interval(listening_waker):
    waker, dialect, timeouts = listening_waker
    for _ in range(10):
        assert waker.wait([], 1.0) is False
    assert timeouts == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert dialect.attempts == 10

    dialect.free = True  # the writers committed: armed, and the caller must look again
    assert waker.wait([], 1.0) is True and waker._armed == {1: "held"}
    assert waker.wait([], 1.0) is False  # armed: sleeps the whole interval
    assert timeouts[-1] == 1.0 and dialect.attempts == 11

    assert waker.quiet == {1}  # held the arm for the whole sleep, and no word came
    waker.busy()  # work found: disarmed, and the pause starts small again
    assert waker.quiet == set()
    dialect.free = False
    waker.wait([], 1.0)
    assert waker._armed == {} and timeouts[-1] == 0.005


def test_busy_resets_the_backoff(listening_waker):
    waker, dialect, timeouts = listening_waker
    for _ in range(4):
        waker.wait([], 1.0)
    assert timeouts[-1] == 0.04
    waker.busy()
    waker.wait([], 1.0)
    assert timeouts[-1] == 0.005


@pytest.mark.django_db
def test_a_busy_slice_runs_on_the_lane_while_rounds_serve_quiet_tables(monkeypatch):
    """With a BusyLane, the round starts the busy slice on the lane's thread and does not
    wait for it: quiet reflections of this round and the next run while it works, and the
    slice is accounted (counters, lease) by the round that finds it ended."""
    from types import SimpleNamespace

    from django_pdr.engine.runner import PassResult

    def reflection(pk):
        return SimpleNamespace(pk=pk, failures=0, source=SimpleNamespace(pk=pk), source_id=pk,
                               destination=SimpleNamespace(name="d"), destination_table="t")

    quiet, busy = reflection(1), reflection(2)
    slice_may_end, slice_started, order = threading.Event(), threading.Event(), []

    def attempt(r, owner, stop, seconds, vouched=None, linger=0.0):
        if r.pk == busy.pk:
            order.append("busy slice starts")
            slice_started.set()
            assert slice_may_end.wait(10)
            order.append("busy slice ends")
            return PassResult(events=500, rows=500, caught_up=True, position_changed=True), None
        order.append("quiet pass")
        return PassResult(events=1, rows=1, caught_up=True, position_changed=True), None

    class Plan:
        def probes(self, light, quiet_sources):
            return {}

        def plan(self, light, probes, retrying, stored):
            return [quiet], [busy], 0

        def ran(self, r, busy):
            pass

        def applied(self, r):
            pass

        def streaming(self, r):
            return False

    released = []
    monkeypatch.setattr(worker, "_attempt", attempt)
    monkeypatch.setattr(worker, "candidates", lambda query: [])
    monkeypatch.setattr(worker, "checkpoints", lambda light: {})
    monkeypatch.setattr(worker, "due_reflections", lambda ids, backoff=True: [r for r in (quiet, busy) if r.pk in ids])
    monkeypatch.setattr(worker, "acquire", lambda r, owner: True)
    monkeypatch.setattr(worker, "release", lambda owner, ids=None: released.append(ids))
    monkeypatch.setattr(worker, "remember_checkpoint", lambda r: None)
    monkeypatch.setattr(worker, "_note_applied", lambda st, events: None)

    lane = worker.BusyLane()
    try:
        first = worker.run_round(owner="me", scheduler=Plan(), lane=lane, purge_interval=0.0)
        assert lane.running == busy.pk and first.deferred == [busy] and first.events == 1
        second = worker.run_round(owner="me", scheduler=Plan(), lane=lane, purge_interval=0.0)
        assert second.events == 1 and lane.running == busy.pk  # served again while the slice works
        assert slice_started.wait(10)  # the lane's thread may start it before, between or after the rounds
        assert order.count("quiet pass") == 2 and "busy slice ends" not in order
        slice_may_end.set()
        lane.wait(10)
        third = worker.run_round(owner="me", scheduler=Plan(), lane=lane, purge_interval=0.0)
        assert third.events == 1 + 500  # the ended slice is accounted by this round
        assert [busy.pk] in released  # caught up: its lease released
        assert lane.running == busy.pk  # and the next slice started
    finally:
        slice_may_end.set()
        lane.close(RoundResult(), "me", 0.0, None)


@pytest.mark.django_db
def test_a_streaming_table_lingers_on_the_free_lane_and_makes_way_for_a_backlog(monkeypatch, settings):
    """A reflection whose last pass applied events gets the free lane with STREAM_LINGER and
    STREAM_SLICE (its new changes are applied as they commit, no round in between); a table
    with a backlog waiting for the lane ends that pass (make_way), then has the lane with the
    usual TIME_SLICE and no linger."""
    from types import SimpleNamespace

    from django_pdr.engine.runner import PassResult
    from django_pdr.scheduling import Scheduler

    settings.PDR = {"STREAM_LINGER": 0.05, "TIME_SLICE": 0.5}

    def reflection(pk):
        return SimpleNamespace(pk=pk, failures=0, source=SimpleNamespace(pk=pk), source_id=pk,
                               destination=SimpleNamespace(name="d"), destination_table="t", status="running")

    streaming, backlog = reflection(1), reflection(2)
    calls, started = [], threading.Event()

    def attempt(r, owner, stop, seconds, vouched=None, linger=0.0):
        calls.append((r.pk, seconds, linger))
        if linger:
            started.set()
            deadline = time.monotonic() + 10
            while not stop() and time.monotonic() < deadline:  # streams until told to make way
                time.sleep(0.005)
            assert stop(), "the streaming pass was never asked to make way"
        return PassResult(events=5, rows=5, caught_up=True, position_changed=True), None

    class Plan(Scheduler):
        rounds = [([streaming], []), ([streaming], []), ([], [backlog]), ([], [backlog])]

        def probes(self, light, quiet_sources):
            return {}

        def plan(self, light, probes, retrying, stored):
            quiet, busy = self.rounds.pop(0)
            return list(quiet), list(busy), 0

    monkeypatch.setattr(worker, "_attempt", attempt)
    monkeypatch.setattr(worker, "candidates", lambda query: [])
    monkeypatch.setattr(worker, "checkpoints", lambda light: {})
    monkeypatch.setattr(worker, "due_reflections",
                        lambda ids, backoff=True: [r for r in (streaming, backlog) if r.pk in ids])
    monkeypatch.setattr(worker, "acquire", lambda r, owner: True)
    monkeypatch.setattr(worker, "release", lambda owner, ids=None: None)
    monkeypatch.setattr(worker, "remember_checkpoint", lambda r: None)
    monkeypatch.setattr(worker, "_note_applied", lambda st, events: None)

    plan, lane = Plan(3600.0, 1000), worker.BusyLane()
    try:
        first = worker.run_round(owner="me", scheduler=plan, lane=lane, purge_interval=0.0)
        assert calls == [(1, 0.5, 0.0)] and lane.running is None  # never applied before: a plain pass
        assert first.events == 5 and plan.streaming(streaming)
        worker.run_round(owner="me", scheduler=plan, lane=lane, purge_interval=0.0)
        assert started.wait(10) and lane.running == streaming.pk  # lingering on the lane
        assert calls[-1] == (1, worker.STREAM_SLICE, 0.05)
        third = worker.run_round(owner="me", scheduler=plan, lane=lane, purge_interval=0.0)
        assert third.deferred == [backlog]  # waits for the lane, which it asked for
        lane.wait(10)
        fourth = worker.run_round(owner="me", scheduler=plan, lane=lane, purge_interval=0.0)
        assert fourth.events == 5  # the streaming pass, accounted
        assert lane.running == backlog.pk
        lane.wait(10)
        assert calls[-1] == (2, 0.5, 0.0)  # the usual slice, no linger
    finally:
        lane.close(RoundResult(), "me", 0.0, None)


def _streamer(arrivals, stop=lambda: False):
    """A Streaming whose source offers batches of (seconds after start, events), each
    found by the first read after its time; commits take no time."""
    from types import SimpleNamespace

    from django_pdr.engine.stream import Batch, Streaming

    class Fake(Streaming):
        def __init__(self):
            self.unsaved, self.saves, self.committed = (0, 0), [], []
            self.budget = SimpleNamespace(large_rows=lambda: False)
            self.pending, self.t0 = list(arrivals), time.monotonic()

        def read_batch(self, src, state):
            ready = [a for a in self.pending if a[0] <= time.monotonic() - self.t0]
            if not ready:
                return None
            self.pending.remove(ready[0])
            return Batch({"n": state["n"] + 1}, ready[0][1], keys=[1], last=True)

        def commit_batch(self, dst, state, batch):
            assert batch.state["n"] == state["n"] + 1  # in order, from where the last one ended
            self.committed.append(batch.events)
            return batch.state, batch.events, batch.events

        def _save_progress(self, **fields):
            self.saves.append(fields)

    return Fake()


def test_a_lingering_pass_applies_changes_that_commit_after_it_caught_up():
    from django_pdr.engine.runner import PassResult

    fake, result = _streamer([(0, 3), (0.03, 2), (0.06, 4)]), PassResult()
    state = fake.stream(None, None, {"n": 0}, result, lambda: False, None, linger=1.0)
    assert fake.committed == [3, 2, 4] and state == {"n": 3}
    assert result.caught_up and result.events == 9 and result.batches == 3
    assert fake.unsaved == (9, 9) and fake.saves == []  # the pass's closing write records them


def test_a_long_lingering_pass_records_its_progress_about_every_second(monkeypatch):
    from django_pdr.engine import stream
    from django_pdr.engine.runner import PassResult

    monkeypatch.setattr(stream, "PROGRESS_SECONDS", 0.05)
    fake, result = _streamer([(i * 0.01, 1) for i in range(30)]), PassResult()
    fake.stream(None, None, {"n": 0}, result, lambda: False, None, linger=1.0)
    assert fake.committed == [1] * 30
    assert 2 <= len(fake.saves) <= 8  # every 0.05 s of the 0.3 s, not every batch
    assert sum(s["events"] for s in fake.saves) + fake.unsaved[0] == 30  # each counted once


def test_a_pass_without_linger_ends_once_caught_up_and_a_lingering_one_once_quiet_or_stopped():
    from django_pdr.engine.runner import PassResult

    fake, result = _streamer([(0, 3), (0.05, 2)]), PassResult()
    fake.stream(None, None, {"n": 0}, result, lambda: False, None)
    assert fake.committed == [3] and result.caught_up

    fake, result = _streamer([(0, 3), (0.5, 2)]), PassResult()
    started = time.monotonic()
    fake.stream(None, None, {"n": 0}, result, lambda: False, None, linger=0.05)
    assert fake.committed == [3] and result.caught_up and time.monotonic() - started < 0.4  # quiet: ends

    fake, result = _streamer([(0, 3), (0.05, 2)]), PassResult()
    # asked to stop (or make way) once the first batch is in: ends before the second,
    # which a lingering pass would otherwise read (no timer: a late thread made it flaky)
    fake.stream(None, None, {"n": 0}, result, lambda: bool(fake.committed), None, linger=5.0)
    assert fake.committed == [3] and result.caught_up

    fake, result = _streamer([]), PassResult()
    started = time.monotonic()
    fake.stream(None, None, {"n": 0}, result, lambda: False, None, linger=5.0)
    assert result.caught_up and time.monotonic() - started < 1  # nothing applied: no lingering


def test_a_running_workers_purges_run_on_their_own_thread_one_per_table(monkeypatch):
    """Purger: the round hands the purge over and goes on; a table whose last purge still
    works is not purged twice at once (it stays due for the next round)."""
    from types import SimpleNamespace

    may_end, purged = threading.Event(), []

    def slow_purge(source_table):
        purged.append((source_table.pk, threading.current_thread().name))
        assert may_end.wait(10)

    monkeypatch.setattr(worker, "purge", slow_purge)
    monkeypatch.setattr(worker, "_purge_due", {})
    monkeypatch.setattr(worker, "_last_purge", {})
    table = SimpleNamespace(pk=7)
    purger = worker.Purger()
    try:
        worker._note_applied(table, 5000)
        worker._purge_if_due(7, 1.0, purger)  # due (5,000 events): handed over, not waited for
        assert 7 not in worker._purge_due
        deadline = threading.Event()
        while not purged and not deadline.wait(0.01):
            pass
        assert purged[0][0] == 7 and purged[0][1].startswith("pdr-purge")
        worker._note_applied(table, 5000)
        monkeypatch.setitem(worker._last_purge, 7, float("-inf"))
        worker._purge_if_due(7, 1.0, purger)
        assert 7 in worker._purge_due and len(purged) == 1  # the first still works: due next time
    finally:
        may_end.set()
        purger.close()
    again = worker.Purger()
    worker._purge_if_due(7, 1.0, again)
    again.close()  # waits for it
    assert len(purged) == 2


def test_a_pass_accounted_by_the_round_hands_its_purge_to_the_purger(monkeypatch):
    """_account (inline passes and collected busy slices alike) must not purge on the
    round's thread: a busy table's purge there made every quiet table wait for it."""
    from types import SimpleNamespace

    may_end, purged = threading.Event(), []

    def slow_purge(source_table):
        purged.append(threading.current_thread().name)
        assert may_end.wait(10)

    monkeypatch.setattr(worker, "purge", slow_purge)
    monkeypatch.setattr(worker, "release", lambda owner, ids=None: None)
    monkeypatch.setattr(worker, "_purge_due", {})
    monkeypatch.setattr(worker, "_last_purge", {})
    reflection = SimpleNamespace(pk=3, source=SimpleNamespace(pk=9), destination=SimpleNamespace(name="d"),
                                 destination_table="t")
    outcome = SimpleNamespace(caught_up=True, events=50_000, rows=50_000, loaded=0, position_changed=True)
    purger = worker.Purger()
    try:
        worker._account(reflection, outcome, None, 0.0, RoundResult(), "me", 1.0, None, purger)
        assert 9 not in worker._purge_due  # handed over (the slow purge has not ended)
        for _ in range(500):
            if purged:
                break
            threading.Event().wait(0.01)
        assert purged and purged[0].startswith("pdr-purge")
    finally:
        may_end.set()
        purger.close()


def test_side_by_side_passes_overlap_except_into_one_destination_table(monkeypatch):
    """SideBySide: passes into different destination tables are at work at the same time
    (each waits here until another has started); two into one destination table never
    are; the outcomes come back in the order given."""
    from types import SimpleNamespace

    lock, at_work, overlaps, log = threading.Lock(), set(), [], []
    both_started = threading.Barrier(2, timeout=10)

    def fake_attempt(reflection, owner, stop, seconds, vouched=None):
        with lock:
            overlaps.append((reflection.pk, set(at_work)))
            at_work.add(reflection.pk)
        if reflection.pk in (1, 3):
            both_started.wait()  # 1 and 3 must be at work together, or this times out
        threading.Event().wait(0.05)
        with lock:
            at_work.discard(reflection.pk)
            log.append(reflection.pk)
        return SimpleNamespace(pk=reflection.pk), None

    monkeypatch.setattr(worker, "_attempt", fake_attempt)

    def reflection(pk, table):
        return SimpleNamespace(pk=pk, source_id=pk, destination_id=1, destination_schema="", destination_table=table)

    side = worker.SideBySide(4)
    try:
        given = [reflection(1, "a"), reflection(2, "a"), reflection(3, "b")]
        out = side.run(given, "me", lambda: False, 1.0)
    finally:
        side.close()
    assert [entry[0].pk for entry in out] == [1, 2, 3]
    assert [entry[2].pk for entry in out] == [1, 2, 3] and all(entry[3] is None for entry in out)
    seen = dict(overlaps)
    assert 1 not in seen[2] and log.index(1) < log.index(2)  # one destination table: one after another
    assert 3 in seen[2] or 1 in seen[3] or 2 in seen[3]  # another one: side by side


def test_side_by_side_passes_not_started_when_the_worker_stops(monkeypatch):
    from types import SimpleNamespace

    ran = []
    monkeypatch.setattr(worker, "_attempt", lambda r, *a: (ran.append(r.pk), (SimpleNamespace(), None))[1])
    side = worker.SideBySide(2)
    try:
        out = side.run([SimpleNamespace(pk=1, source_id=1, destination_id=1, destination_schema="", destination_table="t")],
                       "me", lambda: True, 1.0)
    finally:
        side.close()
    assert ran == [] and out[0][2] is None and out[0][3] is None


def test_a_running_worker_freezes_what_it_keeps_after_its_first_round_and_thaws_at_exit(monkeypatch):
    """settle_memory: the lifetime objects leave the cyclic collector's way after the
    first round (each full collection walked them: pauses of a few hundred ms at 1,000
    tables); a one-shot run does not, and the process is as before once the worker ends."""
    import gc

    frozen = []
    log, stop_event = [], threading.Event()
    rounds = [1, 0, 0]

    def fake_round(ids=None, stop=None, owner=None, purge_interval=0.0, backoff=True, scheduler=None,
                   quiet_sources=frozenset(), lane=None, purger=None, side=None):
        frozen.append(gc.get_freeze_count())
        result = RoundResult()
        result.events = rounds.pop(0)
        if not rounds:
            stop_event.set()
        return result

    monkeypatch.setattr(worker, "run_round", fake_round)
    monkeypatch.setattr(worker, "Waker", lambda: FakeWaker(log))
    monkeypatch.setattr(worker, "source_databases", lambda ids: [])
    monkeypatch.setattr(worker, "release", lambda owner: None)
    monkeypatch.setattr(worker, "not_up_to_date", lambda ids, result: [])
    gc.unfreeze()
    before = gc.get_threshold()
    worker.run(interval=0.01, stop_event=stop_event)
    assert frozen[0] == 0 and frozen[1] > 0 and frozen[2] > 0
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    frozen.clear()
    rounds[:] = [1]
    stop_event.clear()
    worker.run(interval=None, stop_event=stop_event)
    assert frozen == [0] and gc.get_freeze_count() == 0
