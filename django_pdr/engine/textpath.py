"""Rows passed as text between engines of one family (no Python values): the queries
that spell a batch or a load chunk on the source, and its commit with the checkpoint.
Anything the destination refuses is redone on the Python path (which isolates rows).
"""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .. import conf
from ..connections import begin
from ..dialects.base import GONE_FLAG, KEPT_FLAG, NEW_FLAG, OP_INSERT, TextRefused, TextRows, TextTooLarge
from ..errors import DATA
from ..errors import describe as describe_error
from .budget import BatchTooLarge
from .checkpoint import StaleCheckpoint, committed_asynchronously

logger = logging.getLogger("django_pdr.reflect")


#: Name of the flag column of text-path batches (a destination with a column of this
#: name takes the Python path).
MARK_COLUMN = "pdr_gone"


class TextPathFailed(Exception):
    """The destination refused a batch written as text: redo it with Python rows
    (which isolates bad rows into dead letters)."""


class TextPath:
    """Rows passed as text (same engine family, same column types).

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    def _text_columns(self, replace=None, plain=False):
        """The destination's columns as labelled source expressions (see Dialect.copy_out):
        "pdr_k<j>" for destination key column j, "pdr_c<i>" for the others; ``replace``
        gives another expression for some source columns; ``plain``: the columns as they
        are, of their own types (none read through an expression of its type, such as
        JSON's text): for the binary form, whose types are checked on the table."""
        keys = {name: j for j, name in enumerate(self.mapping.dest_key)}
        replace = replace or {}
        columns = [replace.get(c.source, self.source.c[c.source]) for c in self.mapping.columns]
        if plain:
            columns = [sa.type_coerce(column, sa.types.NullType()) for column in columns]
        return [column.label(f"pdr_k{keys[c.dest]}" if c.dest in keys else f"pdr_c{i}")
                for i, (c, column) in enumerate(zip(self.mapping.columns, columns))]

    def _text_rows_query(self, *where, plain=False):
        query = sa.select(*self._text_columns(plain=plain)).where(*where)
        if self.mapping.filter:
            query = query.where(self.mapping.filter_clause())
        return query

    def _keys_in_window(self, *window):
        """WHERE clause for the source rows whose key has an event in the window."""
        keys = sa.select(*self.reader.key_columns).where(self.reader.window(*window))
        src_keys = self.source_key_columns
        if len(src_keys) == 1:
            return src_keys[0].in_(keys)
        return sa.tuple_(*src_keys).in_(keys)

    _batch_queries = None  # split_new -> the batch query of a window without gaps

    def _text_batch(self, cursor: int, last_id: int, gap_ids, split_new: bool = True):
        """(query, values) of ``_text_batch_query``: a window without gaps (a streaming
        table's usual batch) as one query per ``split_new``, made once, whose bounds are
        bound parameters (``values``): neither built nor compiled for each batch."""
        if gap_ids:
            return self._text_batch_query(cursor, last_id, gap_ids, split_new=split_new), None
        if self._batch_queries is None:
            self._batch_queries = {}
        query = self._batch_queries.get(split_new)
        if query is None:
            bounds = (sa.bindparam("pdr_cursor", type_=sa.BigInteger()), sa.bindparam("pdr_last", type_=sa.BigInteger()))
            query = self._batch_queries[split_new] = self._text_batch_query(*bounds, (), split_new=split_new)
        return query, {"pdr_cursor": cursor, "pdr_last": last_id}

    def _text_batch_query(self, *window, split_new: bool = True):
        """One row per distinct key of the events of ``window`` (see EventReader.window): a
        "gone" flag (no source row, or the row fails the filter; with the destination's
        ``splits_new_rows`` and ``split_new``, one of GONE_FLAG, NEW_FLAG, KEPT_FLAG), then the
        destination columns (key columns from the row, or from the event for a gone key).
        One index probe per key on the source table."""
        ev_keys = self.reader.key_columns
        split_new = split_new and self.dst_dialect.splits_new_rows
        if split_new:
            # "new": the key's first event of the window is its INSERT (see NEW_FLAG)
            pdr_id, op = self.reader.table.c.pdr_id, self.reader.table.c.pdr_op
            first_insert = sa.func.min(sa.case((op == OP_INSERT, pdr_id))) == sa.func.min(pdr_id)
            keys = (sa.select(*ev_keys, first_insert.label("pdr_new")).where(self.reader.window(*window))
                    .group_by(*ev_keys).subquery("pdr_e"))
        else:
            keys = (sa.select(*ev_keys).where(self.reader.window(*window)).distinct()
                    .subquery("pdr_e"))
        src_keys = self.source_key_columns
        on = [s == keys.c[e.name] for s, e in zip(src_keys, ev_keys)]
        if self.mapping.filter:
            on.append(self.mapping.filter_clause())
        # key columns: the source row's own value when there is a row (where values that
        # compare equal differ in spelling, the row's is the one the Python path writes),
        # else the event's
        from_key = {name: sa.func.coalesce(self.source.c[name], keys.c[e.name])
                    for name, e in zip(self.source_key, ev_keys)}
        gone = src_keys[0].is_(None)
        if split_new:
            gone = sa.case((gone, GONE_FLAG), (keys.c.pdr_new, NEW_FLAG), else_=KEPT_FLAG)
        return (sa.select(gone.label(MARK_COLUMN), *self._text_columns(from_key))
                .select_from(keys.outerjoin(self.source, sa.and_(*on))))

    def _copy_out(self, src, queries, cap=None, values=None, binary: bool = False) -> list[TextRows] | None:
        """The queries' results as text for the destination, or None (a value with no text
        spelling, or a query the source refuses): the caller then takes the Python path.
        Text past ``cap`` characters stops the read with BatchTooLarge (budget.py).
        ``binary``: in the engines' binary form where ``binary_types`` allows (queries of
        the plain columns, ``_text_rows_query``)."""
        try:
            binary = binary and bool(self.binary_types)
            if binary:
                check = (self.source, [c.source for c in self.mapping.columns], self.binary_types)
                out = self.src_dialect.copy_out(src, queries, "binary", cap, values, check=check)
            else:
                out = self.src_dialect.copy_out(src, queries, self.dst_dialect.text_format, cap, values)
            if cap is not None:
                self.budget.observed(max((rows.largest for rows in out), default=0))
            return out
        except TextTooLarge as exc:
            raise BatchTooLarge(exc.largest, exc.rows, exc.size) from exc
        except (sa.exc.CompileError, NotImplementedError) as exc:
            logger.info("%s: text path not possible here (%s); using Python rows", self.reflection, exc)
            return None
        except (LookupError, TypeError, ValueError) as exc:  # UnicodeError is a ValueError
            logger.warning("%s: text path failed unexpectedly (%r); using Python rows", self.reflection, exc)
            return None
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            if binary:
                self.describe_again()  # (the check of the column types may be what failed)
            logger.info("%s: source refused the text query (%s); using Python rows", self.reflection,
                        describe_error(exc))
            return None

    def _asynchronous(self) -> bool:
        """Commits of this reflection's destination may skip waiting for their flush to disk
        (PDR["ASYNCHRONOUS_COMMIT"]; checkpoint.make_durable before a position is recorded)."""
        return bool(self.dst_dialect.commits_asynchronously and conf.get("ASYNCHRONOUS_COMMIT"))

    def _commit_text(self, dst, expected: dict | None, new_state: dict, text: TextRows, *, marked: bool,
                     fresh: bool = False, asynchronous: bool = False) -> int:
        """Write text rows (``marked``: with the leading "gone" flag of a batch; else the
        plain rows of a load chunk; ``fresh``: see Dialect.apply_copied) and the checkpoint
        in one destination transaction (``asynchronous``: committed without waiting for
        its flush, where ``_asynchronous`` allows)."""
        names, keys, values = self.mapping.dest_columns, self.mapping.dest_key, self.mapping.value_columns
        try:
            guard = self.checkpoint.advance_statement(expected, new_state) if marked else None
            if guard is not None:
                # a small batch, where the engine allows: rows and checkpoint in one statement
                quick = self._asynchronous()  # (this path only: ``asynchronous`` is the transaction's below)
                done = self.dst_dialect.apply_marked_guarded(dst, self.dest, names, keys, values, text, guard,
                                                             asynchronous=quick)
                if done is not None and done[0]:
                    if quick:
                        committed_asynchronously(self.reflection.destination_id)
                    return done[1]
                # (not moved: nothing was written; the transaction below fences)
            asynchronous = asynchronous and self._asynchronous()
            if asynchronous:  # (counted before: a make_durable after this covers the commit)
                committed_asynchronously(self.reflection.destination_id)
            with begin(dst):
                if asynchronous:
                    self.dst_dialect.commit_asynchronously(dst)
                # one round trip less: the state these rows lead to is known before they are
                # written (none is set aside on this path: a refused batch is redone)
                advanced = self.checkpoint.advance(dst, expected, new_state)
                if not advanced:
                    self.checkpoint.fence(dst, expected)
                if marked:
                    written = self.dst_dialect.apply_marked(dst, self.dest, names, keys, values, text)
                else:
                    written = self.dst_dialect.apply_copied(dst, self.dest, names, keys, values, text, fresh=fresh)
                if not advanced:
                    self.checkpoint.write(dst, new_state)
            return written
        except StaleCheckpoint:
            raise
        except TextRefused as exc:
            logger.info("%s: destination cannot take rows as text (%s); using Python rows", self.reflection, exc)
            raise TextPathFailed() from exc
        except Exception as exc:
            # the Python path classifies what the destination refuses, row by row
            if getattr(exc, "connection_invalidated", False) or not (
                    isinstance(exc, sa.exc.DBAPIError) or self.dst_dialect.classify_error(exc) == DATA):
                raise
            logger.info("%s: destination refused the batch as text (%s); redoing it with Python rows",
                        self.reflection, describe_error(exc))
            raise TextPathFailed() from exc
