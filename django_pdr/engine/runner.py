"""One pass of a reflection: check the capture, continue from the destination's checkpoint
(or load), retry the dead letters asked for, then stream batches of events.

``ReflectionRunner`` only orchestrates; each job lives in its own module of this package
(``docs/concepts.md``, "Architecture"): describe.py, positions.py, load.py, stream.py,
apply.py, textpath.py, checkpoint.py, visibility.py.  A crash before a batch's commit
repeats nothing and loses nothing: the next pass starts from the checkpoint the
destination holds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.db.models import F
from django.utils import timezone

from .. import conf, keycodec
from ..capture import has_key_arrays
from ..capture import plan as capture_plan
from ..connections import begin, connect
from ..deadletters import held_keys, requested, resolve
from ..errors import ConfigurationError, ConnectionFailed, TableNotFound
from ..errors import describe as describe_error
from ..maintenance import measure, record_sample
from .apply import Applying
from .budget import Budget
from .checkpoint import make_durable
from .describe import _PREPARED, Describing
from .load import Loading
from .positions import LOAD, STREAM, CaptureChanged, Reconciling
from .stream import Streaming
from .textpath import TextPath
from .visibility import EventReader, Position

logger = logging.getLogger("django_pdr.reflect")


class LeaseLost(Exception):
    """This worker's lease on the reflection expired and another worker holds it."""


@dataclass
class PassResult:
    events: int = 0
    rows: int = 0
    batches: int = 0
    loaded: int = 0
    caught_up: bool = False
    position_changed: bool = False


class ReflectionRunner(Describing, Reconciling, Loading, Streaming, TextPath, Applying):
    """Carries out the work of one Reflection; built fresh for each pass."""

    def __init__(self, reflection, owner: str | None = None, vouched=None):
        self.reflection = reflection
        self.owner = owner  # lease holder; progress writes renew the lease
        # the registry row as a running worker's probe found it, with every row trigger in
        # place: a streaming pass then skips its own check of the capture (see _run_checked)
        self.vouched = vouched
        self.unsaved = (0, 0)  # events and rows committed whose progress is not recorded yet
        self.linger = 0.0  # see Streaming.stream
        self.source_table = reflection.source
        self.batch_size = reflection.batch_size or int(conf.get("BATCH_SIZE"))
        self.load_chunk = int(conf.get("LOAD_CHUNK_SIZE"))
        self.budget = Budget(int(conf.get("BATCH_BYTES")), key=reflection.pk)  # bytes per batch
        self.held_keys = set()  # keys waiting on a dead letter (read at the start of a pass)
        self._window_join_refused = False
        self.incarnation = None  # of the event table this pass reads (from the source's registry)

    def run(self, stop=lambda: False, max_seconds: float | None = None, linger: float = 0.0) -> PassResult:
        """Work until caught up (or stopped / out of time); ``linger``: see Streaming.stream."""
        self.linger = linger
        result = PassResult()
        r = self.reflection
        started = time.monotonic()
        with connect(self.source_table.database) as src, connect(r.destination) as dst:
            self._dst = dst  # (see _save_progress)
            try:
                self.prepare_cached(src, dst)
                return self._run(src, dst, result, stop, max_seconds, started)
            except BaseException:
                _PREPARED.pop(r.pk, None)  # describe the tables afresh next time
                raise

    def _run(self, src, dst, result, stop, max_seconds, started):
        try:
            return self._run_checked(src, dst, result, stop, max_seconds, started)
        except CaptureChanged:
            # reinstalled or purged under this pass: the checks at the start tell which
            self.vouched = None
            return self._run_checked(src, dst, result, stop, max_seconds, started)

    def _run_checked(self, src, dst, result, stop, max_seconds, started):
        r = self.reflection
        stored = self.read_state(dst)
        # A running worker's probe of this round found every row trigger in place (checked
        # at most TRIGGER_CHECK_SECONDS ago, as for the reflections it skips) and this
        # registry row.  When it agrees with the checkpoint, the pass skips its own check
        # of the capture: every read below is confirmed against the registry
        # (_confirm_capture), and reinstalled or purged meanwhile, the pass starts again
        # with its own check.  A probe never decides a resync: disagreeing, it is not used.
        registered = self.vouched if self._agrees(stored, self.vouched) else self._check_capture(src)
        state, starting = self._reconcile(stored, registered)
        self.held_keys = held_keys(r)
        if self.held_keys:
            self.retry_dead_letters(src, dst, state)
            self.held_keys = held_keys(r)
        try:
            state, starting = self._loop(src, dst, state, starting, result, stop, max_seconds, started)
        finally:
            self.drop_prefetch()  # a load chunk read ahead, before the source connection goes
            self.drop_helper()  # the load's second destination connection
        return self._record(src, state, starting, result)

    def _loop(self, src, dst, state, starting, result, stop, max_seconds, started):
        """Load chunks, then stream batches, until caught up, stopped or out of time."""
        r = self.reflection
        while not stop():
            if state["phase"] == LOAD:
                if starting:
                    self._save_progress(status="loading", state=state)  # holds purging back
                    starting = False
                stored = self.read_state(dst)
                copied_before = state.get("loaded", 0)
                state = self.load_chunk_once(src, dst, state, stored)
                result.loaded = state.get("loaded", 0)
                self._save_progress(status="loading" if state["phase"] == LOAD else "running",
                                    state=state, rows=result.loaded - copied_before)
                logger.info("%s: initial load, %d rows copied", r, result.loaded)
                continue
            deadline = None if max_seconds is None else started + max_seconds
            state = self.stream(src, dst, state, result, stop, deadline, linger=self.linger)
            break
        return state, starting

    def _record(self, src, state, starting, result):
        """The pass's closing write: progress, lag and a sample (nothing for an idle poll)."""
        r = self.reflection
        if not (result.events or result.position_changed or result.loaded or starting
                or r.status != "running" or r.pending_events is None or r.pending_events):
            return result  # an idle poll of a healthy reflection: nothing new to record
        measured = {}
        if state["phase"] == STREAM:
            if result.caught_up and not Position.from_json(state["pos"]).gaps:
                pending, lag = 0, 0.0  # every event visible when read is applied: no query to say so
            else:
                pending, lag = measure(r, src, self.reader)
            measured = {"pending_events": pending, "lag_seconds": lag}
        events, rows = self.unsaved
        self._save_progress(status="running", state=state, events=events, rows=rows, **measured)  # one write
        if measured:
            record_sample(r, measured["pending_events"], measured["lag_seconds"], result.events, result.rows)
        return result

    def _agrees(self, stored: dict | None, vouched) -> bool:
        return (vouched is not None and stored is not None and not self.reflection.resync_requested
                and stored.get("phase") == STREAM and stored.get("inc") == vouched.incarnation
                and Position.from_json(stored["pos"]).horizon >= vouched.purged_through)

    def retry_dead_letters(self, src, dst, state: dict):
        """Re-apply the current source row of each dead letter whose retry was requested."""
        for letter in requested(self.reflection):
            key = keycodec.decode_key(letter.key)
            with begin(dst):
                # the same fence as a batch, and the source read after it: a batch that
                # commits before read an older row than this retry writes
                self.checkpoint.fence(dst, state)
                upserts, deletes, removals = self.keyed_rows(src, [key])
                refused = self._apply_isolating(dst, upserts, deletes, removals)
            if refused:
                resolve(letter, error=describe_error(refused[0][1]))
                continue
            resolve(letter)
            logger.info("%s: dead-lettered row %s applied on retry", self.reflection, list(key))

    _dst = None  # the destination connection of the pass under way

    def _save_progress(self, *, status, state, events=0, rows=0, **measured):
        r = self.reflection
        dialect = getattr(self, "dst_dialect", None)
        position = dict(state.get("pos", {}), i=state.get("inc"))
        if self._dst is not None and dialect is not None and position != r.position:
            # the position recorded below is what purges go by (the same one again, as
            # during a load, allows no more than it did when it was first recorded)
            make_durable(dialect, self._dst, r.destination_id)
        fields = {"status": status, "position": position,
                  "load_progress": {"phase": state["phase"], "loaded": state.get("loaded", 0)}, **measured}
        if events or rows or status == "running":
            fields.update(last_error="", failures=0, next_attempt_at=None)
        if status == "running" and self.held_keys:
            # rows set aside are changes not replicated: an error until they are retried
            fields.update(status="error", last_error=(
                f"{len(self.held_keys)} row(s) refused by the destination are set aside as dead letters: fix "
                f"the cause, then retry them (admin: Retry dead-lettered rows, or pdr-reflect "
                f"--retry-dead-letters)"))
        if events or rows:
            fields.update(last_applied_at=timezone.now(),
                          events_applied=F("events_applied") + events, rows_applied=F("rows_applied") + rows)
        rows_updated = type(r).objects.filter(pk=r.pk)
        if self.owner:
            rows_updated = rows_updated.filter(lease_owner=self.owner)
            fields["lease_expires_at"] = timezone.now() + timezone.timedelta(seconds=float(conf.get("LEASE_SECONDS")))
        if not rows_updated.update(**fields):
            raise LeaseLost(f"{r}: another worker took this reflection over; stopping here.")
        for key, value in fields.items():
            if not hasattr(value, "resolve_expression"):
                setattr(r, key, value)


def event_reader(src, source_table) -> EventReader:
    """A reader of ``source_table``'s events on the connection ``src`` (outside a pass)."""
    capture = capture_plan(src, source_table)
    return EventReader(capture.dialect, capture.event, len(capture.key_names), arrays=has_key_arrays(src, capture))


def pending_events(reflection) -> int | None:
    """Events not yet applied (None when the source cannot be read)."""
    try:
        with connect(reflection.source.database) as src:
            return event_reader(src, reflection.source).count_pending(
                src, Position.from_json(reflection.position or {}))
    except (ConnectionFailed, TableNotFound, ConfigurationError):
        return None
