"""The dialect interface: everything that differs between database engines.

A dialect renders SQL and SQLAlchemy constructs; it never opens a connection.
Code outside this package asks a dialect for a statement and executes it in
one place (``capture.py``, ``engine/visibility.py``, ``engine/apply.py``), so every statement
can be printed and unit-tested without a server.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa

from ..errors import DATA, TRANSIENT, ValueRefused

#: Version of the capture objects (event table and triggers).  Bump it, never
#: edit a released template in place: installed objects are fingerprinted.
CAPTURE_VERSION = 1

#: Flags of the rows of a marked text batch (see Dialect.splits_new_rows): no source row
#: (delete the key), a row whose key was most likely inserted since the last batch, any
#: other row.  As PostgreSQL reads booleans, "t" is true and "n" and "f" are false.
GONE_FLAG, NEW_FLAG, KEPT_FLAG = "t", "n", "f"

#: Operation codes recorded in the event table (OP_TRUNCATE: the table was emptied; no key).
OP_INSERT, OP_UPDATE, OP_DELETE, OP_TRUNCATE = "I", "U", "D", "T"

#: Name of the per-destination checkpoint table.
CHECKPOINT_TABLE = "pdr_checkpoint"

#: Name of the registry of installed capture, one per source schema (see ``capture``).
REGISTRY_TABLE = "pdr_capture"


class Horizon(NamedTuple):
    """Write-transaction numbers observed at one moment (``Dialect.transaction_horizon``):
    ``next`` is above the number of every transaction that wrote before, ``oldest`` the
    lowest number of a write transaction still open (``next`` when none is)."""

    next: int
    oldest: int


#: The horizon of an engine with one writer at a time: every gap settles at once.
SINGLE_WRITER = Horizon(0, 2 ** 63 - 1)


class TextRefused(Exception):
    """A destination connection cannot take text rows now (the caller takes the Python path)."""


class TextTooLarge(Exception):
    """``copy_out``'s text passed the ``limit`` it was given (the read stopped there)."""

    def __init__(self, largest: int, rows: int, size: int):
        super().__init__(f"rows as text passed the byte budget: {rows} rows, {size:,} characters read, "
                         f"largest {largest:,}")
        self.largest, self.rows, self.size = largest, rows, size


class TextCounter:
    """Counts the rows of text a ``copy_out`` reads, stopping it past ``limit`` characters
    (TextTooLarge) when more than one row is read; ``largest``: the longest row."""

    def __init__(self, limit: int | None):
        self.limit, self.size, self.rows, self.largest = limit, 0, 0, 0

    def add(self, length: int):
        self.size += length
        self.rows += 1
        if length > self.largest:
            self.largest = length
        if self.limit is not None and self.size > self.limit and self.rows > 1:
            raise TextTooLarge(self.largest, self.rows, self.size)


@dataclass
class TextRows:
    """Rows spelled as text by the source engine for the destination engine (``fmt``):
    ``data`` is COPY text for "copy" (one str, or a list of str to be read in turn: a
    large batch is never joined), a list of literals for "values" (with ``flags``, the
    rows' marks, one byte a row, when the query had them), a list of rows in the
    engine's binary COPY form for "binary" (bytes, no header or trailer);
    ``largest``: characters (bytes) of the longest row; ``types``: for "binary", the
    columns' exact types (``binary_types``), checked again by the transactions that read
    and write the rows."""

    fmt: str
    data: object
    count: int
    largest: int = 0
    types: tuple = ()
    flags: bytes | None = None


@dataclass(frozen=True)
class CaptureNames:
    """Names of the objects installed for one source table."""

    event_table: str
    insert_trigger: str
    update_trigger: str
    delete_trigger: str
    function: str  # trigger function (PostgreSQL); '' where the engine has none
    truncate_trigger: str = ""  # engines whose TRUNCATE fires a trigger (PostgreSQL)

    @property
    def row_triggers(self):
        """The triggers without which row changes go uncaptured."""
        return (self.insert_trigger, self.update_trigger, self.delete_trigger)

    @property
    def triggers(self):
        """Every trigger, each once (one trigger may capture several operations)."""
        return tuple(dict.fromkeys(self.row_triggers + ((self.truncate_trigger,) if self.truncate_trigger else ())))


def _slug(text: str, size: int) -> str:
    ascii_only = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return ascii_only[:size].rstrip("_") or "t"


def event_key_name(position: int) -> str:
    """Name of the event-table column that holds primary-key column ``position``."""
    return f"pdr_k{position}"


def bulk_key_name(position: int) -> str:
    """Name of the event-table column that holds an array of values of primary-key
    column ``position`` (engines whose triggers write one event row per many keys)."""
    return f"pdr_a{position}"


#: Compiled statements per SQLAlchemy dialect and cache key (see _compiled), at most this many.
COMPILED_CACHE_SIZE = 200


def _compiled(dialect, query):
    """(compiled, cache key) of ``query`` for ``dialect``, with expanding parameters
    rendered in: compiled once per statement shape, as SQLAlchemy's own cache does for
    statements it executes (``driver_statement`` compiles statements it does not run).
    The key is None for a statement that cannot be cached."""
    key = query._generate_cache_key()
    cache = dialect.__dict__.setdefault("_pdr_compiled", {})
    compiled = cache.get(key.key) if key is not None else None
    if compiled is None:
        compiled = query.compile(dialect=dialect, cache_key=key, compile_kwargs={"render_postcompile": True})
        if key is not None and not compiled.post_compile_params:  # (IN lists are spelled in)
            if len(cache) >= COMPILED_CACHE_SIZE:
                cache.clear()
            cache[key.key] = compiled
    return compiled, key


class Dialect:
    """Base class: behaviour shared by all engines, overridden per engine."""

    #: SQLAlchemy dialect names this class serves.
    names: tuple[str, ...] = ()
    #: Human label and driver used in ``URL.create``; ``kind_label``: the admin's name of
    #: the engine (``Database.kind``).
    label = "?"
    kind_label = "?"
    #: Schemas that belong to the engine itself, never a user's tables (lower case).
    system_schemas: frozenset = frozenset({"information_schema"})
    driver = ""
    #: True when the live test suite runs this engine against a real server.
    tested_live = False
    #: Longest identifier the engine keeps, and whether it counts bytes.
    max_identifier_length = 63
    identifier_length_in_bytes = False
    #: Largest number of bound parameters we put in one statement.
    max_parameters = 30000
    #: True when a schema name is meaningful (SQLite: attached database name).
    default_schema: str | None = None

    def __init__(self, sa_dialect: sa.engine.Dialect):
        self.sa = sa_dialect
        self.quote = sa_dialect.identifier_preparer.quote

    # -- names -------------------------------------------------------------
    def is_system_schema(self, name: str) -> bool:
        """True for a schema of the engine itself (never offered as a source)."""
        return name.lower() in self.system_schemas

    @classmethod
    def identifier_size(cls, name: str) -> int:
        """The length of ``name`` as the engine counts it (bytes or characters)."""
        return len(name.encode("utf-8")) if cls.identifier_length_in_bytes else len(name)

    @classmethod
    def identifier_fits(cls, name: str) -> bool:
        return cls.identifier_size(name) <= cls.max_identifier_length

    @classmethod
    def identifier_problem(cls, name: str) -> str | None:
        """Why this engine cannot hold ``name`` as a table, schema or column name (the
        rule it breaks, as a sentence), or None when it can."""
        if not name:
            return "a name cannot be empty"
        if "\x00" in name:
            return "a name cannot contain the NUL character"
        if not cls.identifier_fits(name):
            unit = "bytes (UTF-8)" if cls.identifier_length_in_bytes else "characters"
            return (f"{cls.label} names are at most {cls.max_identifier_length} {unit}, "
                    f"this one has {cls.identifier_size(name)}")
        return None

    def capture_names(self, schema: str | None, table: str) -> CaptureNames:
        """Prefixed, deterministic, collision-free names within the length limit."""
        digest = hashlib.sha1(f"{schema or ''}\x00{table}".encode("utf-8")).hexdigest()[:10]
        # pdr_ + slug + _ + digest + _suffix(3): keep well inside every limit (30 on old Oracle)
        room = min(self.max_identifier_length, 63) - len("pdr_") - len(digest) - 2 - 4
        base = f"pdr_{_slug(table, max(room, 1))}_{digest}"
        return CaptureNames(
            event_table=f"{base}_ev",
            insert_trigger=f"{base}_ins",
            update_trigger=f"{base}_upd",
            delete_trigger=f"{base}_del",
            function=f"{base}_fn",
        )

    def raw_name(self, name: str) -> str:
        """``name`` quoted for SQL sent to the driver without parameters (the preparer
        doubles "%" for drivers whose placeholders use it; no placeholder is read here)."""
        return self.quote(name).replace("%%", "%")

    def raw_table(self, table: sa.Table) -> str:
        """``table``'s qualified name, quoted as ``raw_name`` does."""
        return ".".join(self.raw_name(p) for p in ([table.schema] if table.schema else []) + [table.name])

    def qualified(self, schema: str | None, name: str) -> str:
        if schema:
            return f"{self.quote(schema)}.{self.quote(name)}"
        return self.quote(name)

    # -- connection --------------------------------------------------------
    #: True for an engine whose database is a local file (no server, no credentials).
    file_based = False
    #: Driver options every connection URL of this kind has unless the user sets them.
    url_defaults: dict = {}
    #: The admin's label and example of the ``database`` field for this kind.
    database_label = "Database name"
    database_placeholder = "app"
    #: How to install the engine's Python driver.
    install_hint = "Install the Python driver of this database engine."
    #: What to check when a connection fails.
    unreachable_hint = ("check host, port, database name, user and password, "
                        "and that the server is running")

    @classmethod
    def make_url(cls, database) -> "sa.engine.URL":
        """The connection URL for a ``Database`` row, built by ``URL.create``."""
        return sa.engine.URL.create(
            cls.driver,
            username=database.username or None,
            password=database.password or None,
            host=database.host or None,
            port=database.port or None,
            database=database.database or None,
            query={k: str(v) for k, v in cls.url_query(database.options or {}).items()},
        )

    @classmethod
    def connect_args(cls, timeout: int) -> dict:
        """DB-API connect() arguments; ``timeout`` bounds the time to connect."""
        return {"connect_timeout": timeout}

    @classmethod
    def url_query(cls, options: dict) -> dict:
        """Driver options added to the connection URL: ``url_defaults``, then the user's."""
        return {**cls.url_defaults, **(options or {})}

    @classmethod
    def engine_kwargs(cls) -> dict:
        return {}

    @classmethod
    def ping_query(cls):
        """A trivial query proving the connection works."""
        return sa.text("SELECT 1")

    @classmethod
    def prepare_engine(cls, engine: sa.Engine) -> None:
        """Set up a new engine of this kind (event listeners); nothing by default."""

    @classmethod
    def on_connect_statements(cls) -> list[str]:
        """Session settings run on every new connection (time zone, modes)."""
        return []

    # -- capture: event table ----------------------------------------------
    def event_table(self, metadata: sa.MetaData, schema, names: CaptureNames, key_columns) -> sa.Table:
        """The event table as a SQLAlchemy Table; keys copy the source key types."""
        columns = [
            sa.Column("pdr_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("pdr_op", sa.String(1), nullable=False),
            sa.Column("pdr_txid", sa.BigInteger(), nullable=True),
            sa.Column("pdr_at", self.event_time_type(), nullable=False, server_default=self.event_time_default()),
        ]
        key_types = [self.event_key_type(column.type) for column in key_columns]
        for position, type_ in enumerate(key_types):
            columns.append(sa.Column(event_key_name(position), type_, nullable=True))
        array_types = [self.bulk_key_type(type_) for type_ in key_types]
        bulk = self.bulk_event_keys > 1 and all(t is not None for t in array_types)
        if bulk:
            for position, type_ in enumerate(array_types):
                columns.append(sa.Column(bulk_key_name(position), type_, nullable=True))
        return sa.Table(names.event_table, metadata, *columns, schema=schema, **self.event_table_kwargs())

    #: Most keys one event row carries.  Above 1, a statement that changes many rows
    #: writes arrays of keys (``bulk_key_name`` columns); readers read through
    #: ``event_relation``, one row per key.
    bulk_event_keys = 1

    def bulk_key_type(self, key_type):
        """The type of an array of ``key_type`` values, or None (one key per event row)."""
        return None

    @staticmethod
    def bulk_key_columns(event: sa.Table) -> list:
        """The key-array columns of ``event`` (none where event rows carry one key)."""
        return [event.c[bulk_key_name(i)] for i in range(len(event.c)) if bulk_key_name(i) in event.c]

    @classmethod
    def has_bulk_events(cls, event: sa.Table) -> bool:
        return bool(cls.bulk_key_columns(event))

    def event_relation(self, event: sa.Table, key_count: int):
        """What readers select events from: one row (pdr_id, pdr_op, pdr_at, pdr_k0, ...) per key.
        Several rows share a pdr_id where an event row carries an array of keys."""
        return event

    def event_table_upgrades(self, source: sa.Table, event: sa.Table) -> list[str]:
        """Statements bringing an event table of an earlier version up to ``event``'s
        definition (install runs them when a column of ``event`` is missing)."""
        return []

    #: Storage parameters install sets on every event table (name -> value, in the
    #: engine's spelling); none by default.  Install sets those the table lacks, on a new
    #: event table and on one installed by an earlier release; a value set by hand is kept.
    event_table_options: dict = {}

    def event_table_options_query(self, schema, name: str):
        """A query of one row: the storage parameters set on the event table, as a list of
        ``name=value`` strings (no row when the table is missing); None when the engine
        has none (``event_table_options`` empty)."""
        return None

    def set_event_table_options(self, event: sa.Table, options: dict) -> list[str]:
        """Statements setting ``options`` (a part of ``event_table_options``) on ``event``."""
        if options:
            raise NotImplementedError(f"{self.label}: event table storage parameters are not implemented")
        return []

    def create_table_statement(self, table: sa.Table, if_not_exists: bool = False) -> str:
        """CREATE TABLE for ``table`` (``if_not_exists``: nothing when it exists)."""
        return str(sa.schema.CreateTable(table, if_not_exists=if_not_exists).compile(dialect=self.sa)).strip()

    def drop_table_statement(self, table: sa.Table, if_exists: bool = False) -> str:
        """DROP TABLE for ``table`` (``if_exists``: nothing when it is missing)."""
        return str(sa.schema.DropTable(table, if_exists=if_exists).compile(dialect=self.sa)).strip()

    def event_time_type(self):
        return sa.DateTime()

    def event_time_default(self):
        """Server-side default of the event time: UTC, whatever the writer's session zone."""
        return sa.func.current_timestamp()  # SQLite: always UTC

    def event_key_type(self, source_type):
        return source_type

    def event_table_kwargs(self) -> dict:
        return {}

    # -- capture: triggers -------------------------------------------------
    def create_trigger_statements(self, source: sa.Table, event: sa.Table, names: CaptureNames,
                                  key_names: list[str], notify: bool = False) -> list[str]:
        """CREATE statements of the capture triggers; ``notify``: also wake listening workers
        (engines with ``supports_notify``)."""
        raise NotImplementedError(f"{self.label}: capture triggers are not implemented")

    def replace_needs_drop(self) -> bool:
        """True when an existing trigger must be dropped before it is created again."""
        return False

    #: True when CREATE/DROP TABLE run inside a transaction (and roll back with it); False
    #: when DDL commits the transaction at once (MySQL/MariaDB).
    transactional_ddl = True
    #: True when ``=`` on text compares characters exactly (no case or accent folding, no
    #: trailing-space padding): a checkpoint may then be moved by one UPDATE that compares
    #: its stored text (Checkpoint.advance).
    exact_text_equality = False

    @property
    def replaces_triggers_atomically(self) -> bool:
        """True when installed triggers are replaced with no moment in which a committed
        change goes uncaptured (else a reinstall starts a new incarnation)."""
        return True

    def drop_trigger_statements(self, source: sa.Table, names: CaptureNames, triggers=None) -> list[str]:
        """DROP statements for our triggers (only those named in ``triggers`` when given)."""
        raise NotImplementedError(f"{self.label}: capture triggers are not implemented")

    def existing_triggers_query(self, schema, table_name: str, names: CaptureNames):
        """A query returning the names of our triggers that exist now."""
        raise NotImplementedError(f"{self.label}: trigger discovery is not implemented")

    def schema_triggers_query(self, schema):
        """A query returning the names of every trigger of ``schema`` that exists and fires
        (one query for all the tables a worker probes; the caller keeps ours)."""
        raise NotImplementedError(f"{self.label}: trigger discovery is not implemented")

    # -- wake-ups ------------------------------------------------------------
    #: The capture triggers notify listeners (PostgreSQL LISTEN/NOTIFY); others are polled.
    supports_notify = False

    def start_listening(self, dbapi_connection):
        raise NotImplementedError(f"{self.label} has no change notifications; the worker polls")

    def drain_notifications(self, dbapi_connection) -> int:
        raise NotImplementedError(f"{self.label} has no change notifications; the worker polls")

    def arm_wakeups(self, dbapi_connection):
        """Tell writers a worker is about to sleep on this listening connection, so that
        they notify; return a token for ``disarm_wakeups``: "held" (this connection
        armed), "shared" (another worker's arm already makes writers notify, and its
        wake-ups reach this listener too: good until the next wake-up or timeout), or
        None when writes are in flight (they would not notify: look again soon)."""
        raise NotImplementedError(f"{self.label} has no change notifications; the worker polls")

    def disarm_wakeups(self, dbapi_connection, token, wake_others=False):
        """The worker is awake: writers may stop notifying.  ``wake_others``: workers
        sleeping on this arm ("shared") got no notification: wake them so that one of
        them arms."""
        raise NotImplementedError(f"{self.label} has no change notifications; the worker polls")

    # -- visibility --------------------------------------------------------
    def transaction_horizon(self, conn, event_table: sa.Table) -> Horizon | None:
        """The write-transaction horizon now (see ``visibility``), read in ``conn``'s
        transaction (the caller ends it), or None when the engine cannot tell now (the
        reader then settles nothing).  Base: one writer at a time, ids commit in order."""
        return SINGLE_WRITER

    # -- apply -------------------------------------------------------------
    def lock_row(self, conn, table: sa.Table, where, column):
        """In ``conn``'s transaction: lock the row of ``table`` matching ``where`` until the
        transaction ends (other lockers wait); return its ``column`` (None: no row)."""
        return conn.execute(sa.select(column).where(where).with_for_update()).scalar()

    def key_filter(self, columns: list, keys: list[tuple]):
        """WHERE clause matching any of ``keys`` on ``columns``."""
        if len(columns) == 1:
            return columns[0].in_([k[0] for k in keys])
        return sa.tuple_(*columns).in_(keys)

    def key_after(self, columns: list, after: tuple):
        """WHERE clause for keyset pagination: (c1, c2, ...) > after."""
        clauses = []
        for i, column in enumerate(columns):
            equal = [columns[j] == after[j] for j in range(i)]
            clauses.append(sa.and_(*equal, column > after[i]))
        return sa.or_(*clauses)

    def upsert(self, table: sa.Table, key_names: list[str], update_names: list[str]):
        """An INSERT that updates ``update_names`` when the key exists (executemany)."""
        raise NotImplementedError(f"{self.label}: upsert is not implemented")

    def upsert_batches(self, table: sa.Table, key_names: list[str], update_names: list[str], rows: list[dict]):
        """(statement, parameters) pairs that upsert ``rows``: one executemany here."""
        return [(self.upsert(table, key_names, update_names), rows)]

    def bulk_upsert(self, conn, table: sa.Table, key_names: list[str], update_names: list[str],
                    rows: list[dict]) -> bool:
        """Upsert ``rows`` through the driver's fastest bulk path; False when there is none
        (the caller then executes ``upsert_batches``).  Values pass through the column
        types' SQLAlchemy bind processors first, as they would through SQLAlchemy."""
        return False

    # -- rows passed as text (no Python values) --------------------------------
    #: The form of text rows this engine writes (``apply_marked``/``apply_copied``):
    #: "copy" (PostgreSQL COPY text: tab-separated, \\N for NULL, backslash escapes) or
    #: "values" (MySQL row literals), or None (none: the Python path only).
    text_format: str | None = None
    #: The forms of text rows this engine can render from its own rows (``copy_out``).
    renders_text: tuple[str, ...] = ()

    def copies_text_to(self, other: "Dialect") -> bool:
        """True when rows read from this engine as text can be written to ``other``: this
        engine spells its values in the form ``other`` reads."""
        return other.text_format is not None and other.text_format in self.renders_text

    def text_compatible(self, source_type, dest_type, dest: "Dialect | None" = None, *,
                        is_key: bool = False) -> bool:
        """True when a value of ``source_type`` spelled as text for ``dest`` (default: this
        engine) means exactly the value the Python path would write into ``dest_type``
        (the text path is used only when every column passes); ``is_key``: the column is
        part of the source key (joined and compared with the event table's keys)."""
        return False

    def copies_binary_to(self, other: "Dialect") -> bool:
        """Rows of columns of identical types can pass to ``other`` in this engine's binary
        COPY form (``copy_out`` with fmt "binary"; see ``binary_types``)."""
        return False

    def binary_types(self, conn, table: sa.Table, names: list[str]) -> list[str] | None:
        """The exact types of ``table``'s columns ``names`` (with their modifiers), as the
        binary form needs them equal on both sides; None when one of them has no binary
        form that is the same in every database of the engine (types of extensions, enums
        and other types the user defined: their identifiers differ between databases)."""
        return None

    def statement_transactions(self, conn):
        """A context for statements on ``conn`` that need no transaction around them (reads
        that need no snapshot across statements: each sees what is committed when it
        starts, as in READ COMMITTED; writes done in one statement): engines whose driver
        opens and ends a transaction with round trips of their own run each statement in
        one of its own instead (autocommit).  ``conn`` must be outside a transaction; it
        is left outside one."""
        return contextlib.nullcontext()

    def copy_out(self, conn, queries: list, fmt: str = "copy", limit: int | None = None,
                 values: dict | None = None, check: tuple | None = None) -> list["TextRows"]:
        """The results of ``queries`` spelled in the text form ``fmt``, read in one snapshot
        (``values``: of the queries' named ``bindparam``s).  For fmt "binary", ``check`` is
        (table, column names, their ``binary_types``): the read fails unless the columns
        still have those types, and they keep them until it ends.
        A query's columns are labelled: "pdr_gone" (a batch's flag: no row, delete the key),
        "pdr_k<i>" (key columns, also on a gone row), "pdr_c<i>" (the other columns).
        Raises NotImplementedError for a value with no text spelling (the caller then
        takes the Python path), TextTooLarge once the text read passes ``limit``
        characters (rows are streamed from the server and counted as they come, with
        ``TextCounter``)."""
        raise NotImplementedError(f"{self.label}: rows cannot be read as text")

    #: Marked text batches for this engine carry a third flag value, NEW_FLAG: a present row
    #: whose key's first event in the batch is an INSERT, which the destination most likely
    #: lacks (``apply_marked`` may then insert it without looking for its key first).
    splits_new_rows = False
    #: ... for batches of more events than this (smaller ones gain nothing from it)
    splits_new_rows_above = 0

    def apply_marked(self, conn, table: sa.Table, names: list[str], key_names: list[str],
                     update_names: list[str], rows: "TextRows") -> int:
        """In ``conn``'s transaction: ``rows`` (``copy_out``'s form, with the "gone" flag)
        flagged gone are keys to delete, the others rows to upsert; return the rows written.
        With ``splits_new_rows``, the flag is GONE_FLAG, NEW_FLAG or KEPT_FLAG; a "new"
        row is an upsert like the others whatever the destination holds.
        Raises TextRefused when this connection cannot take text rows now."""
        raise NotImplementedError(f"{self.label}: text rows cannot be written")

    def apply_marked_guarded(self, conn, table: sa.Table, names: list[str], key_names: list[str],
                             update_names: list[str], rows: "TextRows", guard, *,
                             asynchronous: bool = False) -> tuple[bool, int] | None:
        """``apply_marked`` as one statement in a transaction of its own (``conn`` outside a
        transaction), only if ``guard`` (an UPDATE: a checkpoint's move, see
        checkpoint.Checkpoint.advance_statement) changes a row: (True, rows written), or
        (False, 0) with nothing written.  None when this engine or batch does not allow it
        (the caller writes the batch in a transaction, as usual).  ``asynchronous``: with
        ``commits_asynchronously``, the commit does not wait for the flush to disk."""
        return None

    #: Transactions can commit without waiting for their flush to disk (``make_durable``
    #: then waits for every one committed before).
    commits_asynchronously = False

    def make_durable(self, conn) -> None:
        """Return once every transaction committed on ``conn``'s server before is on disk
        (``conn`` outside a transaction)."""

    def commit_asynchronously(self, conn) -> None:
        """In ``conn``'s transaction (with ``commits_asynchronously``): its commit will not
        wait for the flush to disk."""

    #: Destination connections one load chunk may be written by at once (``apply_copied``
    #: with ``fresh``, disjoint rows each; see engine/load.py).
    load_writers = 1

    def bound_lock_waits(self, conn, seconds: float) -> None:
        """In ``conn``'s transaction: a wait for a lock (a row, a key another transaction is
        inserting) fails after ``seconds`` instead of lasting (where ``load_writers`` > 1)."""
        raise NotImplementedError(f"{self.label}: lock waits cannot be bounded")

    def apply_copied(self, conn, table: sa.Table, names: list[str], key_names: list[str],
                     update_names: list[str], rows: "TextRows", fresh: bool = False) -> int:
        """In ``conn``'s transaction: upsert ``rows`` (``copy_out``'s form, no flag);
        return the rows written.  ``fresh``: no row of the table holds one of their keys (a
        chunk of an initial load into a table emptied for it): they may be inserted without
        looking for their keys (a key found after all is an error: the caller redoes the
        chunk by upserts)."""
        raise NotImplementedError(f"{self.label}: text rows cannot be written")

    @staticmethod
    def driver_statement(conn, query, values: dict | None = None) -> tuple[str, dict | tuple]:
        """``query`` compiled for ``conn``'s driver: (SQL, parameters), each value through
        its type's bind processor, as SQLAlchemy would send it; ``values``: of its named
        ``bindparam``s."""
        compiled, key = _compiled(conn.dialect, query)
        params = compiled.construct_params(values, extracted_parameters=key.bindparams if key is not None else None)
        for name, value in params.items():
            bind = compiled.binds.get(name)
            if bind is None:  # one value of an IN list ("<name>_<n>"): the list's type
                bind = compiled.binds.get(name.rpartition("_")[0])
                if bind is None or not bind.expanding:
                    raise NotImplementedError(f"parameter {name!r} has no type")
            process = bind_processor(bind.type, conn.dialect)
            if process is not None:
                params[name] = process(value)
        if compiled.positional:
            return str(compiled), tuple(params[name] for name in compiled.positiontup)
        return str(compiled), params

    #: A DELETE of a range of keys locks the row after the range too (InnoDB's next-key
    #: locks, in every isolation level): a purge of applied events then waits for the
    #: transaction that wrote the next event, uncommitted, for as long as it stays open
    #: (up to its lock wait timeout, then fails).  Engines saying True here purge up to a
    #: row that is there, committed, and keep it for the next purge (maintenance.purge).
    range_delete_locks_next_row = False

    #: One statement reads one snapshot: what it reads first and last was committed
    #: alike (not Firebird 3's READ COMMITTED, where a statement sees commits made while
    #: it runs).
    statement_snapshot = True

    #: Source rows of a batch can be read by joining the event table's key columns with
    #: the source key (False: by a list of the keys, chunked by max_parameters).
    joins_event_keys = True

    def key_lookup_settings(self) -> list[str]:
        """Statements run in a read transaction before joining a batch's keys with a table,
        so that the engine looks each key up instead of scanning the table."""
        return []

    def bulk_delete(self, conn, table: sa.Table, key_names: list[str], keys: list[dict]) -> bool:
        """Delete the rows of ``keys`` (dicts of key values) through the driver's fastest
        path; False when there is none (the caller then runs DELETE ... WHERE key IN)."""
        return False

    @staticmethod
    def run_on_driver(conn, sql: str, work) -> None:
        """Run ``work(cursor)`` on the DB-API connection under ``conn``'s transaction;
        driver errors come out as SQLAlchemy's (so callers handle both paths alike)."""
        dialect = conn.dialect
        dbapi_connection = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            work(cursor)
        except dialect.loaded_dbapi.Error as exc:
            invalidated = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error,
                                             connection_invalidated=invalidated, dialect=dialect) from exc
        finally:
            try:
                cursor.close()
            except Exception:
                pass

    @staticmethod
    def plain_rows(conn, query) -> list[tuple]:
        """The rows of ``query`` as the driver's own tuples, without SQLAlchemy's result
        processing: only for columns whose driver values need none (integers, short
        strings).  Several times faster for the many small rows of an event read; the
        statement still goes through SQLAlchemy (its compiled-statement cache)."""
        result = conn.execute(query)
        try:
            return result.cursor.fetchall()
        finally:
            result.close()

    def event_ids(self, conn, query) -> list[tuple]:
        """The rows of ``query``, an event read without keys (columns ``pdr_id``, a NULL
        ``pdr_key``, ``pdr_op``, ordered by ``pdr_id``), as plain (id, None, op) tuples."""
        return self.plain_rows(conn, query)

    def run_repeated(self, conn, query) -> list:
        """The rows of ``query``, a statement a running worker sends again and again
        unchanged (its probes).  Engines that can keep it prepared on the connection do so
        (``query`` must then be the same object each time)."""
        return conn.execute(query).all()

    @staticmethod
    def bound_rows(conn, table: sa.Table, names: list[str], rows: list[dict]) -> list[tuple]:
        processors = [(i, bind_processor(table.c[n].type, conn.dialect)) for i, n in enumerate(names)]
        active = [(i, p) for i, p in processors if p is not None]
        if not active:
            return [tuple(map(row.get, names)) for row in rows]
        out = []
        for row in rows:
            values = list(map(row.get, names))
            for i, process in active:
                values[i] = process(values[i])
            out.append(tuple(values))
        return out

    # -- capture: what the triggers never see ----------------------------------
    def capture_blind_spots(self, conn, source: sa.Table) -> list[str]:
        """Messages naming changes to ``source`` its capture triggers will not see (read
        at install time), each saying how to find and repair them; [] when none."""
        return []

    # -- types ---------------------------------------------------------------
    def json_text_type(self) -> "JSONText":
        """The type JSON columns are read and written with: the document's own text, so
        that SQL NULL and the JSON value ``null`` stay apart and numbers keep every digit."""
        return JSONText()

    #: Values copied between two databases of this engine pass as the driver reads them,
    #: unconverted (SQLite: the stored value, whatever the declared type says).
    copies_raw_values = False

    def refine_reflected(self, conn, table: sa.Table) -> sa.Table | None:
        """Correct what SQLAlchemy's reflection got wrong: column types it cannot tell
        apart (in place), or the columns themselves (return a new Table; None: keep
        ``table``)."""

    def generic_type(self, source_type):
        """The engine-neutral SQLAlchemy type of a reflected source column."""
        try:
            generic = source_type.as_generic()
        except NotImplementedError:
            return sa.Text()
        if getattr(generic, "collation", None):
            # a collation's name belongs to its engine (MySQL's latin1_swedish_ci means
            # nothing to PostgreSQL): the destination engine's default applies
            generic = generic.copy()
            generic.collation = None
        return generic

    def destination_type(self, generic, *, is_key: bool):
        """The column type to create on this engine for an engine-neutral type."""
        return generic

    def table_kwargs(self) -> dict:
        """Keyword arguments for destination tables created by PDR."""
        return {}

    def add_column_statement(self, table: sa.Table, column: sa.Column) -> str:
        """ALTER TABLE ... ADD COLUMN for a new, nullable column."""
        return (f"ALTER TABLE {self.qualified(table.schema, table.name)} ADD COLUMN "
                f"{self.quote(column.name)} {column.type.compile(dialect=self.sa)}")

    def explain_error(self, exc: BaseException) -> str | None:
        """A hint for a known server error, or None."""
        return None

    # -- failed writes -------------------------------------------------------
    #: Top-level modules of the engine's drivers: what they raise is a database error.
    #: Empty (an engine without its own dialect): every error counts as one.
    driver_modules: tuple[str, ...] = ()

    def classify_error(self, exc: BaseException) -> str | None:
        """What a failed destination write means for its rows: ``DATA`` (the row itself
        cannot be stored: a dead letter, the other rows flow), ``TRANSIENT`` (anything
        else the database says: locks, deadlocks, outages, a read-only server, missing
        tables or columns: retry later with back-off, never a dead letter), or None: not
        a database error (a bug): re-raise it.

        ``exc``: SQLAlchemy's error (its ``.orig`` is judged), a driver's own, or a Python
        error a driver raised while adapting a value (DATA when ``is_data_error`` knows it
        by the driver's message, else None).  ValueRefused (RowTooLarge...) is DATA."""
        if isinstance(exc, ValueRefused):
            return DATA
        error = exc.orig if isinstance(exc, sa.exc.StatementError) and exc.orig is not None else exc
        if self.is_data_error(error):
            return DATA
        if self.driver_modules and not isinstance(exc, sa.exc.DBAPIError) \
                and type(error).__module__.partition(".")[0] not in self.driver_modules:
            return None
        return TRANSIENT

    def is_data_error(self, error: BaseException) -> bool:
        """True when ``error`` (a driver's, or a Python error raised by a driver) says the
        row itself cannot be stored.  Base: never."""
        return False

    def driver_rows(self, rows: list[dict]) -> list[dict]:
        """``rows`` as parameters of statements run through SQLAlchemy, with any value
        the driver would misspell replaced by one it spells exactly (PostgreSQL:
        -0.0, infinite Decimals).  Base: unchanged."""
        return rows

    def guard_rows(self, conn, table: sa.Table | None, rows: list[dict]) -> None:
        """Before ``rows`` go through SQLAlchemy (one statement per row): raise RowTooLarge
        for a row the destination could not take in one statement.  ``table``: the
        destination table (its column types spell the values), or None (a custom
        statement: the values as given).  Base: no limit."""


def unencodable(error: BaseException) -> bool:
    """True for text a driver could not encode for its connection (a lone surrogate, a
    character outside the connection's character set): every driver encodes text itself,
    before sending anything."""
    return isinstance(error, UnicodeEncodeError)


class JSONText(sa.types.TypeDecorator):
    """A JSON column handled as its text: read as the document's text (None only for SQL
    NULL, "null" for the JSON value null) and written from text, unparsed."""

    impl = sa.Text
    cache_ok = True


class RawValue(sa.types.TypeDecorator):
    """A column whose values pass as the driver gives them, with no conversion either way."""

    impl = sa.types.NullType
    cache_ok = True


def json_has_nul(value) -> bool:
    """True when a parsed JSON document holds the NUL character in a key or a string."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(json_has_nul(k) or json_has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(json_has_nul(v) for v in value)
    return False


def bind_processor(type_, sa_dialect):
    """The function SQLAlchemy passes a value of ``type_`` through before the driver, or None:
    the processor of the engine's own implementation of the type (a generic NUMERIC's own
    processor converts to float; PostgreSQL's psycopg2 NUMERIC keeps Decimal)."""
    return type_.dialect_impl(sa_dialect).bind_processor(sa_dialect)


def accepts(dest_type, *kinds, never=()) -> bool:
    """For the text spellings: True when ``dest_type`` is one of ``kinds`` and none of
    ``never``, or is None (the spelling is asked for the source type alone)."""
    return dest_type is None or (isinstance(dest_type, kinds) and not isinstance(dest_type, never))


def column_list(dialect: Dialect, names):
    return ", ".join(dialect.quote(n) for n in names)
