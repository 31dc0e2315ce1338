"""PostgreSQL: statement-level triggers with transition tables, xid8 snapshots."""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime
import decimal
import hashlib
import io
import itertools
import json
import math
import re
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ..errors import ValueRefused
from .base import (GONE_FLAG, KEPT_FLAG, NEW_FLAG, OP_DELETE, OP_INSERT, OP_TRUNCATE, OP_UPDATE, Dialect, Horizon, JSONText, TextCounter,
                   TextRefused, TextRows, bulk_key_name, column_list, event_key_name, json_has_nul, unencodable)
from .crosstext import values_query, values_spelling


#: psycopg2's refusal of a string holding NUL (PostgreSQL text cannot hold one).
_NUL_REFUSED = "A string literal cannot contain NUL (0x00) characters."


#: query object -> (prepared statement name, its SQL), see PostgreSQLDialect.run_repeated.
_REPEATED_SQL: dict = {}


class _Spelled:
    """A value psycopg2 must send spelled as given (its ``__conform__`` protocol: nothing
    is registered globally).  psycopg2 spells -0.0 as a bare literal, which PostgreSQL
    reads as minus applied to the numeric 0.0 (a plain 0), and every Decimal that is not
    finite as 'NaN'::numeric (an infinity would become NaN)."""

    def __init__(self, sql: bytes):
        self.sql = sql

    def __conform__(self, protocol):
        return self

    def getquoted(self):
        return self.sql


_NEGATIVE_ZERO = _Spelled(b"'-0'::float8")
_INFINITY = {False: _Spelled(b"'Infinity'::numeric"), True: _Spelled(b"'-Infinity'::numeric")}


def _exact_parameter(value):
    """``value`` as a parameter psycopg2 spells exactly (see _Spelled)."""
    kind = type(value)
    if kind is float and value == 0 and math.copysign(1.0, value) < 0:
        return _NEGATIVE_ZERO
    if kind is decimal.Decimal and value.is_infinite():
        return _INFINITY[value.is_signed()]
    return value


#: A text batch (``apply_marked``) of at most this many rows and characters is written from
#: JSON, without a temporary table (see ``_small_text_batch``).
SMALL_TEXT_ROWS = 256
SMALL_TEXT_CHARS = 1 << 20

#: Column types whose values json_populate_recordset reads from a JSON string exactly as COPY
#: reads its text (the type's input function).  Not JSON or JSONB (a JSON null becomes SQL
#: NULL there), arrays, domains or anything else.
_JSON_READABLE = (sa.Integer, sa.Numeric, sa.Float, sa.String, sa.Boolean, sa.Date, sa.DateTime, sa.Time,
                  sa.Interval, pg.INTERVAL, sa.LargeBinary, sa.Uuid)
_COPY_ESCAPE = re.compile(r"\\(.)", re.S)
_COPY_CHARS = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _esc(text: str) -> str:
    """SQL text run with parameters: psycopg2 reads "%" as a placeholder."""
    return text.replace("%", "%%")


def _copy_fields(line: str) -> list | None:
    """The values of a COPY text line (None for \\N); None when it holds an escape read
    here as nothing else than COPY would (octal or hex bytes)."""
    out = []
    for field in line.split("\t"):
        if field == "\\N":
            out.append(None)
        elif "\\" in field:
            try:
                out.append(_COPY_ESCAPE.sub(lambda m: _COPY_CHARS[m.group(1)], field))
            except KeyError:
                return None
        else:
            out.append(field)
    return out


def _small_text_batch(table, names, rows) -> tuple[list, list] | None:
    """A small marked text batch as (gone keys, present rows), each a list of {column: text
    or None}; None when it is not small, or holds what this path does not take."""
    if rows.fmt != "copy" or rows.count > SMALL_TEXT_ROWS or table is None:
        return None
    data = rows.data if isinstance(rows.data, str) else None
    if data is None and all(isinstance(piece, str) for piece in rows.data):
        data = "".join(rows.data)
    if data is None or len(data) > SMALL_TEXT_CHARS or "\x00" in data:
        return None
    for name in names:
        type_ = table.c[name].type
        if not isinstance(type_, _JSON_READABLE) or isinstance(type_, (sa.JSON, sa.TypeDecorator, sa.ARRAY)):
            return None
    gone, present = [], []
    for line in data.split("\n"):
        if not line:
            continue
        fields = _copy_fields(line)
        if fields is None or len(fields) != len(names) + 1 or fields[0] not in (GONE_FLAG, NEW_FLAG, KEPT_FLAG):
            return None
        (gone if fields[0] == GONE_FLAG else present).append(dict(zip(names, fields[1:])))
    if len(gone) + len(present) != rows.count:
        return None
    return gone, present


def _split_new(rows) -> tuple[list[str], list[str] | str]:
    """A marked batch's text (see Dialect.splits_new_rows) as (the lines of the rows flagged
    NEW_FLAG, without their flag; the other lines); no line "new" when the text is not one
    line per row as expected."""
    data = rows.data
    if isinstance(data, str):  # one text (a MySQL source): a COPY line holds no raw newline
        lines = [line + "\n" for line in data.split("\n") if line]
    else:  # psycopg2 writes a COPY TO's rows one by one (a part per row, checked below)
        lines = data
    if len(lines) != rows.count or not (lines and lines[0].endswith("\n") and lines[-1].endswith("\n")):
        return [], data
    new, rest = [], []
    keep_new, keep = new.append, rest.append
    for line in lines:  # the flag is the first field, one letter (one pass: ~3 ms per 20,000 rows)
        if line[0] == NEW_FLAG:
            keep_new(line[2:])
        else:
            keep(line)
    return (new, rest) if new else ([], data)


#: (destination URL, table) -> [batches to skip the direct insert of "new" rows, skips
#: after the next failure]: doubled by each failure in a row, up to DIRECT_BACKOFF_MAX.
_DIRECT_BACKOFF: dict[tuple, list[int]] = {}
DIRECT_BACKOFF_MAX = 64


def _direct_insert_due(conn, target) -> bool:
    """True when a batch to ``target`` may insert its "new" rows directly (no failure of
    that recently: each one makes the next batches skip it)."""
    state = _DIRECT_BACKOFF.get((str(conn.engine.url), target))
    if state is None or state[0] <= 0:
        return True
    state[0] -= 1
    return False


def _direct_insert_failed(conn, target, failed=True):
    where = (str(conn.engine.url), target)
    if not failed:
        _DIRECT_BACKOFF.pop(where, None)
        return
    state = _DIRECT_BACKOFF.setdefault(where, [0, 1])
    state[0], state[1] = state[1], min(DIRECT_BACKOFF_MAX, state[1] * 2)


class _NotCopyable(Exception):
    """A value COPY's text format has no safe spelling for (the caller falls back)."""


_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise _NotCopyable()
        return value.translate(_ESCAPES)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(value).hex()
    raise _NotCopyable()


def _copy_str(value: str) -> str:
    if "\x00" in value:
        raise _NotCopyable()
    if "\\" in value or "\n" in value or "\r" in value or "\t" in value:
        return value.translate(_ESCAPES)
    return value


#: Encoders by exact value type (the common ones); anything else takes _copy_value.
_COPY_BY_TYPE = {int: str, str: _copy_str, decimal.Decimal: str, datetime.datetime: datetime.datetime.isoformat,
                 datetime.date: datetime.date.isoformat, bool: _copy_value, float: _copy_value}


def copy_text(rows) -> str:
    """Rows of DB-API values in COPY's text format (tab-separated, \\N for NULL)."""
    return "".join(copy_lines(rows))


def copy_lines(rows) -> list[str]:
    """``copy_text`` as a list of str: one per row, or the pieces of a row holding bytes
    (``_copy_row_pieces``)."""
    encoder, fallback = _COPY_BY_TYPE.get, _copy_value
    out = []
    for row in rows:
        try:
            out.append("\t".join(["\\N" if v is None else encoder(type(v), fallback)(v) for v in row]) + "\n")
        except _NotCopyable:
            out.extend(_copy_row_pieces(row))
    return out


def _copy_row_pieces(row) -> list[str]:
    """The COPY line of a row whose bytes are bound as psycopg2.Binary (the bytea bind
    processor's wrapper), in pieces: the hex digits of each bytes value are one piece,
    never joined into the line (each join would copy it whole).  Raises _NotCopyable for
    a value COPY has no spelling for."""
    pieces = []
    for i, value in enumerate(row):
        if i:
            pieces.append("\t")
        data = getattr(value, "adapted", None)
        if isinstance(data, (bytes, bytearray, memoryview)):
            pieces += ["\\\\x", data.hex()]
        else:
            pieces.append(_copy_value(value))
    pieces.append("\n")
    return pieces


class _CopySource:
    """COPY FROM's file: text handed out in pieces of about ``PIECE`` characters, never
    copied whole (``io.StringIO`` keeps 4 bytes a character).  ``parts``: one str (a
    batch's text) or a list of str or of bytes (rows), let go of once read.  Runs of
    small parts are joined in one step (their lengths summed once, in C): no Python step
    per row."""

    PIECE = 1 << 16

    def __init__(self, parts):
        self.parts = [parts] if isinstance(parts, str) else parts
        self.at, self.offset = 0, 0
        self.ends = list(itertools.accumulate(map(len, self.parts)))  # where each part ends
        self.empty = b"" if self.parts and isinstance(self.parts[0], bytes) else ""

    def read(self, size=-1):
        parts, at = self.parts, self.at
        if at >= len(parts):
            return self.empty
        part = parts[at]
        if self.offset or len(part) > 4 * self.PIECE:  # a large part: a slice of it
            piece = part[self.offset:self.offset + 4 * self.PIECE]
            self.offset += len(piece)
            if self.offset >= len(part):
                parts[at] = self.empty  # read: let it go
                self.at, self.offset = at + 1, 0
            return piece
        # the small parts from here that fit in PIECE (at least one; never a large one)
        before = self.ends[at - 1] if at else 0
        end = max(at + 1, bisect.bisect_right(self.ends, before + self.PIECE, at))
        piece = part if end == at + 1 else self.empty.join(parts[at:end])
        parts[at:end] = itertools.repeat(self.empty, end - at)
        self.at = end
        return piece

    readline = read


#: PostgreSQL's binary COPY: the header (signature, flags, no header extension) and the
#: trailer around the rows.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
BINARY_TRAILER = b"\xff\xff"
#: Type identifiers below this one are the built-in types, the same in every database.
FIRST_NORMAL_OID = 16384


class _BinarySource(_CopySource):
    """COPY FROM's file for rows in the binary form (a list of bytes): the header, the
    rows (let go of once read), the trailer."""

    def __init__(self, rows):
        super().__init__(rows)
        self.state = 0

    def read(self, size=-1):
        if self.state == 0:
            self.state = 1
            return BINARY_HEADER
        piece = super().read(size)
        if piece or self.state == 2:
            return piece
        self.state = 2
        return BINARY_TRAILER

    readline = read


class _BinarySink:
    """COPY TO's file for the binary form: one bytes a row (the first one begins with the
    header, the last one is the trailer), counted."""

    def __init__(self, counter: TextCounter):
        self.parts, self.counter = [], counter

    def write(self, data):
        self.counter.add(len(data))
        self.parts.append(data)  # (bytes: psycopg2 makes one a row for a file that is not a text file)
        return len(data)

    def rows(self) -> list:
        parts = self.parts
        if not parts or not parts[0].startswith(BINARY_HEADER) or not parts[-1].endswith(BINARY_TRAILER):
            raise NotImplementedError("PostgreSQL sent binary COPY data of an unexpected form")
        parts[0] = parts[0][len(BINARY_HEADER):]
        parts[-1] = parts[-1][:-len(BINARY_TRAILER)]
        return [part for part in parts if part]  # (a row is never empty: it starts with its field count)


class _CopySink(io.TextIOBase):
    """COPY TO's file: the rows as psycopg2 writes them (one str a row), counted."""

    def __init__(self, counter: TextCounter):
        self.parts, self.counter = [], counter

    def write(self, text):
        self.counter.add(len(text))
        self.parts.append(text)
        return len(text)


#: Joins of a batch's keys (the event window on the source, the flagged staging table of a
#: text batch on the destination) with a table go by index lookups: the planner, guessing
#: the keys' number, would otherwise hash-join and scan the whole table once per batch.
#: SET LOCAL: until the end of the transaction.  (A staging table of keys only, on the
#: Python path, is small enough for the planner to choose lookups itself; measured, forcing
#: it there cost ~15% of the catch-up.)
_NESTED_LOOP = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"


#: Channel the capture triggers notify; idle workers LISTEN on it (one wake-up per
#: transaction: PostgreSQL folds identical notifications of a transaction into one).
NOTIFY_CHANNEL = "pdr_events"

#: Advisory lock ``(SLEEP_LOCK_CLASS, 0)`` of sleeping workers.  A worker about to sleep
#: holds it exclusively (a session lock on its listening connection); the capture
#: trigger tries it in share mode without waiting (a transaction lock) and notifies
#: only when that fails.  A busy worker does not hold it, so its writers skip
#: ``pg_notify`` and the commit serialisation that comes with it.  The lock is free
#: only while no capturing transaction is in flight, so every commit before a worker
#: arms is visible to the look it takes right after arming; later writers notify.
SLEEP_LOCK_CLASS = 1346654753  # "PDR!" as an int4
SLEEP_LOCK = f"{SLEEP_LOCK_CLASS}, 0"


class _JSONText(JSONText):
    """psycopg2 parses json and jsonb itself: the SELECT reads their text instead."""

    cache_ok = True

    def column_expression(self, column):
        return sa.cast(column, sa.Text)


class PostgreSQLDialect(Dialect):
    names = ("postgresql",)
    label = "PostgreSQL"
    kind_label = "PostgreSQL"
    system_schemas = frozenset({"information_schema", "pg_catalog", "pg_toast"})
    driver = "postgresql+psycopg2"
    install_hint = "Install psycopg2: pip install psycopg2-binary (a dependency of django-pdr)."
    tested_live = True
    max_identifier_length = 63
    identifier_length_in_bytes = True
    max_parameters = 30000

    @classmethod
    def identifier_problem(cls, name):
        problem = super().identifier_problem(name)
        if problem and name and not cls.identifier_fits(name):
            problem += ", and the server would silently cut it to its first 63 bytes"
        return problem

    @classmethod
    def connect_args(cls, timeout):
        # psycopg2 reads timestamptz at year 1/9999 only with the session in UTC.
        # DateStyle/IntervalStyle fixed: rows passed as text between two servers must be
        # spelled the same whatever either server's or role's defaults; extra_float_digits=1:
        # floats spelled exactly (the shortest text that reads back as the same value).
        return {"connect_timeout": timeout,
                "options": "-c timezone=UTC -c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=1"}

    def json_text_type(self):
        return _JSONText()

    # -- capture -------------------------------------------------------------
    def event_time_default(self):
        return sa.text("(now() AT TIME ZONE 'utc')")

    # A statement that changes many rows writes its first BULK keys as one event row
    # each, the rest as arrays of at most BULK keys (one event row per BULK keys): a
    # 200k-row INSERT ... SELECT then writes 1,199 event rows instead of 200,000.
    # One-row statements pay nothing for it (one statement, a LIMIT).
    bulk_event_keys = 1000

    def bulk_key_type(self, key_type):
        if isinstance(key_type, (sa.ARRAY, sa.types.NullType, pg.DOMAIN)):
            # arrays of arrays are flat in PostgreSQL; a domain may be NOT NULL, which
            # the key column left empty in an array row would violate: one key per row
            return None
        return pg.ARRAY(key_type)

    def event_relation(self, event, key_count):
        arrays = self.bulk_key_columns(event)
        if not arrays:
            return event
        keys = [event.c[event_key_name(i)] for i in range(key_count)]
        unnested = (sa.func.unnest(*arrays)
                    .table_valued(*[sa.column(k.name, k.type) for k in keys])
                    .render_derived(name="pdr_u"))
        # a key-array row gives one row per key (its own key columns are null); a row
        # event, with no array, one row: its own key.  A join read in event-id order
        # (a UNION of the two kinds would be sorted whole before a LIMIT).
        values = [sa.func.coalesce(k, unnested.c[k.name]).label(k.name) for k in keys]
        return (sa.select(event.c.pdr_id, event.c.pdr_op, event.c.pdr_at, *values)
                .select_from(event.outerjoin(unnested, sa.true())).subquery("pdr_events"))

    def event_table_upgrades(self, source, event):
        columns = self.bulk_key_columns(event)
        if not columns:
            return []
        # writers lock the source table, then the event table: so does the upgrade
        return [f"LOCK TABLE {self.qualified(source.schema, source.name)} IN SHARE ROW EXCLUSIVE MODE",
                *[f"ALTER TABLE {self.qualified(event.schema, event.name)} ADD COLUMN IF NOT EXISTS "
                  f"{self.quote(c.name)} {c.type.compile(dialect=self.sa)}" for c in columns]]

    # An event table is a queue: rows are inserted at one end and purged at the other
    # (maintenance.purge), so it holds few live rows and makes dead ones as fast as events
    # are written; vacuum makes their space reusable.  By default autovacuum waits for dead
    # rows above 50 + 20% of the rows the table had when last counted: while a reflection
    # works through a backlog of 10M events that is 2M dead rows.  These make it vacuum the
    # table at its next visit (autovacuum_naptime) once 1,000 rows are dead, whatever the
    # backlog.  Throttling (cost delay) is left to the server: a vacuum of an event table
    # grown large during an outage must not take the source's I/O.  Measured:
    # docs/performance.md, "Event-table growth" (bench/growth.py).
    event_table_options = {
        "autovacuum_vacuum_scale_factor": "0",
        "autovacuum_vacuum_threshold": "1000",
    }

    def event_table_options_query(self, schema, name):
        return (sa.text("SELECT coalesce(c.reloptions, '{}') FROM pg_catalog.pg_class c "
                        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = :schema AND c.relname = :name AND c.relkind IN ('r', 'p')")
                .bindparams(schema=schema, name=name))

    def set_event_table_options(self, event, options):
        if not options:
            return []
        # ALTER TABLE ... SET takes SHARE UPDATE EXCLUSIVE: writers and readers go on
        # names and values are words and numbers of ours (never quoted: the server reads
        # a quoted name as another name), checked to be nothing else
        settings = ", ".join(f"{self._option_word(name, r'[a-z_]+')} = "
                             f"{self._option_word(value, r'[0-9.]+|[a-z]+')}" for name, value in options.items())
        return [f"ALTER TABLE {self.qualified(event.schema, event.name)} SET ({settings})"]

    @staticmethod
    def _option_word(text, pattern) -> str:
        text = str(text)
        if not re.fullmatch(pattern, text):
            raise ValueError(f"not a storage parameter: {text!r}")
        return text

    def _insert_events(self, event, key_count, *selects):
        keys = [event_key_name(i) for i in range(key_count)]
        return (f"INSERT INTO {self.qualified(event.schema, event.name)} "
                f"({column_list(self, ['pdr_op', 'pdr_txid', *keys])}) " + " UNION ALL ".join(selects))

    def _events_of(self, op, alias, source_names, from_clause, limit=""):
        values = ", ".join(f"{alias}.{self.quote(n)}" for n in source_names)
        return f"SELECT '{op}', pdr_txid, {values} FROM {from_clause}{limit}"

    def _bulk_events(self, event, op, transition, source_names):
        """The keys of ``transition`` after its first BULK rows, in arrays of BULK keys
        (grouped by row number: memory and time linear in the keys, whatever their type).
        A transition table is read in the same order every time: LIMIT and OFFSET split it."""
        size = self.bulk_event_keys
        n = len(source_names)
        keys = [event_key_name(i) for i in range(n)]  # our own names: no source column can clash
        renamed = ", ".join(f"t.{self.quote(name)} AS {k}" for name, k in zip(source_names, keys))
        numbered = ", ".join(f"r.{k}" for k in keys)
        aggregates = ", ".join(f"pg_catalog.array_agg(o.{k})" for k in keys)
        return (f"INSERT INTO {self.qualified(event.schema, event.name)} "
                f"({column_list(self, ['pdr_op', 'pdr_txid', *[bulk_key_name(i) for i in range(n)]])}) "
                f"SELECT '{op}', pdr_txid, {aggregates} FROM "
                f"(SELECT {numbered}, (pg_catalog.row_number() OVER () - 1) / {size} AS pdr_g FROM "
                f"(SELECT {renamed} FROM {transition} AS t OFFSET {size}) AS r) AS o GROUP BY o.pdr_g")

    def create_trigger_statements(self, source, event, names, key_names, notify=True):
        fn = self.qualified(source.schema, names.function)
        table = self.qualified(source.schema, source.name)
        # every column qualified: the variables win any clash (#variable_conflict below)
        key_changed = (f"(SELECT {', '.join(f'p.{self.quote(k)}' for k in key_names)} FROM pdr_old AS p EXCEPT "
                       f"SELECT {', '.join(f'p.{self.quote(k)}' for k in key_names)} FROM pdr_new AS p) AS o")
        n = len(key_names)
        bulk = self.has_bulk_events(event)
        limit = f" LIMIT {self.bulk_event_keys}" if bulk else ""

        def overflow(op, transition):
            if not bulk:
                return ""
            return (f"\n    IF pdr_rows >= {self.bulk_event_keys} THEN\n"
                    f"      {self._bulk_events(event, op, transition, key_names)};\n    END IF;")

        # An UPDATE writes its events in one statement (one executor start per call): the
        # keys it moved away from, then the new ones.
        # NOTIFY wakes idle workers at once, but serialises the commits of notifying
        # transactions (a cluster-wide lock held through the commit's WAL flush): only
        # while a worker sleeps (see SLEEP_LOCK_CLASS), and only when the statement wrote
        # events (a statement that changed no row takes no lock either).
        count = "\n    GET DIAGNOSTICS pdr_rows = ROW_COUNT;"
        notify_line = (f"  IF pdr_rows > 0 THEN\n"
                       f"    IF NOT pg_try_advisory_xact_lock_shared({SLEEP_LOCK}) THEN\n"
                       f"      PERFORM pg_notify('{NOTIFY_CHANNEL}', '');\n    END IF;\n  END IF;\n"
                       if notify else "")
        new_keys = self._events_of(OP_UPDATE, 'n', key_names, 'pdr_new AS n', limit)
        body = f"""
#variable_conflict use_variable
DECLARE
  pdr_txid bigint := pg_current_xact_id()::text::bigint;
  pdr_rows bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    {self._insert_events(event, n, self._events_of(OP_INSERT, 'n', key_names, 'pdr_new AS n', limit))};{count}{
        overflow(OP_INSERT, 'pdr_new')}
  ELSIF TG_OP = 'UPDATE' THEN
    {self._insert_events(event, n, self._events_of(OP_DELETE, 'o', key_names, key_changed),
                         f"({new_keys})" if bulk else new_keys)};{count}{overflow(OP_UPDATE, 'pdr_new')}
  ELSIF TG_OP = 'DELETE' THEN
    {self._insert_events(event, n, self._events_of(OP_DELETE, 'o', key_names, 'pdr_old AS o', limit))};{count}{
        overflow(OP_DELETE, 'pdr_old')}
  ELSIF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {self.qualified(event.schema, event.name)} (pdr_op, pdr_txid) VALUES ('{OP_TRUNCATE}', pdr_txid);
    pdr_rows := 1;
  END IF;
{notify_line}  RETURN NULL;
END
"""
        tag, n = "$pdr$", 0
        while tag in body:  # a column name may contain the dollar-quote tag
            n += 1
            tag = f"$pdr{n}$"
        # SECURITY DEFINER: roles that may write the source table need no grant on the
        # event table; a fixed search_path keeps the function immune to the caller's.
        statements = [
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            f"SET search_path = pg_catalog, pg_temp AS {tag}{body}{tag}",
        ]
        for trigger, when, referencing in (
            (names.insert_trigger, "INSERT", "REFERENCING NEW TABLE AS pdr_new "),
            (names.update_trigger, "UPDATE", "REFERENCING OLD TABLE AS pdr_old NEW TABLE AS pdr_new "),
            (names.delete_trigger, "DELETE", "REFERENCING OLD TABLE AS pdr_old "),
            (names.truncate_trigger, "TRUNCATE", ""),
        ):
            statements.append(
                f"CREATE OR REPLACE TRIGGER {self.quote(trigger)} AFTER {when} ON {table} "
                f"{referencing}FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
            )
            # ALWAYS: fire in sessions with session_replication_role = replica too (logical
            # replication subscribers, pg_restore runs that set it); a trigger disabled by
            # ALTER TABLE ... DISABLE TRIGGER counts as missing (see existing_triggers_query)
            statements.append(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {self.quote(trigger)}")
        return statements

    def drop_trigger_statements(self, source, names, triggers=None):
        table = self.qualified(source.schema, source.name)
        chosen = names.triggers if triggers is None else [t for t in names.triggers if t in triggers]
        statements = [f"DROP TRIGGER IF EXISTS {self.quote(t)} ON {table}" for t in chosen]
        if len(chosen) == len(names.triggers):
            statements.append(f"DROP FUNCTION IF EXISTS {self.qualified(source.schema, names.function)}()")
        return statements

    def existing_triggers_query(self, schema, table_name, names):
        # 'A' (always, as installed) or 'O' (an earlier release: not in replica sessions)
        # fire on ordinary writes; 'D' (DISABLE TRIGGER) and 'R' (replica sessions only) do not
        return sa.text(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :table AND NOT t.tgisinternal AND t.tgenabled IN ('A', 'O')"
        ).bindparams(schema=schema, table=table_name)

    def schema_triggers_query(self, schema):
        return sa.text(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND NOT t.tgisinternal AND t.tgenabled IN ('A', 'O')"
        ).bindparams(schema=schema)

    def is_system_schema(self, name):
        return super().is_system_schema(name) or name.lower().startswith("pg_")

    def capture_names(self, schema, table):
        names = super().capture_names(schema, table)
        return dataclasses.replace(names, truncate_trigger=names.insert_trigger[:-len("_ins")] + "_trn")

    # -- wake-ups ------------------------------------------------------------
    supports_notify = True
    exact_text_equality = True  # deterministic collations compare bytes

    def start_listening(self, dbapi_connection):
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        # the server notices a vanished worker within about a minute and drops its arm
        # (the default is the system's TCP keepalive, often two hours)
        cursor.execute("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                       "SET tcp_keepalives_count = 3")
        cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
        cursor.close()

    def drain_notifications(self, dbapi_connection) -> int:
        dbapi_connection.poll()
        count = len(dbapi_connection.notifies)
        dbapi_connection.notifies.clear()
        return count

    def arm_wakeups(self, dbapi_connection):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SELECT pg_catalog.pg_try_advisory_lock({SLEEP_LOCK})")
            if cursor.fetchone()[0]:
                return "held"
            # taken: in share mode by writers in flight, or exclusively by another worker
            # asleep, whose wake-ups reach every listener
            cursor.execute(f"SELECT pg_catalog.pg_try_advisory_lock_shared({SLEEP_LOCK})")
            if cursor.fetchone()[0]:
                cursor.execute(f"SELECT pg_catalog.pg_advisory_unlock_shared({SLEEP_LOCK})")
                return None
            return "shared"
        finally:
            cursor.close()

    def disarm_wakeups(self, dbapi_connection, token, wake_others=False):
        if token != "held":
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SELECT pg_catalog.pg_advisory_unlock({SLEEP_LOCK})")
            if wake_others:  # workers sleeping on our arm: look, and arm for yourselves
                cursor.execute(f"SELECT pg_catalog.pg_notify('{NOTIFY_CHANNEL}', '')")
        finally:
            cursor.close()

    # -- probes --------------------------------------------------------------
    def run_repeated(self, conn, query):
        # planning a UNION of a thousand event tables costs more than running it: the
        # statement is prepared once per connection (its SQL compiled once per query object)
        info = conn.connection.info
        if info.get("pdr_no_prepare"):
            return conn.execute(query).all()
        sql = _REPEATED_SQL.get(query)
        if sql is None:
            if len(_REPEATED_SQL) > 100:
                _REPEATED_SQL.clear()
            text = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            sql = _REPEATED_SQL[query] = ("pdr_q_" + hashlib.sha1(text.encode()).hexdigest()[:20], text)
        name, text = sql
        prepared = info.setdefault("pdr_prepared", set())
        rows = []

        def work(cursor):
            if name not in prepared:
                cursor.execute(f"PREPARE {name} AS {text}")
                prepared.add(name)
            cursor.execute(f"EXECUTE {name}")
            rows.extend(cursor.fetchall())

        try:
            self.run_on_driver(conn, f"EXECUTE {name}", work)
        except sa.exc.DBAPIError as exc:
            prepared.discard(name)
            if exc.connection_invalidated or getattr(exc.orig, "pgcode", None) != "26000":
                raise  # (a table dropped since: the statement is prepared again next time)
            # "prepared statement does not exist": a pooler that forgets them (PgBouncer
            # in transaction mode): plain statements on this connection from now on
            conn.rollback()
            info["pdr_no_prepare"] = True
            return conn.execute(query).all()
        return rows

    # -- visibility ----------------------------------------------------------
    def transaction_horizon(self, conn, event_table):
        # next: an xid given to this transaction now, above every xid assigned before (a
        # snapshot's xmax is not: it is one past the latest *completed* xid, and a writer
        # newer than that is running but below no xmax); oldest: the snapshot's xmin, the
        # oldest xid still running (this one included), taken after.  xid8: never wraps.
        own = conn.execute(sa.text("SELECT pg_current_xact_id()::text")).scalar()
        oldest = conn.execute(sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")).scalar()
        return Horizon(int(own), int(oldest))

    # -- apply ---------------------------------------------------------------
    def upsert(self, table, key_names, update_names):
        stmt = pg.insert(table)
        if not update_names:
            return stmt.on_conflict_do_nothing(index_elements=key_names)
        return stmt.on_conflict_do_update(
            index_elements=key_names, set_={n: stmt.excluded[n] for n in update_names}
        )

    def _names(self, table, names, key_names, update_names):
        """Target, column list, key list and ON CONFLICT action as SQL text (run without
        parameters: no %-escaping wanted)."""
        ident = self.raw_name
        target = self.raw_table(table)
        if update_names:
            action = "DO UPDATE SET " + ", ".join(f"{ident(n)} = EXCLUDED.{ident(n)}" for n in update_names)
        else:
            action = "DO NOTHING"
        return target, [ident(n) for n in names], [ident(n) for n in key_names], action

    @staticmethod
    def _stage(cursor, target, columns, kind) -> str:
        """An empty temporary table shaped like ``columns`` of the target, as they are now.

        Dropped at commit (ON COMMIT DROP): a stage kept for the connection's life would
        keep the column types of its day, and COPY into it would silently round or cut
        values once the target's types change.  Used twice in one transaction, it is
        emptied instead of made again."""
        digest = hashlib.sha1(f"{target}\x00{', '.join(columns)}".encode("utf-8")).hexdigest()[:16]
        name = f"pdr_{kind}_{digest}"
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ON COMMIT DROP AS "
                       f"SELECT {', '.join(columns)} FROM {target} WITH NO DATA; DELETE FROM pg_temp.{name}")
        return f"pg_temp.{name}"

    def _stage_and_upsert(self, cursor, target, columns, keys, action, data) -> int:
        """COPY ``data`` into a temporary table shaped like the target, then one INSERT ...
        SELECT ... ON CONFLICT; returns the rows written."""
        stage = self._stage(cursor, target, columns, "rows")
        cursor.copy_expert(f"COPY {stage} ({', '.join(columns)}) FROM STDIN", _CopySource(data))
        return self._upsert_from(cursor, target, columns, keys, action, stage)

    @staticmethod
    def _upsert_from(cursor, target, columns, keys, action, stage, where="") -> int:
        cols = ", ".join(columns)
        cursor.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} {where} "
                       f"ON CONFLICT ({', '.join(keys)}) {action}")
        return max(cursor.rowcount, 0)

    @staticmethod
    def _delete_from(cursor, target, keys, stage, where="TRUE") -> int:
        """DELETE the target rows whose key is in ``stage`` (rows matching ``where``)."""
        match = " AND ".join(f"pdr_t.{k} = pdr_g.{k}" for k in keys)
        cursor.execute(f"DELETE FROM {target} AS pdr_t USING {stage} AS pdr_g WHERE {where} AND {match}")
        return max(cursor.rowcount, 0)

    def bulk_upsert(self, conn, table, key_names, update_names, rows):
        # psycopg2's executemany() is one round trip per row.  Fastest: COPY the rows into
        # a temporary table shaped like the target, then one INSERT ... SELECT ... ON
        # CONFLICT.  Rows holding a value COPY text cannot express take execute_values.
        if conn.dialect.driver != "psycopg2":
            return False
        names = [n for n in table.c.keys() if n in rows[0]]
        values = self.bound_rows(conn, table, names, rows)
        target, columns, keys, action = self._names(table, names, key_names, update_names)
        try:
            data = copy_lines(values)
        except _NotCopyable:
            return self._execute_values(conn, target, ", ".join(columns), ", ".join(keys), action, values)
        self.run_on_driver(conn, f"COPY {target}",
                           lambda cursor: self._stage_and_upsert(cursor, target, columns, keys, action, data))
        return True

    def key_lookup_settings(self):
        return [_NESTED_LOOP]

    def driver_rows(self, rows):
        return [{name: _exact_parameter(value) for name, value in row.items()} for row in rows]

    def guard_rows(self, conn, table, rows):
        # what PostgreSQL cannot hold, named by its column (the driver's and the server's
        # messages name neither)
        json_columns = {c.name for c in table.columns if isinstance(c.type, JSONText)} if table is not None else ()
        for row in rows:
            for name, value in row.items():
                if isinstance(value, str) and "\x00" in value:
                    raise ValueRefused(f"value of column {name!r} contains the NUL character (U+0000): "
                                       f"PostgreSQL text cannot hold it")
                if (name in json_columns and isinstance(value, str) and "\\u0000" in value
                        and json_has_nul(json.loads(value))):
                    raise ValueRefused(f"value of column {name!r} is a JSON document with \\u0000: PostgreSQL's "
                                       f"jsonb refuses it")

    def bulk_delete(self, conn, table, key_names, keys):
        # COPY the keys into a temporary table, then one DELETE ... USING it.
        if conn.dialect.driver != "psycopg2":
            return False
        try:
            data = copy_text(self.bound_rows(conn, table, key_names, keys))
        except _NotCopyable:
            return False
        target, _, key_list, _ = self._names(table, [], key_names, [])

        def work(cursor):
            stage = self._stage(cursor, target, key_list, "keys")
            cursor.copy_expert(f"COPY {stage} FROM STDIN", _CopySource(data))
            self._delete_from(cursor, target, key_list, stage)

        self.run_on_driver(conn, f"COPY {target}", work)
        return True

    # -- rows passed as text -------------------------------------------------------
    text_format = "copy"
    renders_text = ("copy", "values")
    splits_new_rows = True
    splits_new_rows_above = SMALL_TEXT_ROWS  # smaller batches take the JSON path, no staging table

    def _type_text(self, type_) -> str:
        text = type_.compile(dialect=self.sa).upper()
        text = text.replace("TIMESTAMP(6)", "TIMESTAMP").replace("TIME(6)", "TIME")
        return text.replace("TIMESTAMP WITHOUT TIME ZONE", "TIMESTAMP").replace("TIME WITHOUT TIME ZONE", "TIME")

    def copies_binary_to(self, other):
        return isinstance(other, PostgreSQLDialect)

    def binary_types(self, conn, table, names):
        found = {name: (oid, spelled) for name, oid, spelled in conn.execute(
            sa.text("SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) "
                    "FROM pg_catalog.pg_attribute a WHERE a.attrelid = CAST(:t AS regclass) "
                    "AND a.attnum > 0 AND NOT a.attisdropped"), {"t": self.raw_table(table)})}
        if any(name not in found or found[name][0] >= FIRST_NORMAL_OID for name in names):
            return None
        return [found[name][1] for name in names]

    def _types_check(self, cursor, table, names, types, lock_mode) -> bytes:
        """``table`` locked (``lock_mode``: at least one that ALTER TABLE waits for) until
        the transaction ends, then a statement that fails unless its columns ``names``
        have ``types`` (see ``binary_types``): rows in the binary form are read as those
        types, and a column of another type of the same size would take them silently."""
        message = (f"pdr: the column types of {self.raw_table(table)} are no longer those the reflection "
                   f"was described with; it describes them again")
        return cursor.mogrify(
            f"LOCK TABLE {self.qualified(table.schema, table.name)} IN {lock_mode} MODE; "
            "SELECT CAST(CASE WHEN ARRAY(SELECT format_type(a.atttypid, a.atttypmod) "
            "FROM unnest(CAST(%s AS text[])) WITH ORDINALITY AS n(name, i) LEFT JOIN pg_catalog.pg_attribute a "
            "ON a.attrelid = CAST(%s AS regclass) AND a.attname = n.name AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY n.i) = CAST(%s AS text[]) THEN '0' ELSE %s END AS integer); ",
            (list(names), self.raw_table(table), list(types), message))

    def text_compatible(self, source_type, dest_type, dest=None, *, is_key=False):
        if is_key and getattr(source_type, "collation", None):
            # a nondeterministic collation compares different spellings equal: the batch
            # query's DISTINCT and join would fold keys the Python path keeps apart
            return False
        if dest is not None and dest.text_format == "values":
            return values_spelling(source_type, dest_type) is not None
        try:
            src, dst = self._type_text(source_type), self._type_text(dest_type)
        except Exception:  # a type SQLAlchemy cannot render: take the Python path
            return False
        if "[" in src or "[" in dst:  # arrays: the Python path converts them (to JSON text, ...)
            return src == dst
        if src == dst:
            return True
        textual = src == "TEXT" or src.startswith(("VARCHAR", "CHARACTER VARYING"))
        return (textual and dst == "TEXT") or (src == "JSON" and dst == "JSONB")

    def _read_only_snapshot(self, conn):
        """One REPEATABLE READ snapshot for every query of a ``copy_out``."""
        # the batch's keys are few next to the source table (even once the event table's
        # statistics say how many): look each one up, never scan the table.  One round
        # trip: SET TRANSACTION comes first in the transaction either way.
        conn.exec_driver_sql("; ".join(["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                                        *self.key_lookup_settings()]))

    @contextlib.contextmanager
    def statement_transactions(self, conn):
        # psycopg2 sends BEGIN before a transaction's first statement and ROLLBACK after:
        # two round trips of their own around each read.  In autocommit mode it sends
        # neither, and SQLAlchemy's rollback is then a no-op in the driver.
        from psycopg2.extensions import STATUS_READY

        raw = conn.connection.dbapi_connection
        if raw.autocommit or raw.status != STATUS_READY:
            yield
            return
        raw.autocommit = True
        try:
            yield
        finally:
            try:
                raw.autocommit = False  # (no transaction was opened meanwhile)
            except Exception as exc:  # a connection broken meanwhile: never reused as it is
                conn.invalidate(exc)

    def copy_out(self, conn, queries, fmt="copy", limit=None, values=None, check=None):
        # COPY takes no parameters: each SELECT is compiled with parameters as usual and the
        # driver spells them in (mogrify), as it would for a query.
        if fmt == "values":
            queries = [values_query(query) for query in queries]
        elif fmt not in ("copy", "binary") or (fmt == "binary" and check is None):
            raise NotImplementedError(f"PostgreSQL does not spell rows as {fmt!r}")
        out = []
        counter = TextCounter(limit)
        # one query (a batch, a load chunk) is one snapshot by itself: sent with the
        # settings in one string, which PostgreSQL runs as one implicit transaction (SET
        # LOCAL holds in it), in autocommit mode — one round trip instead of four
        single = fmt != "values" and len(queries) == 1
        prefix = "".join(f"{statement}; " for statement in self.key_lookup_settings()) if single else ""

        def work(cursor):
            from psycopg2.extensions import encodings

            codec = encodings.get(cursor.connection.encoding, "utf-8")
            for query in queries:
                sql = cursor.mogrify(*self.driver_statement(conn, query, values)).decode(codec)
                counted = counter.rows
                if fmt == "values":
                    rows, flags = self._values_rows(cursor, sql, counter)
                    out.append(TextRows(fmt, rows, len(rows), counter.largest, flags=flags))
                elif fmt == "binary":
                    # the table locked (its column types stay), then its types checked
                    sink = _BinarySink(counter)
                    checked = self._types_check(cursor, *check, "ACCESS SHARE").decode(codec)
                    cursor.copy_expert(f"{prefix}{checked}COPY ({sql}) TO STDOUT (FORMAT binary)", sink)
                    rows = sink.rows()
                    out.append(TextRows(fmt, rows, len(rows), counter.largest, types=tuple(check[2])))
                else:
                    sink = _CopySink(counter)
                    cursor.copy_expert(f"{prefix}COPY ({sql}) TO STDOUT", sink)
                    # the rows as psycopg2 wrote them: never joined (COPY FROM reads the list)
                    out.append(TextRows(fmt, sink.parts, counter.rows - counted, counter.largest))

        if single:
            with self.statement_transactions(conn):
                try:
                    self.run_on_driver(conn, "COPY ... TO STDOUT", work)
                finally:
                    conn.rollback()
            return out
        self._read_only_snapshot(conn)
        try:
            self.run_on_driver(conn, "COPY ... TO STDOUT", work)
        finally:
            conn.rollback()
        return out

    @staticmethod
    def _values_rows(cursor, sql, counter) -> tuple[list, bytes | None]:
        """The literals of ``sql`` (its last column), read through a server-side cursor and
        counted, and the rows' marks when it has two columns (its first, a boolean: one
        byte a row, 1 for true).  Kept apart, not as the driver's tuples: a batch of
        20,000 rows holds 1 MB less, twice over while the next batch is read."""
        rows, flags, marked = [], bytearray(), False
        named = cursor.connection.cursor(name="pdr_values_out")
        try:
            named.execute(sql)
            size = 1
            while True:
                part = named.fetchmany(size)
                if not part:
                    break
                for row in part:
                    text = row[-1]
                    if text is None:
                        # a value with no MySQL spelling the Python path would agree with
                        # (infinity, BC dates, NaN): that path decides what happens to it
                        raise NotImplementedError("a value with no MySQL literal")
                    counter.add(len(text))
                    rows.append(text)
                marked = len(part[0]) > 1
                if marked:
                    flags.extend([bool(row[0]) for row in part])
                size = min(1000, size * 5)
        finally:
            named.close()
        return rows, (bytes(flags) if marked or not rows else None)

    def _marked_statements(self, target, columns, keys, action, gone, present,
                           only_if: str = "") -> list[tuple[str, str, str]]:
        """(CTE name, statement, JSON parameter) per kind of a small marked batch: the rows
        as JSON read by the target's own column types (json_populate_recordset feeds each
        string to the type's input function, as COPY does): no temporary table, made and
        dropped with each transaction (catalog writes), and fewer round trips.
        ``only_if``: a condition both statements write under (SQL)."""
        rowtype = f"NULL::{_esc(target)}"
        out = []
        if gone:
            match = " AND ".join([*(f"pdr_t.{_esc(k)} = pdr_g.{_esc(k)}" for k in keys), *filter(None, [only_if])])
            out.append(("pdr_deleted", f"DELETE FROM {_esc(target)} AS pdr_t USING json_populate_recordset({rowtype}, "
                                       f"%s) AS pdr_g WHERE {match}", json.dumps(gone, ensure_ascii=False)))
        if present:
            cols = _esc(", ".join(columns))
            where = f" WHERE {only_if}" if only_if else ""
            out.append(("pdr_written", f"INSERT INTO {_esc(target)} ({cols}) SELECT {cols} FROM "
                                       f"json_populate_recordset({rowtype}, %s){where} "
                                       f"ON CONFLICT ({_esc(', '.join(keys))}) {_esc(action)}",
                        json.dumps(present, ensure_ascii=False)))
        return out

    commits_asynchronously = True

    def make_durable(self, conn):
        # a transaction with an xid writes a commit record, and with synchronous_commit on
        # (the default) waits for the WAL to be flushed up to it: every earlier commit too
        conn.exec_driver_sql("SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id()")
        conn.commit()

    def commit_asynchronously(self, conn):
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")

    load_writers = 2

    def bound_lock_waits(self, conn, seconds):
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(seconds * 1000))}")

    def apply_marked_guarded(self, conn, table, names, key_names, update_names, rows, guard, *,
                             asynchronous=False):
        small = _small_text_batch(table, names, rows)
        if small is None:
            return None
        target, columns, keys, action = self._names(table, names, key_names, update_names)
        # one statement, one implicit transaction: the guard's UPDATE runs first (the
        # others read its result), and nothing is written when it matched no row
        parts = self._marked_statements(target, columns, keys, action, *small,
                                        only_if="EXISTS (SELECT FROM pdr_moved)")
        settings = "".join(f"{statement}; " for statement in [
            *self.key_lookup_settings(), *(["SET LOCAL synchronous_commit = off"] if asynchronous else [])])
        result = []

        def work(cursor):
            from psycopg2.extensions import encodings

            guarded = cursor.mogrify(*self.driver_statement(conn, guard.returning(sa.literal_column("1"))))
            ctes = [f"pdr_moved AS ({_esc(guarded.decode(encodings.get(cursor.connection.encoding, 'utf-8')))})"]
            counts = ["(SELECT count(*) FROM pdr_moved)"]
            for name, statement, _ in parts:
                ctes.append(f"{name} AS ({statement} RETURNING 1)")
                counts.append(f"(SELECT count(*) FROM {name})")
            cursor.execute(f"{settings}WITH {', '.join(ctes)} SELECT {', '.join(counts)}",
                           [parameter for _, _, parameter in parts])
            result.extend(cursor.fetchone())

        with self.statement_transactions(conn):
            try:
                self.run_on_driver(conn, f"INSERT INTO {target}", work)
            finally:
                conn.rollback()  # (nothing to end: the statement committed or failed whole)
        return result[0] == 1, sum(result[1:])

    def apply_marked(self, conn, table, names, key_names, update_names, rows):
        target, columns, keys, action = self._names(table, names, key_names, update_names)
        written = 0
        small = _small_text_batch(table, names, rows)
        if small is not None:
            parts = self._marked_statements(target, columns, keys, action, *small)

            def work(cursor):
                nonlocal written
                settings = "".join(f"{statement}; " for statement in self.key_lookup_settings())
                for _, statement, parameter in parts:
                    cursor.execute(f"{settings}{statement}", (parameter,))
                    written += max(cursor.rowcount, 0)

            self.run_on_driver(conn, f"INSERT INTO {target}", work)
            return written

        new, data = _split_new(rows) if _direct_insert_due(conn, target) else ([], rows.data)

        def work(cursor):
            nonlocal written, data
            stage = self._stage(cursor, target, ["NULL::boolean AS pdr_gone", *columns], "marked")
            for statement in self.key_lookup_settings():
                cursor.execute(statement)
            if new:
                inserted = self._insert_new(conn, cursor, target, columns, new)
                if inserted is None:  # a key was there after all: these rows are upserted too
                    data = [*data, *(f"{KEPT_FLAG}\t{line}" for line in new)]
                else:
                    written += inserted
            # ("n" rows left in the data are read as false, like "f")
            cursor.copy_expert(f"COPY {stage} FROM STDIN", _CopySource(data))
            written += self._delete_from(cursor, target, keys, stage, where="pdr_g.pdr_gone")
            written += self._upsert_from(cursor, target, columns, keys, action, stage, where="WHERE NOT pdr_gone")

        self.run_on_driver(conn, f"COPY {target}", work)
        return written

    @staticmethod
    def _insert_new(conn, cursor, target, columns, lines) -> int | None:
        """COPY rows flagged "new" (without their flag) straight into the target: no staging
        table, no key lookups.  Under a savepoint: when a key is there after all (the row
        was read current by an earlier batch, or written by someone else), the COPY is
        undone and None returned (the caller upserts the rows), and the next batches to
        this target skip the direct insert for a while (_direct_insert_due)."""
        from psycopg2 import errors

        cursor.execute("SAVEPOINT pdr_new")
        try:
            cursor.copy_expert(f"COPY {target} ({', '.join(columns)}) FROM STDIN", _CopySource(list(lines)))
        except errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT pdr_new")
            _direct_insert_failed(conn, target)
            return None
        _direct_insert_failed(conn, target, failed=False)
        return len(lines)

    def apply_copied(self, conn, table, names, key_names, update_names, rows, fresh=False):
        target, columns, keys, action = self._names(table, names, key_names, update_names)
        written = 0
        if rows.fmt == "binary" and not fresh:
            raise TextRefused("rows in the binary form are only written straight into their table")

        def work(cursor):
            nonlocal written
            if rows.fmt == "binary":  # the table locked (its column types stay), its types checked
                cursor.execute(self._types_check(cursor, table, names, rows.types, "ROW EXCLUSIVE"))
                cursor.copy_expert(f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT binary)",
                                   _BinarySource(rows.data))
                written = rows.count
                return
            if fresh:  # straight into the target: no staging table, no key lookups
                cursor.copy_expert(f"COPY {target} ({', '.join(columns)}) FROM STDIN", _CopySource(rows.data))
                written = rows.count
                return
            written = self._stage_and_upsert(cursor, target, columns, keys, action, rows.data)

        self.run_on_driver(conn, f"COPY {target}", work)
        return written

    def _execute_values(self, conn, target, columns, keys, action, values):
        from psycopg2.extras import execute_values

        def esc(text):  # execute_values reads "%" as a placeholder: double it in names
            return text.replace("%", "%%")

        sql = f"INSERT INTO {esc(target)} ({esc(columns)}) VALUES %s ON CONFLICT ({esc(keys)}) {esc(action)}"
        values = [tuple(map(_exact_parameter, row)) for row in values]
        self.run_on_driver(conn, sql, lambda cursor: execute_values(cursor, sql, values, page_size=1000))
        return True

    # -- types ---------------------------------------------------------------
    def destination_type(self, generic, *, is_key):
        if isinstance(generic, sa.Uuid):
            return pg.UUID(as_uuid=True)
        if isinstance(generic, sa.JSON):
            return pg.JSONB()
        if isinstance(generic, sa.LargeBinary):
            return pg.BYTEA()
        if isinstance(generic, sa.Float):
            single = generic.precision is not None and generic.precision <= 24
            return pg.REAL() if single and not isinstance(generic, sa.Double) else pg.DOUBLE_PRECISION()
        if isinstance(generic, sa.DateTime):
            return pg.TIMESTAMP(timezone=bool(generic.timezone), precision=6)
        if isinstance(generic, sa.Time):
            return pg.TIME(precision=6)
        if isinstance(generic, sa.Enum):
            return sa.Text()
        if isinstance(generic, sa.String) and not generic.length:
            return sa.Text()
        return generic

    def explain_error(self, exc):
        text = str(getattr(exc, "orig", exc))
        if "permission denied" in text:
            return ("The PostgreSQL user lacks a privilege: it needs CREATE on the schema and "
                    "TRIGGER on the table to install capture, SELECT to read rows.")
        return None

    # -- failed writes -------------------------------------------------------
    driver_modules = ("psycopg2",)

    def is_data_error(self, error):
        # SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation), and
        # 54000 for one row: "index row requires 16016 bytes, maximum size is 8191"
        code = getattr(error, "pgcode", None)
        if code:
            return code[:2] in ("22", "23") or code == "54000"
        # psycopg2 refuses NUL in text before sending (a raw ValueError, through SQLAlchemy too)
        return (type(error) is ValueError and str(error) == _NUL_REFUSED) or unencodable(error)
