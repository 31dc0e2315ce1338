"""Firebird (tested on Firebird 3.0.11): one row trigger per table, MON$TRANSACTIONS horizons.

Firebird numbers every transaction when it starts (``CURRENT_TRANSACTION``), in start
order, and its monitoring tables give a consistent snapshot of the transactions open
at one moment: ``MON$DATABASE.MON$NEXT_TRANSACTION`` is above the number of every
transaction started before it, and ``MON$TRANSACTIONS`` lists every open one (to
SYSDBA, the database's owner and RDB$ADMIN; another user sees only its own).  See
``transaction_horizon`` and docs/concepts.md.

What Firebird 3 does differently, handled here:

- DDL takes effect at commit: a table created in a transaction cannot be used by it.
  The engines django-pdr creates commit after every DDL statement (``prepare_engine``),
  as MySQL does by itself (``transactional_ddl = False``).
- no ``IF [NOT] EXISTS`` in DDL: guarded by a look in the system tables.
- no upsert of its own beyond ``UPDATE OR INSERT`` (which sets every column): ``MERGE``.
- no row values (``(a, b) IN (...)``), no UTC clock, no 128-bit integers, DECFLOAT or
  time zones (Firebird 4+), NUMERIC of at most 18 digits, TIMESTAMP/TIME kept to
  1/10000 s, identifiers of at most 31 bytes.
"""
from __future__ import annotations

import datetime
import decimal
import re

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from ..errors import ConfigurationError, ValueRefused
from .base import (OP_DELETE, OP_INSERT, OP_UPDATE, CaptureNames, Dialect, Horizon, _slug, column_list,
                   event_key_name, unencodable)

#: Firebird status codes (gdscodes) saying the row itself cannot be stored (checked on 3.0.11).
_DATA_ERRORS = frozenset({
    335544347,  # isc_not_valid: validation error for column (NOT NULL, domain CHECK)
    335544349,  # isc_no_dup: attempt to store duplicate value (unique index)
    335544665,  # isc_unique_key_violation: violation of PRIMARY or UNIQUE KEY constraint
    335544466,  # isc_foreign_key: violation of FOREIGN KEY constraint
    335544558,  # isc_check_constraint: Operation violates CHECK constraint
    335544321,  # isc_arith_except: arithmetic exception, numeric overflow, or string truncation
    335544914,  # isc_string_truncation
    335544779,  # isc_numeric_out_of_range
    335544334,  # isc_convert_error: conversion error from string
    335544849,  # isc_malformed_string: Malformed string
    335544565,  # isc_transliteration_failed: Cannot transliterate character between character sets
    335544778,  # isc_exception_integer_overflow
    335544780,  # isc_exception_float_overflow
})

#: Largest precision of a Firebird 3 NUMERIC/DECIMAL (Firebird 4 has 38).
MAX_NUMERIC_PRECISION = 18

#: Firebird 3 keeps times to 1/10000 of a second.
_TIME_UNIT_MICROSECONDS = 100

#: Marks a statement that changes the schema without starting with a DDL verb (an
#: EXECUTE BLOCK running DDL): the engine commits after it as after any DDL.
_DDL_MARK = "/* pdr:ddl */"
_DDL = re.compile(r"\s*(?:(?:CREATE|ALTER|DROP|RECREATE|COMMENT|GRANT|REVOKE)\b|/\* pdr:ddl \*/)", re.I)

#: Users who see every attachment's transactions in MON$TRANSACTIONS (others see their own).
_MONITORS_ALL = ("(CURRENT_USER = 'SYSDBA' OR CURRENT_ROLE = 'RDB$ADMIN' OR CURRENT_USER = "
                 "(SELECT TRIM(r.RDB$OWNER_NAME) FROM RDB$RELATIONS r WHERE r.RDB$RELATION_NAME = 'RDB$DATABASE'))")


def _types():
    from sqlalchemy_firebird import types as fb

    return fb


_BLOB_CLASS = None


def _blob_type(binary: bool, segment_size=None):
    """BLOB SUB_TYPE BINARY / TEXT whose bind processor passes NULL (sqlalchemy-firebird
    2.2's BLOB turns every value into bytes, and fails on None)."""
    global _BLOB_CLASS
    fb = _types()
    if not binary:
        return fb.FBTEXT()
    if _BLOB_CLASS is None:
        class _Blob(fb.FBBLOB):
            cache_ok = True

            def bind_processor(self, dialect):
                def process(value):
                    return None if value is None else bytes(value)

                return process

        _BLOB_CLASS = _Blob
    return _BLOB_CLASS(segment_size)


#: A parameter with the cast sqlalchemy-firebird puts on it: CAST(? AS TYPE).
_BIND_CAST = re.compile(r"CAST\((\S+) AS .+\)")


class _Merge(Executable, ClauseElement):
    """MERGE INTO table USING (rows of parameters) ON the key: update ``update_names`` of a
    matched row, insert ``names`` otherwise.  One row (``rows`` 1): parameters named by
    column, executed once per row (executemany); ``rows`` above 1: ``merge_bind(i, j)``
    names the parameter of row i, column j (one execution, one round trip)."""

    inherit_cache = False

    def __init__(self, table, names, key_names, update_names, rows=1):
        self.table, self.names = table, list(names)
        self.key_names, self.update_names = list(key_names), list(update_names)
        self.rows = rows


def merge_bind(row: int, column: int) -> str:
    return f"pdr_{row}_{column}"


@compiles(_Merge)
def _compile_merge(element, compiler, **kw):
    quote = compiler.preparer.quote
    table = element.table

    def value(name, key):
        # the parameter, cast to the column's type as Firebird names it (the cast the
        # compiler itself puts on a parameter names the binding type's implementation:
        # INTEGER for a coercing type over a BIGINT column)
        type_ = table.c[name].type
        placeholder = compiler.process(sa.bindparam(key, type_=type_), **kw)
        bare = _BIND_CAST.fullmatch(placeholder)
        return f"CAST({bare.group(1) if bare else placeholder} AS {type_.compile(dialect=compiler.dialect)})"

    def row(i):
        return ", ".join(f"{value(name, name if element.rows == 1 else merge_bind(i, j))} AS {quote(name)}"
                         for j, name in enumerate(element.names))

    source = " UNION ALL ".join(f"SELECT {row(i)} FROM RDB$DATABASE" for i in range(element.rows))
    on = " AND ".join(f"pdr_t.{quote(n)} = pdr_s.{quote(n)}" for n in element.key_names)
    text = (f"MERGE INTO {compiler.preparer.format_table(table)} AS pdr_t "
            f"USING ({source}) AS pdr_s ON {on}")
    if element.update_names:
        text += " WHEN MATCHED THEN UPDATE SET " + ", ".join(
            f"{quote(n)} = pdr_s.{quote(n)}" for n in element.update_names)
    text += (f" WHEN NOT MATCHED THEN INSERT ({', '.join(quote(n) for n in element.names)}) "
             f"VALUES ({', '.join(f'pdr_s.{quote(n)}' for n in element.names)})")
    return text


class FirebirdDialect(Dialect):
    names = ("firebird.firebird", "firebird")
    label = "Firebird"
    kind_label = "Firebird"
    system_schemas = frozenset()
    driver = "firebird+firebird"
    url_defaults = {"charset": "UTF8"}
    install_hint = ("Install firebird-driver and sqlalchemy-firebird: pip install 'django-pdr[firebird]' "
                    "(the client library libfbclient.so.2 comes with the Firebird client: "
                    "apt-get install libfbclient2).")
    unreachable_hint = ("check host, port, database name, user and password (the database name is the "
                        "database file's path on the server, or an alias of its databases.conf), and that the "
                        "Firebird server is running")
    tested_live = True  # on Firebird 3.0.11 (Debian's firebird3.0-server)
    database_label = "Database file path on the server (or its alias)"
    database_placeholder = "/var/lib/firebird/3.0/data/app.fdb"
    max_identifier_length = 31
    identifier_length_in_bytes = True
    max_parameters = 500  # Firebird 3 statements are at most 64 KB: 500 conditions of long names fit
    transactional_ddl = False  # the engine commits after every DDL statement (prepare_engine)
    #: Firebird 3 runs ``key IN (SELECT ... FROM event table)`` as a subquery per source row
    #: (a scan of the whole table a batch: 414 events/s on a 12k-row table, measured):
    #: a batch's rows are read by lists of keys instead (index lookups).
    joins_event_keys = False

    # -- names -------------------------------------------------------------
    @classmethod
    def identifier_problem(cls, name):
        if name and "\x00" not in name and not cls.identifier_fits(name):
            return (f"Firebird 3 names are at most 31 bytes (UTF-8), this one has {cls.identifier_size(name)} "
                    f"(Firebird 4+ allows 63 characters, but the server django-pdr is tested with is 3.0)")
        problem = super().identifier_problem(name)
        if problem:
            return problem
        if name.endswith(" "):
            return f"{cls.label} names cannot end with a space (the server drops it)"
        wide = "".join(dict.fromkeys(c for c in name if ord(c) > 0xFFFF))
        if wide:
            return f"{cls.label} 3 names cannot hold characters outside the Basic Multilingual Plane: {wide!r}"
        return None

    def capture_names(self, schema, table):
        """One trigger (AFTER INSERT OR UPDATE OR DELETE) per table, named ``..._trg``."""
        import hashlib

        digest = hashlib.sha1(f"{schema or ''}\x00{table}".encode("utf-8")).hexdigest()[:10]
        base = f"pdr_{_slug(table, 11)}_{digest}"  # 4 + 11 + 1 + 10 + 4: at most 30 bytes
        trigger = f"{base}_trg"
        return CaptureNames(event_table=f"{base}_ev", insert_trigger=trigger, update_trigger=trigger,
                            delete_trigger=trigger, function="")

    def _stored(self, name: str) -> str:
        """``name`` as Firebird stores it in its system tables (unquoted names upper-cased)."""
        return self.sa.denormalize_name(name)

    @staticmethod
    def _normalized(column: str) -> str:
        """SQL spelling a system-table name column as SQLAlchemy names it (lower case for a
        name stored in upper case)."""
        return (f"CASE WHEN TRIM({column}) = UPPER(TRIM({column})) THEN LOWER(TRIM({column})) "
                f"ELSE TRIM({column}) END")

    @staticmethod
    def _string(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    # -- connection --------------------------------------------------------
    @classmethod
    def connect_args(cls, timeout):
        return {}

    @classmethod
    def ping_query(cls):
        return sa.text("SELECT 1 FROM RDB$DATABASE")

    #: Seconds a statement waits for a row lock before failing (a transient error).
    lock_timeout = 30
    #: READ COMMITTED (below): a statement sees what commits while it runs.
    statement_snapshot = False

    @classmethod
    def prepare_engine(cls, engine):
        # READ COMMITTED (record versions, waiting for locks): every statement sees what
        # is committed when it starts; the visibility proof depends on it (see
        # transaction_horizon).  sqlalchemy-firebird 2.2 cannot set an isolation level.
        @sa.event.listens_for(engine, "connect")
        def _read_committed(dbapi_connection, record):
            from firebird.driver import Isolation, tpb

            dbapi_connection.main_transaction.default_tpb = tpb(Isolation.READ_COMMITTED_RECORD_VERSION,
                                                                lock_timeout=cls.lock_timeout)

        # DDL takes effect at commit in Firebird: commit at once, as MySQL does
        @sa.event.listens_for(engine, "after_cursor_execute")
        def _commit_ddl(conn, cursor, statement, parameters, context, executemany):
            if _DDL.match(statement):
                conn.connection.dbapi_connection.commit()

    # -- capture: event table ----------------------------------------------
    def event_time_default(self):
        # Firebird 3 has no UTC clock: the server's local time (run it in UTC)
        return sa.text("CURRENT_TIMESTAMP")

    def event_key_type(self, source_type):
        if isinstance(source_type, sa.Text) or isinstance(source_type, sa.LargeBinary):
            raise ConfigurationError("Firebird cannot index a BLOB: a BLOB key column is not supported")
        return source_type

    def create_table_statement(self, table, if_not_exists=False):
        text = str(sa.schema.CreateTable(table).compile(dialect=self.sa)).strip()
        if not if_not_exists:
            return text
        return (f"{_DDL_MARK} EXECUTE BLOCK AS BEGIN IF (NOT EXISTS(SELECT 1 FROM RDB$RELATIONS "
                f"WHERE RDB$RELATION_NAME = {self._string(self._stored(table.name))})) THEN "
                f"EXECUTE STATEMENT {self._string(text)}; END")

    def drop_table_statement(self, table, if_exists=False):
        text = f"DROP TABLE {self.raw_table(table)}"
        if not if_exists:
            return text
        return (f"{_DDL_MARK} EXECUTE BLOCK AS BEGIN IF (EXISTS(SELECT 1 FROM RDB$RELATIONS "
                f"WHERE RDB$RELATION_NAME = {self._string(self._stored(table.name))})) THEN "
                f"EXECUTE STATEMENT {self._string(text)}; END")

    # -- capture: triggers -------------------------------------------------
    def _insert_event(self, event, op, row, key_names):
        keys = [event_key_name(i) for i in range(len(key_names))]
        values = ", ".join(f"{row}.{self.quote(n)}" for n in key_names)
        return (f"INSERT INTO {self.quote(event.name)} ({column_list(self, ['pdr_op', 'pdr_txid', *keys])}) "
                f"VALUES ({op}, CURRENT_TRANSACTION, {values});")

    def create_trigger_statements(self, source, event, names, key_names, notify=False):
        # A key change is a delete of the old key and an upsert of the new one.  Text keys
        # are compared by the column's collation, trailing spaces ignored: for them every
        # update writes both events (the worker looks both keys up).
        text_key = any(isinstance(source.c[n].type, sa.String) for n in key_names)
        changed = "TRUE" if text_key else " OR ".join(
            f"OLD.{self.quote(n)} IS DISTINCT FROM NEW.{self.quote(n)}" for n in key_names)
        return [
            f"CREATE OR ALTER TRIGGER {self.quote(names.insert_trigger)} FOR {self.quote(source.name)} "
            f"ACTIVE AFTER INSERT OR UPDATE OR DELETE POSITION 32000 AS BEGIN "
            f"IF (DELETING OR (UPDATING AND ({changed}))) THEN "
            + self._insert_event(event, f"'{OP_DELETE}'", "OLD", key_names)
            + " IF (NOT DELETING) THEN "
            + self._insert_event(event, f"IIF(INSERTING, '{OP_INSERT}', '{OP_UPDATE}')", "NEW", key_names)
            + " END"
        ]

    def replace_needs_drop(self):
        return False  # CREATE OR ALTER TRIGGER replaces it in one statement

    def drop_trigger_statements(self, source, names, triggers=None):
        chosen = names.triggers if triggers is None else [t for t in names.triggers if t in triggers]
        return [f"{_DDL_MARK} EXECUTE BLOCK AS BEGIN IF (EXISTS(SELECT 1 FROM RDB$TRIGGERS "
                f"WHERE RDB$TRIGGER_NAME = {self._string(self._stored(t))})) THEN "
                f"EXECUTE STATEMENT {self._string('DROP TRIGGER ' + self.raw_name(t))}; END"
                for t in dict.fromkeys(chosen)]

    def existing_triggers_query(self, schema, table_name, names):
        return sa.text(
            f"SELECT {self._normalized('RDB$TRIGGER_NAME')} FROM RDB$TRIGGERS "
            f"WHERE RDB$RELATION_NAME = :table AND COALESCE(RDB$TRIGGER_INACTIVE, 0) = 0"
        ).bindparams(table=self._stored(table_name))

    def schema_triggers_query(self, schema):
        return sa.text(f"SELECT {self._normalized('RDB$TRIGGER_NAME')} FROM RDB$TRIGGERS "
                       f"WHERE COALESCE(RDB$TRIGGER_INACTIVE, 0) = 0 AND COALESCE(RDB$SYSTEM_FLAG, 0) = 0")

    # -- visibility --------------------------------------------------------
    def transaction_horizon(self, conn, event_table):
        # One statement, one monitoring snapshot (taken at the transaction's first look at
        # a MON$ table; the reader's transaction began after its previous read ended).
        # next: MON$NEXT_TRANSACTION, above every transaction started before the snapshot;
        # oldest: the lowest number of another read-write transaction open in it (a
        # read-only one cannot write events; this one only reads).
        row = conn.execute(sa.text(
            f"SELECT d.MON$NEXT_TRANSACTION, (SELECT MIN(t.MON$TRANSACTION_ID) FROM MON$TRANSACTIONS t "
            f"WHERE t.MON$TRANSACTION_ID <> CURRENT_TRANSACTION AND t.MON$READ_ONLY = 0), "
            f"IIF({_MONITORS_ALL}, 1, 0) FROM MON$DATABASE d")).one()
        if not row[2]:
            raise ConfigurationError(
                "Firebird shows this user only its own transactions in MON$TRANSACTIONS: connect to the "
                "source database as SYSDBA, as the database's owner, or with the role RDB$ADMIN, so that "
                "the worker can prove that no transaction still holds an earlier event id")
        next_ = int(row[0])
        return Horizon(next_, int(row[1]) if row[1] is not None else next_)

    # -- apply ---------------------------------------------------------------
    def lock_row(self, conn, table, where, column):
        # FOR UPDATE WITH LOCK (sqlalchemy-firebird renders WITH LOCK for nowait; the
        # transaction's lock timeout applies)
        return conn.execute(sa.select(column).where(where).with_for_update(nowait=True)).scalar()

    def key_filter(self, columns, keys):
        if len(columns) == 1:
            return columns[0].in_([k[0] for k in keys])
        # no row values in Firebird
        return sa.or_(*[sa.and_(*[c == v for c, v in zip(columns, key)]) for key in keys])

    #: Bytes of statement text and of input message one MERGE of several rows may take
    #: (Firebird 3 refuses statements over 64 KB; its messages are bounded alike).
    merge_text_budget = 56_000
    merge_message_budget = 48_000
    #: Most rows and parameters one MERGE carries.
    merge_rows = 250
    merge_parameters = 2000

    def upsert_batches(self, table, key_names, update_names, rows):
        """One MERGE of up to ``merge_rows`` rows per statement (its source a UNION ALL of
        one-row SELECTs of parameters): one round trip per statement instead of per row.
        A batch's rows have distinct keys (no target row is matched twice)."""
        batches, groups = [], {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        for names, group in groups.items():
            size = 1 if len(group) == 1 else self._merge_rows(table, names, key_names, update_names)
            if size == 1:  # one row a statement: executemany
                batches.append((_Merge(table, names, key_names, update_names), group))
                continue
            for start in range(0, len(group), size):
                part = group[start:start + size]
                if len(part) == 1:  # the last one alone: its parameters named by column
                    batches.append((_Merge(table, names, key_names, update_names), part))
                    continue
                params = {merge_bind(i, j): row[name] for i, row in enumerate(part)
                          for j, name in enumerate(names)}
                batches.append((_Merge(table, names, key_names, update_names, rows=len(part)), params))
        return batches

    def _merge_rows(self, table, names, key_names, update_names) -> int:
        """Rows one MERGE may carry: its text under ``merge_text_budget`` characters (each
        row's SELECT measured as rendered), its parameters under ``merge_message_budget``
        bytes (each value at the most its column's type takes) and ``merge_parameters``."""
        one = str(_Merge(table, names, key_names, update_names, rows=2).compile(dialect=self.sa))
        single = str(_Merge(table, names, key_names, update_names, rows=1).compile(dialect=self.sa))
        per_row_text = max(1, len(one) - len(single))
        per_row_message = sum(_message_bytes(table.c[n].type) for n in names)
        return max(1, min(self.merge_rows, self.merge_parameters // max(1, len(names)),
                          (self.merge_text_budget - len(single)) // per_row_text,
                          self.merge_message_budget // max(1, per_row_message)))

    def add_column_statement(self, table, column):
        return f"ALTER TABLE {self.quote(table.name)} ADD {self.quote(column.name)} " \
               f"{column.type.compile(dialect=self.sa)}"

    # -- types ---------------------------------------------------------------
    def refine_reflected(self, conn, table):
        fb = _types()
        for column in table.columns:
            if type(column.type) is fb.FBBLOB:
                # the type that writes NULL (sqlalchemy-firebird's fails on it)
                column.type = _blob_type(True, column.type.segment_size)
            elif type(column.type) is fb.FBBIGINT:
                # sqlalchemy-firebird 2.2 binds its reflected BIGINT as an INTEGER parameter
                # (CAST(? AS INTEGER): "numeric overflow" above 2**31 - 1); the generic type
                # binds as BIGINT
                column.type = sa.BigInteger()

    def generic_type(self, source_type):
        fb = _types()
        # sqlalchemy-firebird's integer types all read as a generic INTEGER
        if isinstance(source_type, fb.FBBIGINT):
            return sa.BigInteger()
        if isinstance(source_type, fb.FBSMALLINT):
            return sa.SmallInteger()
        if isinstance(source_type, fb.FBINT128):  # Firebird 4+
            return sa.Numeric(38, 0)
        if isinstance(source_type, fb.FBTEXT):
            return sa.Text()
        if isinstance(source_type, fb.FBBLOB):
            return sa.LargeBinary()
        if isinstance(source_type, (fb.FBBINARY, fb.FBVARBINARY)):
            return sa.LargeBinary(source_type.length)
        if isinstance(source_type, (fb.FBFLOAT, fb.FBDOUBLE_PRECISION)):
            generic = sa.Double() if isinstance(source_type, fb.FBDOUBLE_PRECISION) else sa.Float(24)
            return generic
        if isinstance(source_type, fb.FBCHAR):
            return sa.CHAR(source_type.length)
        if isinstance(source_type, fb.FBVARCHAR):
            return sa.String(source_type.length)
        return super().generic_type(source_type)

    def destination_type(self, generic, *, is_key):
        fb = _types()
        if isinstance(generic, sa.Uuid):
            return fb.FBCHAR(36)
        if isinstance(generic, sa.Boolean):
            return sa.Boolean()
        if isinstance(generic, sa.LargeBinary):
            if is_key:
                return fb.FBVARBINARY(min(generic.length or 255, 255))
            return _blob_type(binary=True)
        if isinstance(generic, sa.Float):
            if not isinstance(generic, sa.Double) and (generic.precision or 53) <= 24:
                return fb.FBFLOAT()
            return fb.FBDOUBLE_PRECISION()
        if isinstance(generic, sa.Numeric):
            if isinstance(generic, (sa.Integer,)):
                return generic
            precision, scale = generic.precision, generic.scale
            if precision is None or precision > MAX_NUMERIC_PRECISION:
                raise ConfigurationError(
                    f"Firebird 3 holds numbers of at most {MAX_NUMERIC_PRECISION} digits: a "
                    f"NUMERIC({precision or 'unbounded'}{f', {scale}' if scale is not None else ''}) column "
                    f"cannot be replicated exactly (Firebird 4+ has 38 digits and DECFLOAT, not tested here); "
                    f"map it with a transform or choose another destination")
            return fb.FBNUMERIC(precision=precision, scale=scale or 0)
        if isinstance(generic, sa.DateTime):
            return fb.FBTIMESTAMP()
        if isinstance(generic, sa.Time):
            return fb.FBTIME()
        if isinstance(generic, sa.Date):
            return fb.FBDATE()
        if isinstance(generic, (sa.JSON, sa.Interval)):
            return fb.FBTEXT()
        if isinstance(generic, sa.Enum):
            return fb.FBVARCHAR(255)
        if isinstance(generic, sa.String):
            length = generic.length
            if is_key:
                return fb.FBVARCHAR(min(length or 255, 255))
            if isinstance(generic, sa.Text) or not length or length > 8191:
                return fb.FBTEXT()
            return fb.FBCHAR(length) if isinstance(generic, sa.CHAR) else fb.FBVARCHAR(length)
        return generic

    # -- failed writes -------------------------------------------------------
    driver_modules = ("firebird",)

    def guard_rows(self, conn, table, rows):
        for row in rows:
            for name, value in row.items():
                if isinstance(value, (datetime.datetime, datetime.time)) \
                        and value.microsecond % _TIME_UNIT_MICROSECONDS:
                    raise ValueRefused(f"value of column {name!r} is {value.isoformat()}: Firebird keeps "
                                       f"times to 1/10000 s, it would lose its last digits")
                if isinstance(value, datetime.datetime) and value.replace(tzinfo=None) < _EARLIEST_TIMESTAMP:
                    raise ValueRefused(f"value of column {name!r} is {value.isoformat()}: firebird-driver "
                                       f"cannot send a TIMESTAMP before 1858-11-17")
                if isinstance(value, decimal.Decimal) and not value.is_finite():
                    raise ValueRefused(f"value of column {name!r} is {value}: Firebird's NUMERIC has no "
                                       f"infinity or NaN")

    def is_data_error(self, error):
        if type(error).__module__.partition(".")[0] not in self.driver_modules:
            # firebird-driver checks a value against its parameter before sending it, and
            # raises Python's own errors ("numeric overflow: value ...", "Value of parameter
            # (0) is too long ...") from its own code
            return unencodable(error) or (isinstance(error, (ValueError, TypeError, OverflowError))
                                          and _raised_by_driver(error))
        codes = set(getattr(error, "gds_codes", ()) or ())
        return bool(codes & _DATA_ERRORS)

    def explain_error(self, exc):
        codes = set(getattr(getattr(exc, "orig", None), "gds_codes", ()) or ())
        if 335544352 in codes:  # isc_no_priv
            return ("The Firebird user lacks a privilege: installing capture needs ALTER on the source "
                    "table and CREATE TABLE/TRIGGER (the database's owner or SYSDBA has them).")
        return None


_EARLIEST_TIMESTAMP = datetime.datetime(1858, 11, 17)


def _message_bytes(type_) -> int:
    """At most how many bytes a parameter of ``type_`` takes in a Firebird message (UTF8
    text: 4 bytes a character), with its NULL indicator and alignment."""
    if isinstance(type_, sa.String) and not isinstance(type_, sa.Text) and getattr(type_, "length", None):
        return 4 * type_.length + 2 + 8
    return 16  # numbers, dates, times, booleans, BLOB ids


def _raised_by_driver(error: BaseException) -> bool:
    """True when ``error`` was raised inside firebird-driver's own code (its innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/firebird/driver/" in tb.tb_frame.f_code.co_filename.replace("\\", "/")
