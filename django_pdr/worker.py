"""The replication loop behind ``manage.py pdr-reflect``.

Each active reflection gets a pass; an error in one is logged, recorded on it
with an exponential back-off, and the others go on.  Several workers (on one
host or many) share the reflections through leases held in the Django
database: a conditional UPDATE claims a reflection, progress renews the claim,
and a dead worker's claim expires after ``LEASE_SECONDS``.  The destination
checkpoint is the last line of defence: a batch commits only if the checkpoint
is still the one it started from.
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from . import conf
from .errors import describe as describe_error
from .maintenance import purge
from .metrics import STATS
from .scheduling import Scheduler, candidates, checkpoints, remember_checkpoint
from .models import Database, Reflection
from .engine.checkpoint import StaleCheckpoint
from .engine.describe import forget_descriptions, forget_stale_descriptions
from .engine.runner import LeaseLost, ReflectionRunner
from .wakeup import Waker

logger = logging.getLogger("django_pdr.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class RoundResult:
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    unfinished: list = field(default_factory=list)
    held: list = field(default_factory=list)  # claimed by another worker
    deferred: list = field(default_factory=list)  # busy, left to the next round (scheduler)
    skipped: int = 0  # idle, not opened (scheduler)
    events: int = 0
    rows: int = 0


def backoff_seconds(failures: int) -> float:
    base = float(conf.get("RETRY_BACKOFF"))
    cap = float(conf.get("RETRY_BACKOFF_MAX"))
    return min(cap, base * (2 ** max(0, failures)))


def due_query(ids=None, backoff: bool = True):
    """Active reflections (of ``ids``), without those waiting out a back-off (``backoff``)."""
    query = Reflection.objects.filter(active=True)
    if backoff:
        query = query.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
    if ids:
        query = query.filter(pk__in=ids)
    return query.order_by("id")


def due_reflections(ids=None, backoff: bool = True):
    """``due_query`` as model instances, with their source table and databases."""
    # the credentials are read (and decrypted) only where a connection is made: an engine is
    # cached per database, so a round over many reflections decrypts nothing
    return list(due_query(ids, backoff).select_related("source__database", "destination")
                .defer(*[f"{path}__{name}" for path in ("source__database", "destination")
                         for name in ("username", "password")]))


def _dead_local_owner(owner: str) -> bool:
    """True when ``owner`` names a worker process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def source_databases(ids=None):
    """The source Databases of the active reflections (for change notifications)."""
    query = Reflection.objects.filter(active=True)
    if ids:
        query = query.filter(pk__in=ids)
    return list(Database.objects.filter(source_tables__reflections__in=query).distinct())


def acquire(reflection, owner: str) -> bool:
    """Claim ``reflection`` for ``owner`` unless another live worker holds it.

    A lease expires after LEASE_SECONDS without renewal; a lease whose holder was a
    process of this host that has died (kill -9, OOM) is taken over at once."""
    now = timezone.now()
    free = (Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_expires_at__isnull=True)
            | Q(lease_expires_at__lt=now))
    holder = Reflection.objects.filter(pk=reflection.pk).values_list("lease_owner", flat=True).first()
    if holder and holder != owner and _dead_local_owner(holder):
        free |= Q(lease_owner=holder)
    claimed = (Reflection.objects.filter(pk=reflection.pk).filter(free)
               .update(lease_owner=owner,
                       lease_expires_at=now + timezone.timedelta(seconds=float(conf.get("LEASE_SECONDS")))))
    return claimed == 1


def release(owner: str, ids=None):
    query = Reflection.objects.filter(lease_owner=owner)
    if ids:
        query = query.filter(pk__in=ids)
    query.update(lease_owner="", lease_expires_at=None)


#: Seconds a reflection works per round of a one-shot run (or a round run on its own).
ONE_SHOT_SLICE = 30.0

#: A running worker purges a source table's applied events once this many wait (and
#: PURGE_INTERVAL has passed since its last purge), or once the first of them has waited
#: PURGE_AFTER_SECONDS: a quiet table's single change does not cost a purge (a write
#: transaction on the source) of its own at once.  A one-shot run purges after each pass.
PURGE_AFTER_EVENTS = 1000
PURGE_AFTER_SECONDS = 60.0

#: Source tables with applied events not purged yet: pk -> [source table, events, since
#: (monotonic)]; when each was last purged.
_purge_due: dict = {}
_last_purge: dict = {}


def _note_applied(source_table, events: int):
    entry = _purge_due.get(source_table.pk)
    if entry is None:
        _purge_due[source_table.pk] = [source_table, events, time.monotonic()]
    else:
        entry[0] = source_table
        entry[1] += events


class Purger:
    """A running worker's purges, on a thread of their own: deleting a busy table's applied
    events takes a while, and a quiet table's change must not wait for it.  At most one
    purge per source table at a time; a failed purge is logged (it is housekeeping)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-purge")
        self._flight: dict = {}  # source table pk -> future

    def submit(self, source_table) -> bool:
        """Start purging ``source_table``; False when a purge of it is still at work."""
        future = self._flight.get(source_table.pk)
        if future is not None and not future.done():
            return False
        self._flight[source_table.pk] = self._pool.submit(_purge, source_table)
        return True

    def close(self):
        self._pool.shutdown(wait=True)
        self._flight.clear()


def _purge(source_table):
    try:
        purge(source_table)
    except Exception as exc:  # purging is housekeeping: never fail the pass for it
        logger.warning("purging events of %s failed: %s", source_table, describe_error(exc))


def _purge_if_due(pk, interval: float, purger: Purger | None = None):
    entry = _purge_due.get(pk)
    if entry is None:
        return
    source_table, waiting, since = entry
    now = time.monotonic()
    if interval > 0:
        if now - _last_purge.get(pk, float("-inf")) < interval:
            return
        if waiting < PURGE_AFTER_EVENTS and now - since < PURGE_AFTER_SECONDS:
            return
    if purger is not None:
        if not purger.submit(source_table):
            return  # the last purge is still at work: due again next time
    else:
        _purge(source_table)
    del _purge_due[pk]
    _last_purge[pk] = now


def _attempt(reflection, owner: str, stop, seconds: float, vouched=None, linger: float = 0.0):
    """A pass of ``reflection``: (outcome, None) or (None, the exception).  ``vouched``: the
    registry row this round's probe found, with the capture in place (see ReflectionRunner);
    ``linger``: see Streaming.stream."""
    try:
        runner = ReflectionRunner(reflection, owner=owner, vouched=vouched)
        return runner.run(stop=stop, max_seconds=seconds, linger=linger), None
    except Exception as exc:  # one reflection's failure must not stop the others
        return None, exc


def _account(reflection, outcome, exc, started: float, result: RoundResult, owner: str, purge_interval: float,
             scheduler: Scheduler | None, purger: Purger | None = None):
    """What a pass leaves to its round: the error recorded (with its back-off), the lease
    released when caught up, counters, the log line, applied events noted for purging."""
    if isinstance(exc, (LeaseLost, StaleCheckpoint)):
        logger.warning("%s", exc)
        return
    if exc is not None:
        release(owner, [reflection.pk])
        message = describe_error(exc)
        delay = backoff_seconds(reflection.failures)
        logger.error("reflection %s (%s) failed: %s; next try in %.0f s", reflection.pk, reflection,
                     message, delay, exc_info=(type(exc), exc, exc.__traceback__) if logger.isEnabledFor(
                         logging.DEBUG) else None,
                     extra={"reflection": reflection.pk, "source": str(reflection.source),
                            "destination": f"{reflection.destination.name}:{reflection.destination_table}",
                            "error": message, "retry_in": delay})
        reflection.record_error(message, delay)
        result.failed.append((reflection, message))
        STATS.failures += 1
        return
    if scheduler is not None:
        remember_checkpoint(reflection)
        if outcome.events:
            scheduler.applied(reflection)
    if outcome.caught_up:
        release(owner, [reflection.pk])  # idle: let any worker take it next time
    result.ok.append(reflection)
    if not outcome.caught_up:
        result.unfinished.append(reflection)
    result.events += outcome.events
    result.rows += outcome.rows
    STATS.events += outcome.events
    STATS.rows += outcome.rows
    if outcome.events or outcome.loaded:
        logger.info("reflection %s: %d events, %d rows applied%s", reflection.pk, outcome.events,
                    outcome.rows, "" if outcome.caught_up else " (more pending)",
                    extra={"reflection": reflection.pk, "source": str(reflection.source),
                           "destination": f"{reflection.destination.name}:{reflection.destination_table}",
                           "events": outcome.events, "rows": outcome.rows, "loaded": outcome.loaded,
                           "seconds": round(time.monotonic() - started, 3),
                           "caught_up": outcome.caught_up})
    if outcome.events or outcome.position_changed:
        _note_applied(reflection.source, outcome.events)
    _purge_if_due(reflection.source.pk, purge_interval, purger)


#: Seconds between two rounds of a running worker while a busy slice is at work on its
#: lane and the rounds find nothing else to do.
BUSY_POLL = 0.25
#: Longest pass of a streaming table on the busy lane (see BusyLane.submit): it ends then,
#: or when a table with a backlog waits for the lane, or once caught up and quiet for
#: PDR["STREAM_LINGER"] seconds.
STREAM_SLICE = 5.0


class BusyLane:
    """A running worker's busy reflections, one time slice at a time on a thread of their
    own, while the rounds (probes, quiet tables) go on: a quiet table's change never
    waits behind a busy slice.  The thread only runs the pass; what it leaves (errors,
    leases, counters, purging) is accounted by the round that collects it."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-busy")
        self._flight = None  # (reflection, started, future)
        self._make_way = threading.Event()
        self.streaming = False  # the pass in flight is a streaming table's (see submit)

    @property
    def running(self) -> int | None:
        """The pk of the reflection in flight, or None."""
        return None if self._flight is None else self._flight[0].pk

    def submit(self, reflection, owner: str, stop, seconds: float, linger: float = 0.0):
        """Run a pass of ``reflection`` on the lane's thread.  With ``linger`` (a streaming
        table), the pass also ends when ``make_way`` is called."""
        assert self._flight is None
        self._make_way.clear()
        if linger > 0:
            worker_stop = stop
            stop = lambda: worker_stop() or self._make_way.is_set()  # noqa: E731
        self._flight = (reflection, time.monotonic(),
                        self._pool.submit(_attempt, reflection, owner, stop, seconds, None, linger))
        self.streaming = linger > 0

    def make_way(self):
        """A table with a backlog waits for the lane: a streaming pass on it ends after its
        batch in flight."""
        if self._flight is not None and self.streaming:
            self._make_way.set()

    def collect(self, result: RoundResult, owner: str, purge_interval: float, scheduler, wait: float = 0.0,
                purger: Purger | None = None):
        """Account the slice in flight if it has ended (waiting up to ``wait`` seconds)."""
        if self._flight is None:
            return
        reflection, started, future = self._flight
        try:
            outcome, exc = future.result(timeout=wait)
        except FutureTimeout:
            return
        self._flight = None
        _account(reflection, outcome, exc, started, result, owner, purge_interval, scheduler, purger)

    def wait(self, seconds: float):
        """Until the slice in flight ends, or ``seconds`` pass."""
        if self._flight is not None:
            futures_wait([self._flight[2]], timeout=seconds)

    def close(self, result: RoundResult, owner: str, purge_interval: float, scheduler, purger=None):
        """Wait for the slice in flight (the caller has asked it to stop) and account it."""
        if self._flight is not None:
            self.collect(result, owner, purge_interval, scheduler, wait=None, purger=purger)
        self._pool.shutdown(wait=True)


def vouched_registrations(probes: dict) -> dict:
    """{source table pk: Registration} of the probes that found every row trigger in place
    and a registry row: passes of this round need not check the capture again."""
    from .capture import Registration

    return {pk: Registration(found.incarnation, found.purged_through, None)
            for pk, found in probes.items() if found.capturing and found.incarnation is not None}


class SideBySide:
    """A running worker's quiet passes, several at a time.  A quiet table's change waits
    for the passes of the round before its own; run one after another, a round with a few
    changed tables made the last one wait for all of them (each pass is a few round trips
    to three databases, mostly waiting).  Passes into the same destination table run one
    after another on one thread (a fan-in's reflections would otherwise contend for its
    rows); the round accounts every pass itself, in order, once all have ended."""

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pdr-pass")
        #: passes claimed at a time: a claim waits for its pass no longer than a few passes
        self.chunk = 2 * threads

    @staticmethod
    def _one_after_another(reflections, owner: str, stop, seconds: float, vouched: dict) -> list:
        out = []
        for reflection in reflections:
            started = time.monotonic()
            outcome, exc = (None, None) if stop() else _attempt(reflection, owner, stop, seconds,
                                                                vouched.get(reflection.source_id))
            out.append((reflection, started, outcome, exc))
        return out

    def run(self, reflections, owner: str, stop, seconds: float, vouched: dict | None = None) -> list:
        """[(reflection, started, outcome, exception)] of each pass, in the given order; a
        pass not started because ``stop()`` came has neither outcome nor exception.
        ``vouched``: {source table pk: the registry row this round's probe found}."""
        groups: dict = {}
        for reflection in reflections:
            target = (reflection.destination_id, reflection.destination_schema, reflection.destination_table)
            groups.setdefault(target, []).append(reflection)
        futures = [self._pool.submit(self._one_after_another, group, owner, stop, seconds, vouched or {})
                   for group in groups.values()]
        done = {entry[0].pk: entry for future in futures for entry in future.result()}
        return [done[r.pk] for r in reflections]

    def close(self):
        self._pool.shutdown(wait=True)


def run_round(ids=None, stop=lambda: False, max_seconds_each: float | None = None,
              owner: str | None = None, purge_interval: float = 0.0, backoff: bool = True,
              scheduler: Scheduler | None = None, quiet_sources=frozenset(),
              lane: BusyLane | None = None, purger: Purger | None = None,
              side: "SideBySide | None" = None) -> RoundResult:
    """One pass over every due reflection this worker can claim, each for at most
    ``max_seconds_each`` (default: ``PDR["TIME_SLICE"]`` with a scheduler, else
    ONE_SHOT_SLICE).  Applied events are purged after the pass, or at most every
    ``purge_interval`` seconds per source.  ``backoff`` False: reflections waiting out a
    back-off after an error are tried too.  With a ``scheduler`` (a running worker), idle
    reflections are skipped and quiet ones go first (see scheduling.py); one busy slice is
    served per round: in this round, or, with a ``lane``, on the lane's thread (started
    when the lane is free; the round does not wait for it).  ``quiet_sources``: source
    databases known to have committed no change since the last round (their probe is
    reused).  ``purger``: purges run on its thread, not in the round.  ``side``: the
    round's passes (those not on the lane) run side by side on its threads, a few claims at a
    time, each accounted in order when those have ended."""
    result = RoundResult()
    single = owner is None
    if single:
        forget_descriptions()  # a stand-alone round describes the tables afresh
    owner = owner or new_worker_id()
    if max_seconds_each is None:  # a one-shot run yields to its other reflections less often
        max_seconds_each = float(conf.get("TIME_SLICE")) if scheduler is not None else ONE_SHOT_SLICE
    busy = set()
    streamed = None  # the streaming table given the lane this round (see below)
    vouched = {}  # source table pk -> Registration its probe found, capture in place
    if lane is not None:
        lane.collect(result, owner, purge_interval, scheduler, purger=purger)
    if scheduler is None:
        reflections = due_reflections(ids, backoff=backoff)
    else:
        from .models import DeadLetter

        light = candidates(due_query(ids, backoff=backoff))
        retrying = set(DeadLetter.objects.filter(retry_requested=True).values_list("reflection_id", flat=True))
        probes = scheduler.probes(light, quiet_sources)
        quiet, busy_list, result.skipped = scheduler.plan(light, probes, retrying, checkpoints(light))
        vouched = vouched_registrations(probes)
        in_flight = lane.running if lane is not None else None
        linger = float(conf.get("STREAM_LINGER"))
        if linger > 0 and lane is not None and in_flight is None and not busy_list:
            # the lane is free: a streaming table's new changes are applied there as they
            # commit, until it is quiet again (see Streaming.stream)
            streaming = [r for r in quiet if scheduler.streaming(r)]
            if streaming:
                chosen = min(streaming, key=lambda r: (scheduler.last_served.get(r.pk, float("-inf")), r.pk))
                quiet.remove(chosen)
                busy_list, streamed = [chosen], chosen.pk
        order = [r.pk for r in quiet + busy_list if r.pk != in_flight]
        loaded = {r.pk: r for r in due_reflections(order, backoff=backoff)} if order else {}
        reflections = [loaded[pk] for pk in order if pk in loaded]
        busy = {r.pk for r in busy_list}
    busy_served = lane is not None and lane.running is not None
    together = []  # claimed passes waiting for ``side`` to run them side by side

    def run_side_by_side():
        for reflection, started, outcome, exc in (side.run(together, owner, stop, max_seconds_each, vouched)
                                                  if together else ()):
            if outcome is None and exc is None:
                continue  # not started: the worker is stopping (its leases are released then)
            _account(reflection, outcome, exc, started, result, owner, purge_interval, scheduler, purger)
        together.clear()

    try:
        for reflection in reflections:
            if stop():
                break
            if reflection.pk in busy and busy_served:
                if lane is not None:
                    lane.make_way()  # a streaming table's pass gives the lane up
                result.deferred.append(reflection)  # the next round comes at once, after a new probe
                continue
            if not acquire(reflection, owner):
                logger.info("reflection %s is held by another worker; skipped", reflection.pk)
                result.held.append(reflection)
                continue
            STATS.reflection_passes += 1
            started = time.monotonic()
            if scheduler is not None:
                scheduler.ran(reflection, busy=reflection.pk in busy)
                busy_served = busy_served or reflection.pk in busy
            if lane is not None and reflection.pk in busy:
                mine = reflection.pk == streamed
                lane.submit(reflection, owner, stop, STREAM_SLICE if mine else max_seconds_each,
                            linger=linger if mine else 0.0)
                result.deferred.append(reflection)  # at work on the lane
                continue
            if side is not None:
                together.append(reflection)  # run side by side with the next ones
                if len(together) >= side.chunk:
                    run_side_by_side()
                continue
            outcome, exc = _attempt(reflection, owner, stop, max_seconds_each, vouched.get(reflection.source_id))
            _account(reflection, outcome, exc, started, result, owner, purge_interval, scheduler, purger)
        run_side_by_side()
        if purge_interval > 0:  # those whose reflections did not run (idle, or deferred)
            for pk in list(_purge_due):
                if not stop():
                    _purge_if_due(pk, purge_interval, purger)
    finally:
        if single:
            release(owner)
    return result


def not_up_to_date(ids, result: RoundResult) -> list[tuple]:
    """(reflection, message) for each selected active reflection a one-shot run did not
    bring up to date and ``result.failed`` does not name yet: in error, held by another
    worker, stopped before catching up, or with rows set aside as dead letters."""
    from .models import DeadLetter

    named = {r.pk for r, _ in result.failed}
    held = {r.pk for r in result.held}
    unfinished = {r.pk for r in result.unfinished}
    out = []
    query = Reflection.objects.filter(active=True)
    if ids:
        query = query.filter(pk__in=ids)
    for reflection in query.order_by("id"):
        if reflection.pk in named:
            continue
        letters = DeadLetter.objects.filter(reflection=reflection).count()
        if reflection.status == "error":
            out.append((reflection, reflection.last_error or "in error"))
        elif reflection.pk in held:
            out.append((reflection, "held by another worker; not brought up to date by this run"))
        elif reflection.pk in unfinished:
            out.append((reflection, "stopped before catching up"))
        elif letters:
            out.append((reflection, f"{letters} row(s) refused by the destination are set aside as dead "
                                    f"letters (see the admin; retry with --retry-dead-letters)"))
    return out


#: Allocations between two collections of the youngest generation, in a running worker
#: (Python's default: 700); see settle_memory.
GC_THRESHOLD = 10_000


def settle_memory():
    """After a running worker's first round: what it keeps for its lifetime (Django,
    SQLAlchemy, the models and statements of every reflection) goes out of the cyclic
    garbage collector's way (``gc.freeze``).  At 1,000 tables each full collection
    otherwise walked all of it, a pause of 250-450 ms for every thread, every few
    seconds under load: a quiet table's change waited for them.  The descriptions cached
    so far are dropped first (described again when needed): frozen, one evicted later
    would never be collected."""
    forget_descriptions()
    gc.collect()
    gc.freeze()
    # Collections come after 700 allocations by default: under load each batch's rows
    # (tens of thousands of objects, alive while the batch is) were walked again and
    # again.  Fewer, later collections walk them less often; cyclic garbage waits longer.
    previous = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *previous[1:])
    return previous


def run(ids=None, interval: float | None = None, stop_event: threading.Event | None = None) -> RoundResult:
    """Run once (``interval`` None) or until stopped, sleeping ``interval`` seconds when idle."""
    stop_event = stop_event or threading.Event()
    owner = new_worker_id()
    forget_descriptions()
    waker = Waker()
    # a running worker skips idle reflections between full passes; a one-shot run checks all
    scheduler = None if interval is None else Scheduler(float(conf.get("FULL_PASS_INTERVAL")),
                                                         int(conf.get("BATCH_SIZE")))
    lane = None if interval is None else BusyLane()
    side = None if interval is None else SideBySide(int(conf.get("PASS_THREADS")))
    purger = None if interval is None else Purger()
    # a running worker purges at most every PURGE_INTERVAL; a one-shot run after each
    # pass, and it tries every selected reflection, even one waiting out a back-off
    purge_interval = 0.0 if interval is None else float(conf.get("PURGE_INTERVAL"))
    result = RoundResult()
    settled = False
    try:
        while True:
            result = run_round(ids, stop=stop_event.is_set, owner=owner, backoff=interval is not None,
                               purge_interval=purge_interval, scheduler=scheduler, quiet_sources=waker.quiet,
                               lane=lane, purger=purger, side=side)
            STATS.passes += 1
            STATS.last_pass_at = time.time()
            if interval is not None and not settled:
                settled = settle_memory()
            forget_stale_descriptions()
            if interval is None:
                # one-shot: keep going until every reflection has caught up (a pass
                # yields after a while so that reflections take turns)
                total = result
                while result.unfinished and not result.failed and not stop_event.is_set():
                    result = run_round([r.pk for r in result.unfinished], stop=stop_event.is_set, owner=owner)
                    total.events += result.events
                    total.rows += result.rows
                    total.failed += result.failed
                    total.held += result.held
                total.unfinished = result.unfinished
                total.failed += not_up_to_date(ids, total)
                return total
            if stop_event.is_set():
                return result
            if result.events == 0 and not result.deferred and lane.running is None:
                # idle: sleep until a source notifies a commit, or the interval ends
                waker.wait(source_databases(ids), interval, stop_event)
            else:
                waker.busy()
                if result.events == 0 and lane.running is not None:
                    # a busy slice at work and nothing else: probe again soon (a quiet
                    # table's change waits for this pause, not for the slice)
                    lane.wait(min(interval, BUSY_POLL))
            if stop_event.is_set():
                return result
    finally:
        if lane is not None:
            lane.close(result, owner, purge_interval, scheduler, purger)
        if side is not None:
            side.close()
        if settled:
            gc.unfreeze()  # the process goes on (embedded, tests): collected as before
            gc.set_threshold(*settled)
        if purger is not None:
            purger.close()
        waker.close()
        release(owner)
