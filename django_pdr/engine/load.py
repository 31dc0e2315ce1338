"""The initial load (and a resync): key-ordered chunks of the source's current rows,
each committed with its checkpoint.

A destination that already holds rows (a resync) stays whole while it reloads: the
chunks go to a *shadow* table (the mapped columns and the key, nothing else), and one
last destination transaction replaces the rows of the destination with the shadow's
(DELETE, then INSERT … SELECT) and moves the checkpoint on.  Readers see the old rows
until that commit, then the new ones (MVCC on PostgreSQL and InnoDB; SQLite's readers
see one or the other).  The destination table itself is kept, with its indexes, grants,
triggers, views and extra columns.  An empty destination (the first load) is loaded in
place, as are tables a custom statement writes and fan-in tables (which only lose this
reflection's columns, set to NULL).
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor, wait

import sqlalchemy as sa

from .. import keycodec
from ..connections import begin
from ..errors import describe as describe_error
from ..schema import create_table, reflect_table
from .budget import BatchTooLarge, row_bytes
from .checkpoint import StaleCheckpoint, committed_asynchronously
from .positions import STREAM
from .textpath import TextPathFailed
from .visibility import Position

logger = logging.getLogger("django_pdr.reflect")


#: Most rows of a load chunk read as Python values (LOAD_CHUNK_SIZE is larger by default:
#: a text-path chunk is held as its text, a few times smaller than its rows as objects).
PYTHON_LOAD_CHUNK = 10000

#: A text chunk of at least this many rows is written by two destination connections at
#: once where the engine allows it (Dialect.load_writers; see Loading._commit_halves).
SPLIT_LOAD_ROWS = 5000


class Loading:
    """The initial load and resync.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares.  A text chunk's
    successor is read while it commits (``_prefetch_chunk``): the runner calls
    ``drop_prefetch`` when the load loop ends."""

    _prefetcher = None

    def _load_python(self, src, after):
        """The next chunk as Python rows: (rows read, last key or None at the end, upserts, filtered).
        At most LOAD_CHUNK_SIZE rows (and PYTHON_LOAD_CHUNK), as many as the byte budget
        allows (budget.py), read through a streaming cursor: the chunk ends early, after the
        row that passes BATCH_BYTES."""
        limit = self.budget.rows(min(self.load_chunk, PYTHON_LOAD_CHUNK))
        query = self.mapping.select(self.source).order_by(*self.source_key_columns).limit(limit)
        if after is not None:
            query = query.where(self.src_dialect.key_after(self.source_key_columns, after))
        rows, size, largest, full = [], 0, 0, False
        columns, parts = self._stream(src, query)
        try:
            for part in parts:
                for row in part:
                    rows.append(dict(zip(columns, row)))
                    bytes_ = row_bytes(row)
                    size, largest = size + bytes_, max(largest, bytes_)
                    if size > self.budget.batch_bytes and len(rows) < limit:
                        full = True  # the chunk ends here; the next one starts after this row
                        break
                if full:
                    break
        finally:
            parts.close()
            src.rollback()
        (self.budget.surprised if full else self.budget.observed)(largest)
        keyed = [(tuple(r[n] for n in self.source_key), r) for r in rows]
        upserts, filtered = self._dest_rows(keyed)
        last = keyed[-1][0] if full or len(rows) >= limit else None
        return len(rows), last, upserts, filtered

    def _load_text(self, src, after):
        """The next chunk as text: (rows copied, last key or None at the end, text), or None
        (also when its rows would not fit the byte budget: the Python path reads them)."""
        limit = self.budget.rows(self.load_chunk)
        if not self.budget.fits(limit):
            return None
        columns = self.source_key_columns
        bounds = [self.src_dialect.key_after(columns, after)] if after is not None else []
        upper = src.execute(sa.select(*columns).where(*bounds).order_by(*columns)
                            .offset(limit - 1).limit(1)).first()
        src.rollback()
        if upper is not None:
            upper = tuple(upper)
            bounds.append(sa.not_(self.src_dialect.key_after(columns, upper)))
        try:
            binary = bool(self.binary_types)
            out = self._copy_out(src, [self._text_rows_query(*bounds, plain=binary)], self.budget.cap(limit),
                                 binary=binary)
        except BatchTooLarge as exc:
            self.budget.surprised(exc.largest)
            return None
        if out is None:
            return None
        return out[0].count, upper, out[0]

    def _load_state(self, state, count, last):
        new_state = dict(state)
        new_state["loaded"] = state.get("loaded", 0) + count
        if last is None and state.get("shadow"):
            return dict(new_state, swap=True)  # committed with the last chunk: the swap follows
        if last is None:
            return {"phase": STREAM, "pos": state["pos"], "loaded": new_state["loaded"], "inc": self.incarnation}
        new_state["after"] = keycodec.encode_key(last)
        return new_state

    def load_chunk_once(self, src, dst, state: dict, expected: dict | None) -> dict:
        """Copy the next key-ordered chunk of source rows (or swap the shadow in); return the
        new state."""
        if state.get("swap"):
            return self._swap_in(src, dst, state, expected)
        after = keycodec.decode_key(state.get("after"))
        if after is None and not state.get("shadow"):
            state, expected = self._start_load(dst, state, expected)
        shadow = self._shadow_dml() if state.get("shadow") else None
        saved = self.dest, self.dest_key_columns
        if shadow is not None:  # the appliers write the shadow table for this chunk
            self.dest, self.dest_key_columns = shadow, [shadow.c[n] for n in self.mapping.dest_key]
        try:
            new_state = self._load_one_chunk(src, dst, state, expected, after)
        finally:
            self.dest, self.dest_key_columns = saved
        if new_state.get("swap"):  # the source is exhausted: swap the shadow in
            return self._swap_in(src, dst, new_state, new_state)
        return new_state

    _prefetch = None  # (the key the chunk starts after, encoded; future of _load_text's result)

    def _prefetch_chunk(self, src, after):
        """Start reading the chunk after key ``after`` (as text) in a helper thread, while
        the current chunk commits: loads alternate reading and writing no more."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-load")
        self._prefetch = (keycodec.encode_key(after), self._prefetcher.submit(self._load_text, src, after))

    def drop_prefetch(self):
        """Wait for a chunk read ahead and forget it (before ``src`` is used or closed)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            try:
                prefetch[1].result()
            except Exception:
                pass
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
            self._prefetcher = None

    def _prefetched(self, after):
        """The chunk read ahead for ``after``, or None (none, another key, or its read failed:
        the caller reads it again, where a failure is handled)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is None:
            return None
        key, future = prefetch
        try:
            found = future.result()
        except Exception as exc:
            logger.debug("%s: a load chunk read ahead failed (%r); reading it again", self.reflection, exc)
            return None
        return found if key == keycodec.encode_key(after) else None

    def _load_one_chunk(self, src, dst, state, expected, after):
        use_text = self._use_text()
        text = self._prefetched(after)  # (always: the source connection is free after it)
        if not use_text:
            text = None
        elif text is None:
            text = self._load_text(src, after)
        if text is not None:
            count, last, rows_text = text
            new_state = self._load_state(state, count, last)
            if last is not None:
                self._prefetch_chunk(src, last)
            try:
                # the load emptied its target (or made a shadow) and reads keys in order, one
                # range after another: no key of this chunk is there (fan-in keeps rows)
                fresh = not self.partners and not self.statement
                if not (fresh and self._commit_halves(dst, expected, new_state, rows_text)):
                    self._commit_text(dst, expected, new_state, rows_text, marked=False, fresh=fresh,
                                      asynchronous=True)
                return new_state
            except TextPathFailed:
                self.drop_prefetch()  # the source connection is the Python path's now
                if rows_text.fmt == "binary":
                    self.describe_again()  # (the check of the column types may be what failed)
        count, last, upserts, filtered = self._load_python(src, after)
        new_state = self._load_state(state, count, last)
        self._commit(dst, expected, new_state, upserts, [], filtered, loading=True)
        if last is None:  # the load is complete: its events follow from the start position
            self._confirm_capture(src, Position.from_json(state["pos"]))
        return new_state

    # -- a chunk written by two destination connections at once ------------------------
    # COPY into an indexed table is the destination server's work, one core per
    # connection: where the engine allows (Dialect.load_writers), a chunk's first half is
    # written by a second connection (a helper thread) while this one writes the second.
    # The first half's transaction fences (locks the checkpoint row, checks it did not
    # move) and commits first; this one then moves the checkpoint and commits — only once
    # the first half is committed, so a checkpoint never covers rows that are not there.
    # A crash between the two leaves rows past the checkpoint: the chunk is then done
    # again, its COPY fails on them and it is redone by upserts (the Python path), and
    # the events since the load began (replayed after it) delete what the source deleted.

    _helper = None  # (second destination connection, its thread), or False: none this load
    #: Seconds the first half's transaction waits for a lock before the chunk takes the
    #: Python path: its keys are disjoint from the second half's, so it waits only where
    #: two source keys are one destination key (the halves would wait on each other).
    HALF_LOCK_WAIT = 2.0

    def _load_helper(self, dst):
        """(the second connection's opening, its thread), or None: opened in that thread,
        while this one goes on (a connection takes a few milliseconds to open)."""
        if self._helper is None:
            self._helper = False
            pool = dst.engine.pool
            if self.dst_dialect.load_writers > 1 and isinstance(pool, sa.pool.QueuePool) \
                    and pool.checkedout() < pool.size():
                thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-half")
                self._helper = thread.submit(dst.engine.connect), thread
        return self._helper or None

    def drop_helper(self):
        helper, self._helper = self._helper, None
        if helper:
            opening, thread = helper
            thread.shutdown(wait=True)
            if opening.exception() is None:
                opening.result().close()

    def _without_helper(self, opening, thread) -> bool:
        """The second connection could not open: this load's chunks are written by one."""
        logger.debug("%s: no second destination connection (%r); chunks written by one",
                     self.reflection, opening.exception())
        self._helper = False
        thread.shutdown(wait=False)
        return False

    def _write_first_half(self, opening, table, expected, text, asynchronous):
        names, keys, values = self.mapping.dest_columns, self.mapping.dest_key, self.mapping.value_columns
        conn = opening.result()  # (opened by this thread before: at once)
        with begin(conn):
            self.dst_dialect.bound_lock_waits(conn, self.HALF_LOCK_WAIT)
            if asynchronous:
                self.dst_dialect.commit_asynchronously(conn)
            self.checkpoint.fence(conn, expected)
            self.dst_dialect.apply_copied(conn, table, names, keys, values, text, fresh=True)

    def _commit_halves(self, dst, expected, new_state, text) -> bool:
        """Write a fresh chunk by two connections (see above): False when it cannot be
        split (the caller writes it whole); TextPathFailed when the destination refused a
        half (the chunk is redone by the Python path, which reads it again)."""
        if text.fmt not in ("copy", "binary") or not isinstance(text.data, list) or text.count < SPLIT_LOAD_ROWS:
            return False
        helper = self._load_helper(dst)
        if helper is None:
            return False
        opening, thread = helper
        if opening.done() and opening.exception() is not None:
            return self._without_helper(opening, thread)
        middle = len(text.data) // 2
        first = dataclasses.replace(text, data=text.data[:middle], count=middle)
        second = dataclasses.replace(text, data=text.data[middle:], count=text.count - middle)
        asynchronous = self._asynchronous()
        if asynchronous:  # (counted before: a make_durable after this covers both commits)
            committed_asynchronously(self.reflection.destination_id)
        names, keys, values = self.mapping.dest_columns, self.mapping.dest_key, self.mapping.value_columns
        half = thread.submit(self._write_first_half, opening, self.dest, expected, first, asynchronous)
        try:
            with begin(dst):
                if asynchronous:
                    self.dst_dialect.commit_asynchronously(dst)
                self.dst_dialect.apply_copied(dst, self.dest, names, keys, values, second, fresh=True)
                half.result()  # the first half committed (or its error ends this transaction)
                if not self.checkpoint.advance(dst, expected, new_state):
                    self.checkpoint.fence(dst, expected)
                    self.checkpoint.write(dst, new_state)
        except StaleCheckpoint:
            raise
        except Exception as exc:
            wait([half])  # (this transaction's error: the first half ends before anything else)
            if opening.exception() is not None:  # no second connection: the chunk is written whole
                return self._without_helper(opening, thread)
            error = exc if half.exception() is None else half.exception()
            if isinstance(error, StaleCheckpoint):
                raise error from None
            if getattr(error, "connection_invalidated", False) or getattr(exc, "connection_invalidated", False) \
                    or not isinstance(error, sa.exc.DBAPIError):
                raise
            logger.info("%s: destination refused a load chunk's half (%s); redoing the chunk with Python rows",
                        self.reflection, describe_error(error))
            raise TextPathFailed() from error
        return True

    def _start_load(self, dst, state, expected):
        """Before the first chunk: start from a clean slate — rows deleted at the source while no
        checkpoint existed must not survive the load.  A destination with rows is left as it is
        until the swap (the chunks go to a new shadow table); a table shared with other
        reflections (fan-in) only loses this reflection's own columns."""
        shadow = None
        if not self.statement and not self.partners:
            has_rows = dst.execute(sa.select(sa.literal(1)).select_from(self.dest).limit(1)).first() is not None
            dst.rollback()
            if has_rows:
                shadow = self._shadow_ddl(dst)
                self._drop_shadow(dst)  # a shadow of an earlier, interrupted resync
                create_table(dst, shadow)
        state = dict(state, shadow=shadow.name) if shadow is not None else state
        with begin(dst):
            self.checkpoint.fence(dst, expected)
            if shadow is not None or self.statement:
                pass  # the shadow replaces the rows at the end; a custom statement owns its target
            elif self.partners:
                values = {c: None for c in self.mapping.value_columns}
                if values:
                    dst.execute(sa.update(self.dest).values(**values))
            else:
                dst.execute(sa.delete(self.dest))
            self.checkpoint.write(dst, state)
        return state, state

    def _shadow_name(self) -> str:
        return f"pdr_shadow_{self.reflection.uid.hex[:12]}"

    def _shadow_ddl(self, dst) -> sa.Table:
        """The shadow table to create: the mapped columns with the destination's own types (as
        reflected: ``self.dest`` may carry binding types, such as raw SQLite values), and the key."""
        live = reflect_table(dst, self.dest.schema, self.dest.name, self.reflection.destination.describe())
        dst.rollback()
        key = set(self.mapping.dest_key)
        columns = [sa.Column(n, live.c[n].type, primary_key=n in key, autoincrement=False, nullable=n not in key)
                   for n in self.mapping.dest_columns]
        return sa.Table(self._shadow_name(), sa.MetaData(), *columns, schema=self.dest.schema)

    def _shadow_dml(self) -> sa.Table:
        """The shadow as the appliers write it: the destination's binding types, the shadow's name."""
        return sa.Table(self._shadow_name(), sa.MetaData(),
                        *[sa.Column(n, self.dest.c[n].type, primary_key=n in self.mapping.dest_key)
                          for n in self.mapping.dest_columns], schema=self.dest.schema)

    def _drop_shadow(self, dst):
        with begin(dst):
            self._shadow_dml().drop(dst, checkfirst=True)

    def _swap_in(self, src, dst, state: dict, expected: dict) -> dict:
        """One destination transaction: the destination's rows become the shadow's, and the
        checkpoint moves on to streaming; then the shadow is dropped (in the same transaction
        where DDL is transactional)."""
        self._confirm_capture(src, Position.from_json(state["pos"]))
        shadow = self._shadow_dml()
        names = list(self.mapping.dest_columns)
        done = {"phase": STREAM, "pos": state["pos"], "loaded": state.get("loaded", 0), "inc": self.incarnation}
        with begin(dst):
            self.checkpoint.fence(dst, expected)
            dst.execute(sa.delete(self.dest))
            dst.execute(sa.insert(self.dest).from_select(names, sa.select(*[shadow.c[n] for n in names])))
            self.checkpoint.write(dst, done)
            if self.dst_dialect.transactional_ddl:
                shadow.drop(dst)
        if not self.dst_dialect.transactional_ddl:
            self._drop_shadow(dst)  # a crash before this leaves it to the next resync's clean-up
        logger.info("%s: resync complete: the destination's rows replaced by the %d rows loaded",
                    self.reflection, done["loaded"])
        return done
