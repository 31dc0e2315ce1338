"""One pass of a reflection: initial load, then batches of events.

Each batch: read visible events (bounded), collapse them per key, read the
current source rows for those keys in one query, and apply deletes and upserts
to the destination in one transaction that also writes the checkpoint.  A
crash before that commit repeats nothing and loses nothing: the next pass
starts from the checkpoint the destination holds.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa
from django.db.models import F
from django.utils import timezone

from . import conf, keycodec
from .capture import capturing, has_key_arrays, registration
from .capture import plan as capture_plan
from .checkpoint import Checkpoint, StaleCheckpoint
from .coerce import row_converter
from .connections import begin, connect
from .dialects import get_dialect
from .dialects.base import OP_TRUNCATE, RawValue, TextRefused, TextRows, event_key_name
from .errors import DATA, CaptureMissing, CaptureOutdated, ConfigurationError, ConnectionFailed, TableNotFound
from .errors import describe as describe_error
from .maintenance import measure, record_sample
from .mapping import Mapping
from .schema import check_destination_names, drift, fan_in_part, merged_destination_table, reflect_table
from .visibility import EventReader, Position

logger = logging.getLogger("django_pdr.reflect")

LOAD, STREAM = "load", "stream"

#: Name of the flag column of text-path batches (a destination with a column of this
#: name takes the Python path).
MARK_COLUMN = "pdr_gone"


class LeaseLost(Exception):
    """This worker's lease on the reflection expired and another worker holds it."""


class CaptureChanged(Exception):
    """The event table was installed anew, or events this reflection has not applied were
    purged, while a batch was read: the pass starts again (and resyncs)."""


class TextPathFailed(Exception):
    """The destination refused a batch written as text: redo it with Python rows
    (which isolates bad rows into dead letters)."""


#: Prepared table descriptions, per reflection (see ReflectionRunner.prepare_cached).
_PREPARED: dict = {}
PREPARE_TTL = 60.0
_DESCRIBED = ("capture", "src_dialect", "source", "source_key", "reader", "mapping", "removed_columns",
              "dst_dialect", "statement", "delete_statement", "dest", "checkpoint", "convert", "dest_key_columns",
              "source_key_columns", "text_path")


def forget_descriptions():
    """Drop every cached table description (the next pass describes afresh)."""
    _PREPARED.clear()


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


@dataclass
class Batch:
    """A batch read from the source, ready to commit with its checkpoint.

    Either Python rows (``upserts`` as (key, destination row) pairs, ``deletes``,
    ``removals``) or, on the text path, ``text``: one row per key in the engines' own
    text form, flagged "gone" or not.  ``keys`` are the source keys of the batch's events."""

    state: dict
    events: int
    keys: list = None
    upserts: list = ()
    deletes: list = ()
    removals: list = ()
    text: TextRows | None = None
    window: tuple | None = None  # (cursor, last event id, ids found in gaps): the events the batch covers
    truncate: bool = False  # the source table was emptied among these events


@dataclass
class PassResult:
    events: int = 0
    rows: int = 0
    batches: int = 0
    loaded: int = 0
    caught_up: bool = False
    position_changed: bool = False




def chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ReflectionRunner:
    """Carries out the work of one Reflection; built fresh for each pass."""

    def __init__(self, reflection, owner: str | None = None):
        self.reflection = reflection
        self.owner = owner  # lease holder; progress writes renew the lease
        self.source_table = reflection.source
        self.batch_size = reflection.batch_size or int(conf.get("BATCH_SIZE"))
        self.load_chunk = int(conf.get("LOAD_CHUNK_SIZE"))
        self.held_keys = set()  # keys waiting on a dead letter (read at the start of a pass)
        self._window_join_refused = False
        self.incarnation = None  # of the event table this pass reads (from the source's registry)

    # -- set-up ------------------------------------------------------------
    def prepare(self, src, dst):
        """Reflect the source, make sure capture and the destination exist."""
        st = self.source_table
        capture = capture_plan(src, st)
        registered = registration(src, capture)
        missing = capturing(src, capture)
        # the worker changes no schema: capture is installed by pdr-install or the admin
        if registered is None and missing:
            raise CaptureMissing(
                f"Capture is not installed on {st}: run manage.py pdr-install (or Install capture in the "
                f"admin); the reflection then loads the destination.")
        if missing is None and (registered is None or registered.fingerprint != capture.fingerprint):
            raise CaptureOutdated(
                f"Capture on {st} is outdated (installed by another release of django-pdr, or with other "
                f"settings): run manage.py pdr-install, then restart the workers.")
        src.rollback()
        self.capture = capture
        self.src_dialect = capture.dialect
        self.source = capture.source
        self.source_key = capture.key_names
        self.mapping = Mapping.from_reflection(self.reflection, [c.name for c in self.source.columns],
                                               self.source_key)
        added, self.removed_columns = drift(st, self.source)

        self.dst_dialect = get_dialect(dst)
        r = self.reflection
        schema = r.destination_schema or None
        self.statement = (r.statement or "").strip()
        self.delete_statement = (r.delete_statement or "").strip()
        self._load_partners()
        exists = sa.inspect(dst).has_table(r.destination_table, schema=schema)
        if not exists and not self.statement:
            # fan-in: the table gets the columns of every reflection that writes it
            parts = [(r.pk, (f"reflection {r.pk} ({st})", self.source, self.src_dialect, self.mapping))]
            parts += [(p.pk, fan_in_part(p)) for p in self.partners if not (p.statement or "").strip()]
            table = merged_destination_table([part for _, part in sorted(parts, key=lambda item: item[0])],
                                             self.dst_dialect, schema, r.destination_table)
            check_destination_names(self.dst_dialect, table.schema, table.name, table.c.keys())
            with begin(dst):
                table.create(dst, checkfirst=True)  # another worker may have created it meanwhile
            logger.info("%s: created destination table %s", r, table.fullname)
            exists = True
        if exists and not self.statement:
            self.dest = reflect_table(dst, schema, r.destination_table, r.destination.describe())
            self.mapping = self.mapping.restrict_to(self.dest.c.keys())
            if self.mapping.extras:
                raise ConfigurationError(
                    f"Source column(s) {', '.join(self.mapping.extras)} of {self.source.fullname!r} are "
                    f"not in destination table {self.dest.fullname!r}: they are not replicated. Add them "
                    f"to the destination (manage.py pdr-sync-schema does it for columns added at the "
                    f"source since its capture was installed, and resyncs), or give the reflection an "
                    f"explicit mapping that leaves them out.")
            dropped = [c for c in self.removed_columns if c in self.dest.c] if self.mapping.mirror else []
            if dropped:
                raise ConfigurationError(
                    f"Column(s) {', '.join(dropped)} were removed from source table {self.source.fullname!r} but "
                    f"destination {self.dest.fullname!r} still has them: drop them there (or keep them and "
                    f"accept the new structure) and run manage.py pdr-sync-schema.")
            missing = [c for c in self.mapping.dest_columns if c not in self.dest.c]
            if missing:
                raise ConfigurationError(
                    f"Destination table {self.dest.fullname!r} has no column(s) {', '.join(missing)}: "
                    f"add them, or map the source columns to existing ones.")
        else:
            # a custom statement writes wherever it says; only the checkpoint table is ours
            self.dest = sa.Table(r.destination_table, sa.MetaData(),
                                 *[sa.Column(c, sa.types.NullType()) for c in self.mapping.dest_columns],
                                 schema=schema)
        self.checkpoint = Checkpoint(self.dst_dialect, schema, r.uid, label=str(r))
        dst.rollback()
        self.checkpoint.create(dst)
        self.dest_key_columns = [self.dest.c[n] for n in self.mapping.dest_key]
        self.text_path = self._text_path_possible()
        if self.text_path:
            logger.info("%s: rows pass as text (every column has the same type on both sides)", r)
        self._value_types(capture.event)
        self.reader = EventReader(self.src_dialect, capture.event, len(self.source_key))
        self.convert = row_converter(self.dest, self.mapping.dest_columns)

    def _value_types(self, event: sa.Table):
        """How values are read and written.  JSON as its text, both ways (SQL NULL and the
        JSON value null stay apart, numbers keep every digit).  Between two databases of an
        engine that copies raw values (SQLite), copied columns and the keys pass as stored,
        byte for byte."""
        if (self.src_dialect.copies_raw_values and type(self.src_dialect) is type(self.dst_dialect)
                and not self.statement):
            for column in self.mapping.columns:
                if column.source is not None and column.source in self.source.c and column.dest in self.dest.c:
                    self.source.c[column.source].type = self.dest.c[column.dest].type = RawValue()
            for position, name in enumerate(self.source_key):
                if isinstance(self.source.c[name].type, RawValue):
                    event.c[event_key_name(position)].type = RawValue()
        for table, dialect in ((self.source, self.src_dialect), (self.dest, self.dst_dialect)):
            for column in table.columns:
                if isinstance(column.type, sa.JSON):
                    column.type = dialect.json_text_type()

    def _text_path_possible(self) -> bool:
        """Rows can pass from source to destination in the engines' own text form (no
        Python values): same engine family, plain copied columns of the same types."""
        if (self.statement or not self.src_dialect.copies_text_to(self.dst_dialect)
                or MARK_COLUMN in self.dest.c):
            return False
        return all(c.source is not None and c.source in self.source.c and c.dest in self.dest.c
                   and self.src_dialect.text_compatible(self.source.c[c.source].type, self.dest.c[c.dest].type,
                                                        self.dst_dialect, is_key=c.source in self.source_key)
                   for c in self.mapping.columns)

    def _use_text(self) -> bool:
        """The text path for this batch: only the plain delete policy, no fan-in partner,
        no key held by a dead letter (those need per-row decisions)."""
        return (self.text_path and self.reflection.delete_policy == "delete" and not self.partners
                and not self.held_keys)

    def _load_partners(self):
        """Other active reflections into the same destination table (fan-in)."""
        r = self.reflection
        self.partners = list(type(r).objects.filter(
            destination=r.destination, destination_schema=r.destination_schema,
            destination_table=r.destination_table, active=True).exclude(pk=r.pk).select_related("source__database"))
        self._partner_cache = None
        self.source_key_columns = [self.source.c[n] for n in self.source_key]

    # -- checkpoint and capture --------------------------------------------
    def read_state(self, dst) -> dict | None:
        return self.checkpoint.read(dst)

    def _check_capture(self, src):
        """The registry row of the event table, after checking that every change of the
        source table is being captured; CaptureMissing (an error) when not."""
        capture = self.capture
        missing = capturing(src, capture)
        registered = registration(src, capture)
        src.rollback()
        if missing is None and registered is None:
            missing = f"the capture of {capture.source.fullname!r} is not registered (it was removed)"
        if missing:
            raise CaptureMissing(
                f"Capture missing on {self.source_table}: {missing}. Changes made since then are not "
                f"captured: install the capture again (admin: Install capture, SourceTable.install()); "
                f"this reflection then reloads the destination.")
        return registered

    def _reconcile(self, state: dict | None, registered) -> tuple[dict, bool]:
        """(state to continue from, whether it is a fresh start).  A checkpoint of another
        incarnation of the event table, or one that has not applied events since purged
        (a destination restored from a backup), is never continued: resync (or, with
        PDR["ON_CAPTURE_RESET"] = "error", stop with an error)."""
        r = self.reflection
        self.incarnation = registered.incarnation
        reason = None
        if state is None or r.resync_requested:
            if r.resync_requested:
                type(r).objects.filter(pk=r.pk).update(resync_requested=False)
                r.resync_requested = False
            return self.start_state(registered), True
        if state.get("inc", registered.incarnation) != registered.incarnation:
            reason = (f"the capture on {self.source_table} was installed anew since the checkpoint was written "
                      f"(its event ids started again)")
        elif Position.from_json(state["pos"]).horizon < registered.purged_through:
            reason = (f"events up to id {registered.purged_through} were purged from {self.source_table}, but "
                      f"the destination's checkpoint has not applied those after id "
                      f"{Position.from_json(state['pos']).horizon} (was the destination restored from a backup?)")
        if reason is None:
            return dict(state, inc=registered.incarnation), False
        if conf.get("ON_CAPTURE_RESET") == "error":
            raise ConfigurationError(
                f"{r}: {reason}. The destination may miss changes: request a resync (admin: Resync) to "
                f"reload it.")
        logger.warning("%s: %s: resyncing the destination", r, reason)
        return self.start_state(registered), True

    def _confirm_capture(self, src, position: Position):
        """After reading events from ``position``: the event table is still the incarnation
        this pass started with, and nothing unread was purged meanwhile (a purge moves the
        registry in its own transaction, so a read that missed purged events is followed
        by this read of the registry seeing it)."""
        registered = registration(src, self.capture)
        src.rollback()
        if (registered is None or registered.incarnation != self.incarnation
                or registered.purged_through > position.horizon):
            raise CaptureChanged()

    def _execute_upsert(self, dst, table, keys, values, rows):
        if len(rows) > 1 and self.dst_dialect.bulk_upsert(dst, table, keys, values, rows):
            return
        self.dst_dialect.guard_rows(dst, table, rows)
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
        items = ([(key, [row], [], []) for key, row in upserts] + [(key, [], [key], []) for key in deletes]
                 + [(key, [], [], [key]) for key in removals])
        with begin(dst):
            self.checkpoint.fence(dst, expected)
            if truncate:
                self._truncate(dst)
            bad = self._apply_isolating(dst, items)
            for key, exc in bad:
                self._dead_letter(key, exc)
            if bad and loading:
                new_state["loaded"] -= len(bad)  # the initial load counts the rows that landed
            self.checkpoint.write(dst, new_state)
        return len(items) - len(bad)

    def _apply_isolating(self, dst, items) -> list[tuple]:
        """Apply ``items`` ((key, upserts, deletes, removals) per key) in savepoints; return
        (key, error) of the rows refused for a data error (found by halving the items)."""
        if not items:
            return []
        savepoint = dst.begin_nested()
        try:
            self._apply(dst, *[[x for item in items for x in item[i]] for i in (1, 2, 3)])
        except Exception as exc:
            if self.dst_dialect.classify_error(exc) != DATA or getattr(exc, "connection_invalidated", False):
                raise  # the whole transaction is rolled back by the caller
            savepoint.rollback()
            if len(items) == 1:
                return [(items[0][0], exc)]
            middle = len(items) // 2
            return self._apply_isolating(dst, items[:middle]) + self._apply_isolating(dst, items[middle:])
        savepoint.commit()
        return []

    def _dead_letter(self, key, exc):
        from .deadletters import record as record_dead_letter

        record_dead_letter(self.reflection, key, describe_error(exc))
        self.held_keys.add(keycodec.key_hash(key))
        logger.error("%s: row %s refused by the destination, dead-lettered: %s", self.reflection, list(key),
                     describe_error(exc))

    # -- applying rows -----------------------------------------------------
    def _source_rows(self, src, keys: list[tuple], window=None) -> dict[tuple, dict]:
        """Current source rows for ``keys``, by exact key (one query per chunk).  With
        ``window`` (position, last event id), the keys are those of the window's events:
        one query that joins the event table, no key list sent.  Where the engine refuses
        that join (MySQL: the event table's key column may not carry the source key's
        collation, "Illegal mix of collations"), the key list is used from then on."""
        if window is not None and self.src_dialect.joins_event_keys and not self._window_join_refused:
            try:
                for statement in self.src_dialect.key_lookup_settings():
                    src.execute(sa.text(statement))
                return self._rows_where(src, [self._keys_in_window(*window)])
            except sa.exc.DBAPIError as exc:
                src.rollback()
                if exc.connection_invalidated:
                    raise
                self._window_join_refused = True
                logger.info("%s: source refused joining the event table (%s); reading rows by key list",
                            self.reflection, describe_error(exc))
        per_chunk = max(1, self.src_dialect.max_parameters // max(1, len(self.source_key)))
        return self._rows_where(src, [self.src_dialect.key_filter(self.source_key_columns, part)
                                      for part in chunks(keys, per_chunk)])

    def _rows_where(self, src, wheres) -> dict[tuple, dict]:
        found = {}
        names = self.source_key
        for where in wheres:
            result = src.execute(self.mapping.select(self.source).where(where))
            columns = list(result.keys())
            at = [columns.index(n) for n in names]
            for row in result.fetchall():  # one fetch: iterating fetches row by row
                found[tuple([row[i] for i in at])] = dict(zip(columns, row))
        src.rollback()
        return found

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
                dst.execute(sa.text(self.statement), upserts)
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

    def keyed_rows(self, src, keys, window=None):
        """(upserts as (key, destination row), deletes) for the current source state of ``keys``
        (the keys of the events in ``window``, when given)."""
        current = self._source_rows(src, keys, window) if keys else {}
        present = [(k, current[k]) for k in keys if k in current]
        # rows the engine's collation matched without exact equality (case-insensitive keys)
        seen = set(keys)
        present += [(k, row) for k, row in current.items() if k not in seen]
        deletes = [k for k in keys if k not in current]
        upserts, filtered = self._dest_rows(present)
        return upserts, deletes, filtered

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

    # -- the text path ---------------------------------------------------------
    def _text_columns(self, replace=None):
        """The destination's columns as labelled source expressions (see Dialect.copy_out):
        "pdr_k<j>" for destination key column j, "pdr_c<i>" for the others; ``replace``
        gives another expression for some source columns."""
        keys = {name: j for j, name in enumerate(self.mapping.dest_key)}
        replace = replace or {}
        return [replace.get(c.source, self.source.c[c.source]).label(
                    f"pdr_k{keys[c.dest]}" if c.dest in keys else f"pdr_c{i}")
                for i, c in enumerate(self.mapping.columns)]

    def _text_rows_query(self, *where):
        query = sa.select(*self._text_columns()).where(*where)
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

    def _text_batch_query(self, *window):
        """One row per distinct key of the events of ``window`` (see EventReader.window): a
        "gone" flag (no source row, or the row fails the filter), then the
        destination columns (key columns from the row, or from the event for a gone key).
        One index probe per key on the source table."""
        ev_keys = self.reader.key_columns
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
        return (sa.select(src_keys[0].is_(None).label("pdr_gone"), *self._text_columns(from_key))
                .select_from(keys.outerjoin(self.source, sa.and_(*on))))

    def _copy_out(self, src, queries) -> list[TextRows] | None:
        """The queries' results as text for the destination, or None (a value with no text
        spelling, or a query the source refuses): the caller then takes the Python path."""
        try:
            return self.src_dialect.copy_out(src, queries, self.dst_dialect.text_format)
        except (sa.exc.CompileError, NotImplementedError) as exc:
            logger.info("%s: text path not possible here (%s); using Python rows", self.reflection, exc)
            return None
        except (LookupError, TypeError, ValueError) as exc:  # UnicodeError is a ValueError
            logger.warning("%s: text path failed unexpectedly (%r); using Python rows", self.reflection, exc)
            return None
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            logger.info("%s: source refused the text query (%s); using Python rows", self.reflection,
                        describe_error(exc))
            return None

    def _commit_text(self, dst, expected: dict | None, new_state: dict, text: TextRows, *, marked: bool) -> int:
        """Write text rows (``marked``: with the leading "gone" flag of a batch; else the
        plain rows of a load chunk) and the checkpoint in one destination transaction."""
        names, keys, values = self.mapping.dest_columns, self.mapping.dest_key, self.mapping.value_columns
        try:
            with begin(dst):
                self.checkpoint.fence(dst, expected)
                if marked:
                    written = self.dst_dialect.apply_marked(dst, self.dest, names, keys, values, text)
                else:
                    written = self.dst_dialect.apply_copied(dst, self.dest, names, keys, values, text)
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

    def python_batch(self, src, batch: Batch) -> Batch:
        """The same batch as Python rows (after the text path failed, or a key got held)."""
        upserts, deletes, removals = self.keyed_rows(src, batch.keys, batch.window) if batch.keys else ([], [], [])
        return Batch(batch.state, batch.events, batch.keys, upserts, deletes, removals, window=batch.window,
                     truncate=batch.truncate)

    # -- phases ------------------------------------------------------------
    def start_state(self, registered) -> dict:
        """A (re)load from the start, reading events after the purged floor."""
        return {"phase": LOAD, "after": None, "pos": self.reader.start_position(registered.purged_through).to_json(),
                "loaded": 0, "inc": registered.incarnation}

    def _load_python(self, src, after):
        """The next chunk as Python rows: (rows read, last key or None at the end, upserts, filtered)."""
        query = self.mapping.select(self.source).order_by(*self.source_key_columns).limit(self.load_chunk)
        if after is not None:
            query = query.where(self.src_dialect.key_after(self.source_key_columns, after))
        rows = [dict(r) for r in src.execute(query).mappings().all()]
        src.rollback()
        keyed = [(tuple(r[n] for n in self.source_key), r) for r in rows]
        upserts, filtered = self._dest_rows(keyed)
        last = keyed[-1][0] if len(rows) >= self.load_chunk else None
        return len(rows), last, upserts, filtered

    def _load_text(self, src, after):
        """The next chunk as text: (rows copied, last key or None at the end, text), or None."""
        columns = self.source_key_columns
        bounds = [self.src_dialect.key_after(columns, after)] if after is not None else []
        upper = src.execute(sa.select(*columns).where(*bounds).order_by(*columns)
                            .offset(self.load_chunk - 1).limit(1)).first()
        src.rollback()
        if upper is not None:
            upper = tuple(upper)
            bounds.append(sa.not_(self.src_dialect.key_after(columns, upper)))
        out = self._copy_out(src, [self._text_rows_query(*bounds)])
        if out is None:
            return None
        return out[0].count, upper, out[0]

    def _load_state(self, state, count, last):
        new_state = dict(state)
        new_state["loaded"] = state.get("loaded", 0) + count
        if last is None:
            return {"phase": STREAM, "pos": state["pos"], "loaded": new_state["loaded"], "inc": self.incarnation}
        new_state["after"] = keycodec.encode_key(last)
        return new_state

    def load_chunk_once(self, src, dst, state: dict, expected: dict | None) -> dict:
        """Copy the next key-ordered chunk of source rows; return the new state."""
        after = keycodec.decode_key(state.get("after"))
        if after is None:
            # A (re)load starts from a clean slate: rows deleted at the source while no
            # checkpoint existed must not survive it.  A table shared with other
            # reflections (fan-in) only loses this reflection's own columns.
            with begin(dst):
                self.checkpoint.fence(dst, expected)
                if self.statement:
                    pass  # a custom statement owns its target: nothing to clear
                elif self.partners:
                    values = {c: None for c in self.mapping.value_columns}
                    if values:
                        dst.execute(sa.update(self.dest).values(**values))
                else:
                    dst.execute(sa.delete(self.dest))
                self.checkpoint.write(dst, state)
            expected = state
        text = self._load_text(src, after) if self._use_text() else None
        if text is not None:
            count, last, rows_text = text
            new_state = self._load_state(state, count, last)
            try:
                self._commit_text(dst, expected, new_state, rows_text, marked=False)
                return new_state
            except TextPathFailed:
                pass  # the same chunk as Python rows, below
        count, last, upserts, filtered = self._load_python(src, after)
        new_state = self._load_state(state, count, last)
        self._commit(dst, expected, new_state, upserts, [], filtered, loading=True)
        if last is None:  # the load is complete: its events follow from the start position
            self._confirm_capture(src, Position.from_json(state["pos"]))
        return new_state

    def read_batch(self, src, state: dict) -> Batch | None:
        """Read and prepare the next batch on the source side only (no write anywhere),
        or None when nothing is new."""
        position = Position.from_json(state["pos"])
        events, new_position = self.reader.read(src, position, self.batch_size)
        self._confirm_capture(src, position)
        if not events and new_position.to_json() == position.to_json():
            return None
        truncate = any(e.op == OP_TRUNCATE for e in events)
        keys = list(dict.fromkeys(e.key for e in events if e.op != OP_TRUNCATE))
        new_state = {"phase": STREAM, "pos": new_position.to_json(), "loaded": state.get("loaded", 0),
                     "inc": self.incarnation}
        batch = Batch(new_state, len(events), keys, truncate=truncate)
        if not keys:
            return batch
        gap_ids = {e.id for e in events if e.id <= position.cursor}
        batch.window = (position.cursor, max(e.id for e in events), gap_ids)
        if self._use_text() and not truncate:
            text = self._copy_out(src, [self._text_batch_query(*batch.window)])
            if text is not None:
                batch.text = text[0]
                return batch
        return self.python_batch(src, batch)

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

    def stream(self, src, dst, state, result, stop, deadline):
        """Apply batches until caught up, stopped or past ``deadline``.

        Pipelined: while batch N commits on the destination (this thread), batch N+1 is
        read from the source (a helper thread; reads only, from the position batch N
        ends at).  Commits stay strictly in order, each with its checkpoint."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdr-read") as pool:
            future = pool.submit(self.read_batch, src, state)
            while True:
                batch = future.result()
                if batch is None:
                    result.caught_up = True
                    return state
                more = not stop() and (deadline is None or time.monotonic() < deadline)
                if more:
                    future = pool.submit(self.read_batch, src, batch.state)
                try:
                    state, events, rows = self.commit_batch(dst, state, batch)
                except TextPathFailed:
                    if more:
                        future.result()  # wait: the read-ahead holds the source connection
                    state, events, rows = self.commit_batch(dst, state, self.python_batch(src, batch))
                result.position_changed = True
                result.events += events
                result.rows += rows
                result.batches += 1
                self._save_progress(status="running", state=state, events=events, rows=rows)
                if not more:
                    return state

    def retry_dead_letters(self, src, dst, state: dict):
        """Re-apply the current source row of each dead letter whose retry was requested."""
        from .deadletters import requested, resolve

        for letter in requested(self.reflection):
            key = keycodec.decode_key(letter.key)
            with begin(dst):
                # the same fence as a batch, and the source read after it: a batch that
                # commits before read an older row than this retry writes
                self.checkpoint.fence(dst, state)
                upserts, deletes, removals = self.keyed_rows(src, [key])
                refused = self._apply_isolating(dst, [(key, [row for _, row in upserts], deletes, removals)])
            if refused:
                resolve(letter, error=describe_error(refused[0][1]))
                continue
            resolve(letter)
            logger.info("%s: dead-lettered row %s applied on retry", self.reflection, list(key))

    def run(self, stop=lambda: False, max_seconds: float | None = None) -> PassResult:
        """Work until caught up (or stopped / out of time)."""
        result = PassResult()
        r = self.reflection
        started = time.monotonic()
        with connect(self.source_table.database) as src, connect(r.destination) as dst:
            try:
                self.prepare_cached(src, dst)
                return self._run(src, dst, result, stop, max_seconds, started)
            except BaseException:
                _PREPARED.pop(r.pk, None)  # describe the tables afresh next time
                raise

    def _config_key(self):
        r, st = self.reflection, self.source_table
        return (r.mapping, r.statement, r.delete_statement, r.delete_policy, r.destination_id,
                r.destination_schema, r.destination_table, r.destination.modified_at, st.pk, st.schema, st.table,
                st.database.modified_at, st.installed_fingerprint, json.dumps(st.columns, sort_keys=True))

    def prepare_cached(self, src, dst):
        """``prepare`` once per configuration (and at most every PREPARE_TTL seconds):
        describing tables costs a dozen queries, a batch needs none of them."""
        key = self._config_key()
        entry = _PREPARED.get(self.reflection.pk)
        if entry and entry[0] == key and time.monotonic() - entry[1] < PREPARE_TTL:
            self.__dict__.update(entry[2])
            self._load_partners()
            return
        self.prepare(src, dst)
        described = {name: getattr(self, name) for name in _DESCRIBED}
        _PREPARED[self.reflection.pk] = (self._config_key(), time.monotonic(), described)

    def _run(self, src, dst, result, stop, max_seconds, started):
        try:
            return self._run_checked(src, dst, result, stop, max_seconds, started)
        except CaptureChanged:
            # reinstalled or purged under this pass: the checks at the start tell which
            return self._run_checked(src, dst, result, stop, max_seconds, started)

    def _run_checked(self, src, dst, result, stop, max_seconds, started):
        r = self.reflection
        registered = self._check_capture(src)
        state, starting = self._reconcile(self.read_state(dst), registered)
        from .deadletters import held_keys

        self.held_keys = held_keys(r)
        if self.held_keys:
            self.retry_dead_letters(src, dst, state)
            self.held_keys = held_keys(r)
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
            state = self.stream(src, dst, state, result, stop, deadline)
            break
        if not (result.events or result.position_changed or result.loaded or starting
                or r.status != "running" or r.pending_events is None or r.pending_events):
            return result  # an idle poll of a healthy reflection: nothing new to record
        self._save_progress(status="running", state=state, events=0, rows=0)
        if state["phase"] == STREAM:
            pending, lag = measure(r, src, self.reader)
            type(r).objects.filter(pk=r.pk).update(pending_events=pending, lag_seconds=lag)
            r.pending_events, r.lag_seconds = pending, lag
            record_sample(r, pending, lag, result.events, result.rows)
        return result

    def _save_progress(self, *, status, state, events=0, rows=0):
        r = self.reflection
        fields = {"status": status, "position": dict(state.get("pos", {}), i=state.get("inc")),
                  "load_progress": {"phase": state["phase"], "loaded": state.get("loaded", 0)}}
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


def pending_events(reflection) -> int | None:
    """Events not yet applied (None when the source cannot be read)."""
    try:
        with connect(reflection.source.database) as src:
            capture = capture_plan(src, reflection.source)
            reader = EventReader(capture.dialect, capture.event, len(capture.key_names),
                                 arrays=has_key_arrays(src, capture))
            return reader.count_pending(src, Position.from_json(reflection.position or {}))
    except (ConnectionFailed, TableNotFound, ConfigurationError):
        return None
