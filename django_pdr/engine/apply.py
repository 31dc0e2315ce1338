"""Writing rows to the destination on the Python path, inside the checkpoint's fence:
upserts, deletes under the delete policy (fan-in partners keep merged rows), TRUNCATE,
and the isolation of refused rows (savepoints, halving the batch) into dead letters.
Also reading the current source rows of a batch's keys and transforming them.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .. import keycodec
from ..capture import plan as capture_plan
from ..coerce import row_converter
from ..connections import begin, connect
from ..deadletters import record as record_dead_letter
from ..errors import DATA
from ..errors import describe as describe_error
from ..mapping import Mapping
from .budget import BatchTooLarge, row_bytes
from .visibility import chunks

logger = logging.getLogger("django_pdr.reflect")


class PartnerLookup:
    """Another reflection into the same destination table: which destination keys its
    source still has (so that a delete elsewhere keeps the merged row)."""

    def __init__(self, reflection):
        self.reflection = reflection
        self.ready = False

    def _prepare(self, conn):
        capture = capture_plan(conn, self.reflection.source)
        self.source = capture.source
        self.dialect = capture.dialect
        mapping = Mapping.from_reflection(self.reflection, [c.name for c in self.source.columns],
                                          capture.key_names)
        self.by_dest = dict(zip(mapping.dest_key, capture.key_names))
        self.convert = row_converter(self.source, capture.key_names)
        self.ready = True

    def present(self, dest_keys: list[tuple], dest_key_names: list[str]) -> set[tuple]:
        with connect(self.reflection.source.database) as conn:
            if not self.ready:
                self._prepare(conn)
            names = [self.by_dest[n] for n in dest_key_names]
            columns = [self.source.c[n] for n in names]
            keys = [tuple(self.convert(dict(zip(names, k)))[n] for n in names) for k in dest_keys]
            found = set()
            per_chunk = max(1, self.dialect.max_parameters // max(1, len(columns)))
            for part in chunks(keys, per_chunk):
                for row in conn.execute(sa.select(*columns).where(self.dialect.key_filter(columns, part))):
                    found.add(tuple(row))
            conn.rollback()
        # compare in the destination's terms: the values of the same key
        return {tuple(k) for k in found} | {tuple(str(v) for v in k) for k in found}


def _halves(upserts, deletes, removals):
    """Two or three smaller parts of a batch's rows: by kind, or one kind halved."""
    kinds = [list(upserts), list(deletes), list(removals)]
    present = [i for i in (1, 2, 0) if kinds[i]]  # gone keys first, as _apply writes them
    if len(present) > 1:
        return [[rows if i == j else [] for j, rows in enumerate(kinds)] for i in present]
    (i,) = present
    middle = len(kinds[i]) // 2
    return [[half if j == i else [] for j in range(3)] for half in (kinds[i][:middle], kinds[i][middle:])]


class Applying:
    """Python-path writes, refused rows and the source rows of a batch's keys.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    def _execute_upsert(self, dst, table, keys, values, rows):
        if len(rows) > 1 and self.dst_dialect.bulk_upsert(dst, table, keys, values, rows):
            return
        self.dst_dialect.guard_rows(dst, table, rows)
        rows = self.dst_dialect.driver_rows(rows)
        for statement, params in self.dst_dialect.upsert_batches(table, keys, values, rows):
            if params is None:
                dst.execute(statement)
            else:
                dst.execute(statement, params)

    def _commit(self, dst, expected: dict | None, new_state: dict, upserts: list, deletes: list,
                removals: list = (), truncate: bool = False, loading: bool = False):
        """Apply rows and write the checkpoint in one destination transaction.

        ``upserts`` holds (source key, destination row) pairs.  Rows the destination
        refuses for a data error (``Dialect.classify_error``) go to dead letters and the
        rest is applied, in the same transaction (savepoints); any other error aborts the
        batch (retried later with back-off).  Returns the number of rows written."""
        with begin(dst):
            self.checkpoint.fence(dst, expected)
            if truncate:
                self._truncate(dst)
            bad = self._apply_isolating(dst, upserts, deletes, removals)
            for key, exc in bad:
                self._dead_letter(key, exc)
            if bad and loading:
                new_state["loaded"] -= len(bad)  # the initial load counts the rows that landed
            self.checkpoint.write(dst, new_state)
        return len(upserts) + len(deletes) + len(removals) - len(bad)

    def _apply_isolating(self, dst, upserts, deletes=(), removals=()) -> list[tuple]:
        """Apply rows (as ``_commit`` takes them) in a savepoint; return (key, error) of the
        rows refused for a data error, found by halving the rows in further savepoints."""
        count = len(upserts) + len(deletes) + len(removals)
        if not count:
            return []
        savepoint = dst.begin_nested()
        try:
            self._apply(dst, [row for _, row in upserts], deletes, removals)
        except Exception as exc:
            if self.dst_dialect.classify_error(exc) != DATA or getattr(exc, "connection_invalidated", False):
                raise  # the whole transaction is rolled back by the caller
            savepoint.rollback()
            if count == 1:
                return [(upserts[0][0] if upserts else (list(deletes) + list(removals))[0], exc)]
            return [refused for part in _halves(upserts, deletes, removals)
                    for refused in self._apply_isolating(dst, *part)]
        savepoint.commit()
        return []

    def _dead_letter(self, key, exc):
        record_dead_letter(self.reflection, key, describe_error(exc))
        self.held_keys.add(keycodec.key_hash(key))
        logger.error("%s: row %s refused by the destination, dead-lettered: %s", self.reflection, list(key),
                     describe_error(exc))

    def _truncate(self, dst):
        """The source table was emptied (PostgreSQL TRUNCATE): every row of the mirror is
        gone, under the delete policy (fan-in partners keep their merged rows)."""
        if self.reflection.delete_policy == "ignore" or (self.statement and not self.delete_statement):
            return
        if not (self.statement or self.partners) and self.reflection.delete_policy == "delete":
            dst.execute(sa.delete(self.dest))
            return
        # destination key i holds source key i: the keys as the delete paths take them
        keys = [tuple(row) for row in dst.execute(sa.select(*self.dest_key_columns))]
        self._apply(dst, [], keys)

    def _apply(self, dst, upserts: list[dict], deletes: list[tuple], removals: list[tuple] = ()):
        """Write rows (the caller holds the transaction).

        ``deletes``: keys whose source row is gone (the delete policy applies);
        ``removals``: keys whose row left the filter (always removed)."""
        gone = list(removals)
        if self.reflection.delete_policy != "ignore":
            gone += list(deletes)
        if self.statement and not self.delete_statement:
            gone = []  # a custom statement without a delete statement: deletes are not replicated
        if gone:
            if self.delete_statement:
                dst.execute(sa.text(self.delete_statement),
                            [self.mapping.dest_key_values(k) | dict(zip(self.source_key, k)) for k in gone])
            elif self.reflection.delete_policy == "nullify":
                self._nullify(dst, gone)
            elif self.partners:
                shared = self._keys_held_by_partners(gone)
                self._nullify(dst, [k for k in gone if k in shared])
                self._delete(dst, [k for k in gone if k not in shared])
            else:
                self._delete(dst, gone)
        if upserts:
            if self.statement:
                self.dst_dialect.guard_rows(dst, None, upserts)
                dst.execute(sa.text(self.statement), self.dst_dialect.driver_rows(upserts))
            else:
                self._execute_upsert(dst, self.dest, self.mapping.dest_key, self.mapping.value_columns, upserts)

    def _dest_key_chunks(self, keys):
        per_chunk = max(1, self.dst_dialect.max_parameters // max(1, len(self.dest_key_columns)))
        dest_keys = [tuple(self.convert(self.mapping.dest_key_values(k))[n] for n in self.mapping.dest_key)
                     for k in keys]
        for part in chunks(dest_keys, per_chunk):
            yield self.dst_dialect.key_filter(self.dest_key_columns, part)

    def _delete(self, dst, keys):
        if len(keys) > 1:
            dest_keys = [self.convert(self.mapping.dest_key_values(k)) for k in keys]
            if self.dst_dialect.bulk_delete(dst, self.dest, self.mapping.dest_key, dest_keys):
                return
        for where in self._dest_key_chunks(keys):
            dst.execute(sa.delete(self.dest).where(where))

    def _nullify(self, dst, keys):
        values = {c: None for c in self.mapping.value_columns}
        if values:
            for where in self._dest_key_chunks(keys):
                dst.execute(sa.update(self.dest).where(where).values(**values))

    def _keys_held_by_partners(self, keys) -> set:
        """Keys (this reflection's source form) that another source of the same
        destination table still has: deleting here must keep the merged row."""
        if self._partner_cache is None:
            self._partner_cache = [PartnerLookup(p) for p in self.partners]
        dest_keys = {k: tuple(self.mapping.dest_key_values(k)[n] for n in self.mapping.dest_key) for k in keys}
        held = set()
        for partner in self._partner_cache:
            present = partner.present(list(dest_keys.values()), self.mapping.dest_key)
            held |= {k for k, d in dest_keys.items() if d in present}
        return held

    def keyed_rows(self, src, keys, window=None, cap=None):
        """(upserts as (key, destination row), deletes) for the current source state of ``keys``
        (the keys of the events in ``window``, when given).  ``cap``: bytes the rows may
        take before the read stops with BatchTooLarge (budget.py)."""
        current = self._source_rows(src, keys, window, cap) if keys else {}
        present = [(k, current[k]) for k in keys if k in current]
        # rows the engine's collation matched without exact equality (case-insensitive keys)
        seen = set(keys)
        present += [(k, row) for k, row in current.items() if k not in seen]
        deletes = [k for k in keys if k not in current]
        upserts, filtered = self._dest_rows(present)
        return upserts, deletes, filtered

    def _source_rows(self, src, keys: list[tuple], window=None, cap=None) -> dict[tuple, dict]:
        """Current source rows for ``keys``, by exact key (one query per chunk).  With
        ``window`` (position, last event id), the keys are those of the window's events:
        one query that joins the event table, no key list sent.  Where the engine refuses
        that join (MySQL: the event table's key column may not carry the source key's
        collation, "Illegal mix of collations"), the key list is used from then on."""
        if window is not None and self.src_dialect.joins_event_keys and not self._window_join_refused:
            try:
                for statement in self.src_dialect.key_lookup_settings():
                    src.execute(sa.text(statement))
                return self._rows_where(src, [self._keys_in_window(*window)], cap)
            except BatchTooLarge:
                src.rollback()
                raise
            except sa.exc.DBAPIError as exc:
                src.rollback()
                if exc.connection_invalidated:
                    raise
                self._window_join_refused = True
                logger.info("%s: source refused joining the event table (%s); reading rows by key list",
                            self.reflection, describe_error(exc))
        per_chunk = max(1, self.src_dialect.max_parameters // max(1, len(self.source_key)))
        return self._rows_where(src, [self.src_dialect.key_filter(self.source_key_columns, part)
                                      for part in chunks(keys, per_chunk)], cap)

    def _rows_where(self, src, wheres, cap=None) -> dict[tuple, dict]:
        """The rows matching each of ``wheres``, by key, read through a streaming cursor
        (rows per fetch sized by the largest row seen); their bytes past ``cap`` stop the
        read with BatchTooLarge.  The largest row read feeds the budget's estimate."""
        found = {}
        names = self.source_key
        size = largest = 0
        parts = None
        try:
            for where in wheres:
                columns, parts = self._stream(src, self.mapping.select(self.source).where(where))
                at = [columns.index(n) for n in names]
                for part in parts:
                    for row in part:
                        bytes_ = row_bytes(row)
                        size += bytes_
                        largest = max(largest, bytes_)
                        found[tuple([row[i] for i in at])] = dict(zip(columns, row))
                        if cap is not None and size > cap and len(found) > 1:
                            raise BatchTooLarge(largest, len(found), size)
        finally:
            if parts is not None:
                parts.close()  # the streaming cursor, before the transaction ends
            src.rollback()
        if cap is not None:  # a batch (not a dead letter's retry): the estimate follows it
            self.budget.observed(largest)
        return found

    def _stream(self, src, query):
        """(column names, parts of ``query``'s rows): a streaming cursor (the driver never
        holds the whole result), fetched 1, 5, 25, ... rows at a time up to what the
        largest row seen allows (``Budget.fetch_rows``), so that rows larger than expected
        are seen after a few of them."""
        most = self.budget.fetch_rows()
        result = src.execute(query.execution_options(stream_results=True, max_row_buffer=most))

        def parts():
            size = 1
            try:
                while True:
                    part = result.fetchmany(size)
                    if not part:
                        return
                    yield part
                    size = min(most, size * 5)
            finally:
                result.close()

        return list(result.keys()), parts()

    def _dest_rows(self, rows) -> tuple[list[tuple], list[tuple]]:
        """Transform (key, source row) pairs: ((key, destination row) pairs, filtered-out keys)."""
        upserts, filtered = [], []
        if rows and not self.statement and self.mapping.is_identity_for(list(rows[0][1])):
            # a mirror of every column: the source row is the destination row (rows of one
            # query share their columns)
            return [(key, self.convert(row)) for key, row in rows], filtered
        for key, row in rows:
            out = self.mapping.transform(row)
            if out is None:
                filtered.append(key)
            elif self.statement:
                upserts.append((key, self.mapping.source_parameters(row)))
            else:
                upserts.append((key, self.convert(out)))
        return upserts, filtered
