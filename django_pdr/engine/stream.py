"""The event stream: read a batch of visible events, read their keys' current rows
(as text or Python rows), commit them with the checkpoint; pipelined, so that batch N+1
is read while batch N commits.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


import sqlalchemy as sa

from .. import keycodec
from ..dialects.base import OP_TRUNCATE, TextRows
from .budget import BatchTooLarge
from .positions import STREAM
from .textpath import TextPathFailed
from .visibility import Position

logger = logging.getLogger("django_pdr.reflect")

#: Seconds between two reads of a lingering pass that found nothing new (see Streaming.stream),
#: doubled after each read that found nothing, up to LINGER_PAUSE_MAX: a table changing
#: all the time is read again at once, one that went quiet a few times only.
LINGER_PAUSE = 0.001
LINGER_PAUSE_MAX = 0.016
#: A lingering pass records its progress (counters, lease) at most this often.
PROGRESS_SECONDS = 1.0


@dataclass
class Batch:
    """A batch read from the source, ready to commit with its checkpoint.

    Either Python rows (``upserts`` as (key, destination row) pairs, ``deletes``,
    ``removals``) or, on the text path, ``text``: one row per key in the engines' own
    text form, flagged "gone" or not.  ``keys`` are the source keys of the batch's events
    (None for a batch read for the text path: ``python_batch`` reads them if needed)."""

    state: dict
    events: int
    keys: list = None
    upserts: list = ()
    deletes: list = ()
    removals: list = ()
    text: TextRows | None = None
    window: tuple | None = None  # (cursor, last event id, ids found in gaps): the events the batch covers
    truncate: bool = False  # the source table was emptied among these events
    # the read found the end of the events and left no gap open: every event visible when
    # it was read is in it, so the pass is caught up once it commits (a later event lies above
    # its cursor, where the next probe finds it; an open gap would not be idle either)
    last: bool = False


class Streaming:
    """The event stream: read, prepare and commit batches.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    _planner = _planner_src = _planned = _planner_engine = None

    @contextlib.contextmanager
    def _planning(self, src):
        """For one ``stream``: a thread and a source connection of their own that read the
        events of batch N+2 while the rows of batch N+1 are read (and batch N commits).
        Each batch's rows are still read after its events, and the rows of successive
        batches in successive snapshots (one reading thread): only the event reads run
        ahead.  Opened at the first full batch (a pass that finds a few events never
        needs them), and only from the connections the pool keeps (never its overflow,
        which other passes may need): without, events are read in turn."""
        self._planner_engine = getattr(src, "engine", None)
        try:
            yield
        finally:
            planner, conn = self._planner, self._planner_src
            self._planner = self._planner_src = self._planned = self._planner_engine = None
            if planner is not None:
                planner.shutdown(wait=True)  # an event read under way ends first
            if conn is not None:
                conn.close()

    def _planner_ready(self) -> bool:
        if self._planner is None and self._planner_engine is not None:
            engine, self._planner_engine = self._planner_engine, None  # one try per stream
            pool = engine.pool
            if not isinstance(pool, sa.pool.QueuePool) or pool.checkedout() >= pool.size():
                return False
            try:
                self._planner_src = engine.connect()
            except Exception as exc:
                logger.debug("%s: no second source connection (%r); events read in turn", self.reflection, exc)
                return False
            self._planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-events")
        return self._planner is not None

    def python_batch(self, src, batch: Batch, cap: int | None = None) -> Batch:
        """The same batch as Python rows (after the text path failed, or a key got held);
        ``cap``: bytes its rows may take before BatchTooLarge (see read_batch)."""
        keys = batch.keys
        if keys is None:  # read without them (text path): the keys of the batch's events
            keys = self.reader.window_keys(src, *batch.window)
        upserts, deletes, removals = self.keyed_rows(src, keys, batch.window, cap) if keys else ([], [], [])
        return Batch(batch.state, batch.events, keys, upserts, deletes, removals, window=batch.window,
                     truncate=batch.truncate, last=batch.last)

    def read_batch(self, src, state: dict) -> Batch | None:
        """Read and prepare the next batch on the source side only (no write anywhere),
        or None when nothing is new.  At most BATCH_SIZE events, and as many as the byte
        budget allows (budget.py): a batch whose rows pass it is read again, shorter."""
        limit = self.budget.rows(self.batch_size)
        while True:
            try:
                return self._read_batch(src, state, limit)
            except BatchTooLarge as exc:
                self.budget.surprised(exc.largest)
                smaller = self.budget.smaller(limit, exc.events)
                logger.info("%s: %s; reading %d events instead of %d", self.reflection, exc, smaller, limit)
                limit = smaller

    def _read_events(self, src, pos: dict, limit: int, text: bool):
        """(events, new position, read_all): the events after ``pos`` (see EventReader.read),
        then the capture confirmed.  The text path reads the batch's keys on the source,
        with its rows: its events are read without them (ids and operations only)."""
        position = Position.from_json(pos)
        # statements read what is committed when each starts (see visibility.py): no
        # transaction around them, where the driver would spend round trips on one
        with self.src_dialect.statement_transactions(src):
            events, new_position = self.reader.read(src, position, limit, keys=not text)
            read_all = self.reader.read_all
            self._confirm_capture(src, position, self.reader.confirmed)
        return events, new_position, read_all

    def _plan_next(self, pos: dict, limit: int, text: bool):
        """Read the events of the batch after ``pos`` now, on the planner's own connection,
        while this batch's rows are read (see stream)."""
        if self._planner_ready():
            key = (json.dumps(pos, sort_keys=True), limit, text)
            self._planned = (key, self._planner.submit(self._read_events, self._planner_src, pos, limit, text))

    def _take_plan(self, pos: dict, limit: int, text: bool):
        """The events read ahead for ``pos`` (see _plan_next), or None: none was, or for
        another position, limit or path (the batch before was read again, shorter)."""
        planned, self._planned = self._planned, None
        if planned is None:
            return None
        key, future = planned
        try:
            found = future.result()  # (never two event reads at once)
        except Exception as exc:  # read again here, where a failure is handled
            logger.debug("%s: events read ahead failed (%r); reading them again", self.reflection, exc)
            return None
        return found if key == (json.dumps(pos, sort_keys=True), limit, text) else None

    def _read_batch(self, src, state: dict, limit: int) -> Batch | None:
        position = Position.from_json(state["pos"])
        text = self._use_text()
        found = self._take_plan(state["pos"], limit, text)
        events, new_position, read_all = found or self._read_events(src, state["pos"], limit, text)
        if not events and new_position.to_json() == position.to_json():
            return None
        # events by index (id, key, op): plain tuples when read without keys
        truncated = sum(e[2] == OP_TRUNCATE for e in events)
        truncate = truncated > 0
        keys = None if text else list(dict.fromkeys(e.key for e in events if e.op != OP_TRUNCATE))
        new_state = {"phase": STREAM, "pos": new_position.to_json(), "loaded": state.get("loaded", 0),
                     "inc": self.incarnation}
        batch = Batch(new_state, len(events), keys, truncate=truncate, last=read_all and not new_position.gaps)
        if not batch.last:
            self._plan_next(new_state["pos"], limit, text)
        changes = len(keys) if keys is not None else len(events) - truncated
        if not changes:
            batch.keys = []
            return batch
        cursor = position.cursor
        gap_ids = {e[0] for e in events if e[0] <= cursor}
        batch.window = (cursor, max(e[0] for e in events), gap_ids)
        cap = self.budget.cap(limit)
        try:
            # (without keys, the events bound the number of rows from above)
            if text and not truncate and self.budget.fits(changes):
                # a small batch is written without a staging table anyway: the plainer query
                split = changes > self.dst_dialect.splits_new_rows_above
                query, values = self._text_batch(*batch.window, split_new=split)
                text = self._copy_out(src, [query], cap, values)
                if text is not None:
                    batch.text = text[0]
                    return batch
            return self.python_batch(src, batch, cap)
        except BatchTooLarge as exc:
            exc.events = len(events)
            raise

    def commit_batch(self, dst, state: dict, batch: Batch) -> tuple[dict, int, int]:
        """Write a prepared batch with its checkpoint; return (state, events, rows written).
        Raises TextPathFailed when a text batch must be redone as Python rows."""
        new_state, count = batch.state, batch.events
        if batch.text is not None:
            if not self._use_text():  # a key became held since the batch was read
                raise TextPathFailed()
            return new_state, count, self._commit_text(dst, state, new_state, batch.text, marked=True)
        upserts, deletes, removals = batch.upserts, batch.deletes, batch.removals
        if self.held_keys:
            # per-key order: a dead-lettered key waits until its retry applies the current row
            upserts = [(k, row) for k, row in upserts if keycodec.key_hash(k) not in self.held_keys]
            deletes = [k for k in deletes if keycodec.key_hash(k) not in self.held_keys]
            removals = [k for k in removals if keycodec.key_hash(k) not in self.held_keys]
        written = self._commit(dst, state, new_state, upserts, deletes, removals, truncate=batch.truncate)
        return new_state, count, written

    def batch_once(self, src, dst, state: dict) -> tuple[dict, int, int]:
        """Apply the next batch of events; return (state, events read, rows written)."""
        batch = self.read_batch(src, state)
        if batch is None:
            return state, 0, 0
        try:
            return self.commit_batch(dst, state, batch)
        except TextPathFailed:
            return self.commit_batch(dst, state, self.python_batch(src, batch))

    def stream(self, src, dst, state, result, stop, deadline, linger: float = 0.0):
        """Apply batches until caught up, stopped or past ``deadline``.

        Pipelined: while batch N commits on the destination (this thread), batch N+1 is
        read from the source (a helper thread; reads only, from the position batch N
        ends at).  Commits stay strictly in order, each with its checkpoint.  Not while
        rows are large (a batch holds a few of them): two batches would be held at once.

        ``linger`` (a running worker's streaming table, see worker.py): once caught up, keep
        reading (LINGER_PAUSE and after) until no event came for ``linger`` seconds (or
        ``deadline``): a table changing all the time is applied as its changes commit,
        without a round of the worker between two batches.  Progress is then recorded at
        most every PROGRESS_SECONDS (the checkpoint itself is written with every batch)."""
        idle_since = None  # lingering: caught up since then
        empty = 0  # lingering: reads in a row that found nothing

        def lingering():  # only a pass that applied events waits for more
            now = time.monotonic()
            return (linger > 0 and result.batches > 0 and not stop() and now - idle_since < linger
                    and (deadline is None or now < deadline))

        saved_at = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-read") as pool, self._planning(src):
            future = pool.submit(self.read_batch, src, state)
            while True:
                batch, future = future.result(), None
                if batch is None:
                    idle_since = time.monotonic() if idle_since is None else idle_since
                    if lingering():
                        empty += 1
                        time.sleep(min(LINGER_PAUSE * 2 ** empty, LINGER_PAUSE_MAX))
                        future = pool.submit(self.read_batch, src, state)
                        continue
                    result.caught_up = True
                    return state
                empty = 0
                last = batch.last
                more = not last and not stop() and (deadline is None or time.monotonic() < deadline)
                # lingering, the next read starts while this batch commits too: it finds the
                # changes committed meanwhile, or nothing
                ahead = (more or (last and linger > 0 and not stop())) and not self.budget.large_rows()
                if ahead:
                    future = pool.submit(self.read_batch, src, batch.state)
                try:
                    state, events, rows = self.commit_batch(dst, state, batch)
                except TextPathFailed:
                    if ahead:
                        future.result()  # wait: the read-ahead holds the source connection
                    state, events, rows = self.commit_batch(dst, state, self.python_batch(src, batch))
                if more and not ahead:
                    del batch  # committed: let its rows go before the next are read
                    future = pool.submit(self.read_batch, src, state)
                result.position_changed = True
                result.events += events
                result.rows += rows
                result.batches += 1
                # the pass's closing write records what is not recorded yet (runner.py)
                self.unsaved = (self.unsaved[0] + events, self.unsaved[1] + rows)
                if last:
                    # no second read to find nothing (see Batch.last), unless lingering
                    idle_since = time.monotonic()
                    if not lingering():
                        if future is not None:
                            future.result()  # a read-ahead: nothing it read is used
                        result.caught_up = True
                        return state
                else:
                    idle_since = None
                if time.monotonic() - saved_at >= (PROGRESS_SECONDS if linger > 0 else 0.0):
                    events, rows = self.unsaved
                    self._save_progress(status="running", state=state, events=events, rows=rows)
                    self.unsaved, saved_at = (0, 0), time.monotonic()
                if last:  # lingering
                    del batch
                    if future is None:
                        time.sleep(LINGER_PAUSE)
                        future = pool.submit(self.read_batch, src, state)
                    continue
                if not more:
                    return state
