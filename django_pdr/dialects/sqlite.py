"""SQLite: row-level triggers; one writer at a time, so ids commit in order."""
from __future__ import annotations

import urllib.parse

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ..errors import ValueRefused
from .base import (OP_DELETE, OP_INSERT, OP_UPDATE, Dialect, TextCounter, TextRows, column_list,
                   event_key_name, unencodable)
from .crosstext import sqlite_copy_query, sqlite_copy_spelling, sqlite_number_text

#: Rows of one fetch of ``copy_out`` (the line pieces are small; the counter sees each).
COPY_FETCH_ROWS = 1000


class SQLiteDialect(Dialect):
    exact_text_equality = True  # BINARY collation unless a column says otherwise
    names = ("sqlite",)
    label = "SQLite"
    kind_label = "SQLite"
    driver = "sqlite+pysqlite"
    install_hint = "Python was built without its sqlite3 module: install a Python with SQLite support."
    file_based = True
    database_label = "SQLite file path"
    database_placeholder = "/var/lib/app/data.sqlite3"
    tested_live = True
    max_identifier_length = 128  # no real limit; keep names readable
    max_parameters = 30000  # SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32

    unreachable_hint = ("check that the file exists and is readable and writable by this process; "
                        "for a new destination file, turn on 'Create the file if it does not exist'")

    @classmethod
    def identifier_problem(cls, name):
        if name and "\x00" not in name:
            return None  # max_identifier_length only keeps generated names short: SQLite has no limit
        return super().identifier_problem(name)

    @classmethod
    def make_url(cls, database):
        """An existing file is opened read-write, never created (``mode=rw``): a mistyped path
        is an error, not a new empty database.  ``Database.create_file`` allows creating it."""
        path = database.database or None
        if path is None or getattr(database, "create_file", False):
            return sa.engine.URL.create(cls.driver, database=path)
        return sa.engine.URL.create(cls.driver, database="file:" + urllib.parse.quote(path),
                                    query={"mode": "rw", "uri": "true"})

    @classmethod
    def connect_args(cls, timeout):
        return {"timeout": 30}

    #: Page cache of each connection django-pdr opens, in KiB (SQLite's default is 2,000):
    #: a worker keeps several connections open; the operating system caches the file anyway.
    CACHE_KIB = 512

    @classmethod
    def on_connect_statements(cls):
        return ["PRAGMA busy_timeout = 30000", f"PRAGMA cache_size = -{cls.CACHE_KIB}"]

    def event_table_kwargs(self):
        return {"sqlite_autoincrement": True}  # ids are never reused after a purge

    def _insert_event(self, event, op, row, key_names, where=""):
        keys = [event_key_name(i) for i in range(len(key_names))]
        values = ", ".join(f"{row}.{self.quote(n)}" for n in key_names)
        # SQLite forbids schema-qualified tables inside a trigger body.
        return (f"INSERT INTO {self.quote(event.name)} ({column_list(self, ['pdr_op', *keys])}) "
                f"SELECT '{op}', {values}{where}")

    def create_trigger_statements(self, source, event, names, key_names, notify=False):
        table = self.quote(source.name)
        changed = " OR ".join(f"OLD.{self.quote(n)} IS NOT NEW.{self.quote(n)}" for n in key_names)
        head = "CREATE TRIGGER {name} AFTER {when} ON {table} BEGIN "
        return [
            head.format(name=self.qualified(source.schema, names.insert_trigger), when="INSERT", table=table)
            + self._insert_event(event, OP_INSERT, "NEW", key_names) + "; END",
            head.format(name=self.qualified(source.schema, names.update_trigger), when="UPDATE", table=table)
            + self._insert_event(event, OP_DELETE, "OLD", key_names, f" WHERE {changed}") + "; "
            + self._insert_event(event, OP_UPDATE, "NEW", key_names) + "; END",
            head.format(name=self.qualified(source.schema, names.delete_trigger), when="DELETE", table=table)
            + self._insert_event(event, OP_DELETE, "OLD", key_names) + "; END",
        ]

    def replace_needs_drop(self):
        return True

    def drop_trigger_statements(self, source, names, triggers=None):
        chosen = names.triggers if triggers is None else [t for t in names.triggers if t in triggers]
        return [f"DROP TRIGGER IF EXISTS {self.qualified(source.schema, t)}" for t in chosen]

    def existing_triggers_query(self, schema, table_name, names):
        master = self.qualified(schema, "sqlite_master") if schema else "sqlite_master"
        return sa.text(
            f"SELECT name FROM {master} WHERE type = 'trigger' AND tbl_name = :table"
        ).bindparams(table=table_name)

    def schema_triggers_query(self, schema):
        master = self.qualified(schema, "sqlite_master") if schema else "sqlite_master"
        return sa.text(f"SELECT name FROM {master} WHERE type = 'trigger'")

    # SQLite has one writer at a time: event ids become visible in id order,
    # so the base class's "no open transactions" answer is exact.

    def guard_rows(self, conn, table, rows):
        # SQLite stores a NaN as NULL: refused instead (the row becomes a dead letter)
        for row in rows:
            for name, value in row.items():
                if isinstance(value, float) and value != value:
                    raise ValueRefused(f"value of column {name!r} is NaN: SQLite cannot store NaN (it would "
                                       f"become NULL)")

    def lock_row(self, conn, table, where, column):
        # One writer at a time: a write statement takes the database's write lock at once
        # (it begins the transaction) and keeps it until the end; a SELECT alone would not.
        conn.execute(sa.update(table).where(where).values({column.name: column}))
        return conn.execute(sa.select(column).where(where)).scalar()

    def upsert(self, table, key_names, update_names):
        stmt = sqlite.insert(table)
        if not update_names:
            return stmt.on_conflict_do_nothing(index_elements=key_names)
        return stmt.on_conflict_do_update(
            index_elements=key_names, set_={n: stmt.excluded[n] for n in update_names}
        )

    # -- failed writes -------------------------------------------------------
    driver_modules = ("sqlite3",)

    def is_data_error(self, error):
        # IntegrityError: NOT NULL, UNIQUE, CHECK, FOREIGN KEY, "datatype mismatch", a STRICT
        # table's "cannot store TEXT value in INT column"; DataError: "string or blob too big".
        # OperationalError ("database is locked", "disk I/O error", "attempt to write a
        # readonly database", "no such table") is transient.
        import sqlite3

        if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError)):
            return True
        # sqlite3 refuses an integer beyond 64 bits before running the statement
        return (type(error) is OverflowError and "too large to convert to SQLite INTEGER" in str(error)) \
            or unencodable(error)

    def refine_reflected(self, conn, table):
        # SQLite gives an undeclared type NUMERIC affinity; a column declared UUID
        # holds text (or 16 bytes) that a NUMERIC reader would mangle.
        pragma = f"PRAGMA {self.quote(table.schema)}.table_info" if table.schema else "PRAGMA table_info"
        declared = {row[1]: (row[2] or "").upper()
                    for row in conn.exec_driver_sql(f"{pragma}({self.quote(table.name)})")}
        for column in table.columns:
            if declared.get(column.name) == "UUID":
                column.type = sa.Uuid()
            elif isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float):
                # a NUMERIC column stores REAL or INTEGER: read the number as stored (the
                # destination's converter takes a REAL's shortest decimal spelling), not
                # rounded to the declared scale through its binary expansion
                column.type.asdecimal = False

    # -- rows passed as text ---------------------------------------------------------
    #: Read: rows spelled in PostgreSQL's COPY text form (``crosstext.sqlite_copy_query``).
    renders_text = ("copy",)

    def text_compatible(self, source_type, dest_type, dest=None, *, is_key=False):
        if dest is None or dest.text_format != "copy":
            return False
        if is_key and (not isinstance(source_type, sa.Integer) or isinstance(source_type, sa.Boolean)):
            # a key is joined with the event table's copy of it: integers compare alike
            # whatever their storage; text may carry a collation (NOCASE, RTRIM) that
            # folds keys the Python path keeps apart
            return False
        return sqlite_copy_spelling(source_type, dest_type) is not None

    def copy_out(self, conn, queries, fmt="copy", limit=None, values=None, check=None):
        if fmt != "copy":
            raise NotImplementedError(f"SQLite does not spell rows as {fmt!r}")
        out = []
        counter = TextCounter(limit)

        def work(cursor):
            if len(queries) > 1 and not cursor.connection.in_transaction:
                cursor.execute("BEGIN")  # one snapshot for every query (rolled back below)
            for query in queries:
                select, numbers = sqlite_copy_query(query)
                cursor.execute(*self.driver_statement(conn, select, values))
                lines = []
                while True:
                    part = cursor.fetchmany(COPY_FETCH_ROWS)
                    if not part:
                        break
                    for row in part:
                        if numbers:
                            row = list(row)
                            for at in numbers:
                                row[at] = sqlite_number_text(row[at])
                        if None in row:
                            raise NotImplementedError("a value SQLite stores in a form the text path "
                                                      "does not spell")
                        line = "".join(row)
                        counter.add(len(line))
                        lines.append(line)
                count = len(lines)
                lines.append("")  # the last line's "\n"
                out.append(TextRows(fmt, "\n".join(lines) if count else "", count, counter.largest))

        try:
            self.run_on_driver(conn, "SELECT ... rows as COPY text", work)
        finally:
            conn.rollback()
            conn.connection.dbapi_connection.rollback()  # (a BEGIN of its own, above)
        return out

    def generic_type(self, source_type):
        if isinstance(source_type, sa.types.NullType):
            return sa.Text()
        return super().generic_type(source_type)

    # a SQLite value arrives in another SQLite database as it was stored, byte for byte
    copies_raw_values = True

    def destination_type(self, generic, *, is_key):
        if isinstance(generic, sa.JSON):
            # TEXT affinity: a column declared JSON has NUMERIC affinity, which stores a
            # document that is one large number as REAL (12345678901234567890123 would
            # become 1.23456789012346e+22)
            return sa.Text()
        if isinstance(generic, sa.Uuid):
            return sa.CHAR(36)
        if isinstance(generic, sa.DateTime):
            return sqlite.DATETIME()
        if isinstance(generic, sa.Interval):
            return sa.Text()
        if isinstance(generic, sa.Enum):
            return sa.Text()
        return generic
