"""MySQL and MariaDB: row-level triggers, INNODB_TRX for open transactions."""
from __future__ import annotations

import datetime
import decimal
import functools
import itertools
import math
import re
import threading
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ..errors import RowTooLarge, ValueRefused
from .base import (OP_DELETE, OP_INSERT, OP_UPDATE, Dialect, Horizon, TextCounter, TextRefused, TextRows,
                   bind_processor, column_list, event_key_name, unencodable)
from .crosstext import copy_query, copy_spelling

#: Server errors saying the row itself cannot be stored (checked on MariaDB 10.11 with the
#: default strict sql_mode, except the MySQL 8 codes 3140 and 3819).
_DATA_ERRORS = frozenset({
    1048,  # Column 'v' cannot be null
    1062, 1022, 1169, 1586,  # Duplicate entry '1' for key 'PRIMARY' (and older spellings)
    1153,  # Got a packet bigger than 'max_allowed_packet' bytes (a slightly too large row)
    1216, 1217, 1451, 1452,  # Cannot add or update a child row / delete a parent row: a foreign key fails
    1263,  # Column set to default value; NULL supplied to NOT NULL column
    1264,  # Out of range value for column 'n' at row 1
    1265,  # Data truncated for column 'n' at row 1
    1292,  # Incorrect datetime value: '2020-13-45' for column ...
    1300,  # Invalid utf8mb4 character string: '\xFF'
    1364,  # Field 'v' doesn't have a default value
    1365,  # Division by 0
    1366,  # Incorrect integer value: 'abc' / Incorrect string value: '\xFF' for column ...
    1367,  # Illegal double '1e400' value found during parsing
    1406,  # Data too long for column 'v' at row 1
    1411,  # Incorrect datetime value: '2020-99-99' for function str_to_date
    1690,  # BIGINT UNSIGNED value is out of range in ...
    3140,  # MySQL 8: Invalid JSON text
    3819,  # MySQL 8: Check constraint 'c' is violated
    4025,  # MariaDB: CONSTRAINT `t.c` failed (a CHECK, or a JSON column's json_valid)
})

#: Bytes kept free below max_allowed_packet (MariaDB 10.11 refuses a statement of
#: max_allowed_packet - 1 bytes and takes one of max_allowed_packet - 2).
_PACKET_MARGIN = 1024

#: Session key of the cached max_allowed_packet (``MySQLDialect.packet_limit``).
_PACKET_KEY = "pdr_max_allowed_packet"


class MySQLDialect(Dialect):
    names = ("mysql", "mariadb")
    label = "MySQL/MariaDB"
    kind_label = "MySQL / MariaDB"
    system_schemas = frozenset({"information_schema", "mysql", "performance_schema", "sys"})
    driver = "mysql+pymysql"
    url_defaults = {"charset": "utf8mb4"}
    install_hint = "Install PyMySQL: pip install 'django-pdr[mysql]'."
    tested_live = True  # on MariaDB 10.11; MySQL 8 shares this code but is not run in CI
    max_identifier_length = 64
    max_parameters = 30000

    @property
    def is_mariadb(self):
        return bool(getattr(self.sa, "is_mariadb", False))

    @classmethod
    def identifier_problem(cls, name):
        problem = super().identifier_problem(name)
        if problem:
            return problem
        if name.endswith(" "):
            return f"{cls.label} names cannot end with a space"
        wide = "".join(dict.fromkeys(c for c in name if ord(c) > 0xFFFF))
        if wide:
            return (f"{cls.label} names cannot hold characters outside the Basic Multilingual Plane "
                    f"(4-byte UTF-8, such as emoji): {wide!r}")
        return None

    @classmethod
    def connect_args(cls, timeout):
        # PyMySQL parses DATETIME/TIMESTAMP text with a regular expression in Python;
        # datetime.fromisoformat reads the same text ~15x faster (PyMySQL's parser stays
        # the fallback for what it does not read: zero dates, other fraction widths).
        try:
            from pymysql import converters
            from pymysql.constants import FIELD_TYPE
        except ImportError:  # the engine then says which driver to install
            return {"connect_timeout": timeout}
        conv = dict(converters.conversions)
        conv[FIELD_TYPE.DATETIME] = conv[FIELD_TYPE.TIMESTAMP] = _read_datetime
        return {"connect_timeout": timeout, "conv": conv}

    @classmethod
    def engine_kwargs(cls):
        return {"isolation_level": "READ COMMITTED"}

    @classmethod
    def prepare_engine(cls, engine):
        if engine.dialect.driver != "pymysql":
            return

        @sa.event.listens_for(engine, "do_connect")
        def _connect(dialect, record, cargs, cparams):
            return _pymysql_connection_class()(*cargs, **cparams)

    @classmethod
    def on_connect_statements(cls):
        return ["SET time_zone = '+00:00'"]

    def event_table_kwargs(self):
        return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

    # -- capture -------------------------------------------------------------
    def event_time_type(self):
        return mysql.DATETIME(fsp=6)

    def event_time_default(self):
        return sa.text("(UTC_TIMESTAMP(6))")

    def _insert_event(self, event, op, row, key_names):
        keys = [event_key_name(i) for i in range(len(key_names))]
        values = ", ".join(f"{row}.{self.quote(n)}" for n in key_names)
        return (
            f"INSERT INTO {self.qualified(event.schema, event.name)} "
            f"({column_list(self, ['pdr_op', *keys])}) VALUES ('{op}', {values})"
        )

    def create_trigger_statements(self, source, event, names, key_names, notify=False):
        table = self.qualified(source.schema, source.name)
        same_key = " AND ".join(
            f"CAST(OLD.{self.quote(n)} AS BINARY) <=> CAST(NEW.{self.quote(n)} AS BINARY)" for n in key_names
        )
        # MariaDB replaces a trigger atomically; MySQL 8 has no CREATE OR REPLACE TRIGGER.
        create = "CREATE OR REPLACE TRIGGER" if self.is_mariadb else "CREATE TRIGGER"
        head = "{create} {name} AFTER {when} ON {table} FOR EACH ROW "
        return [
            head.format(create=create, name=self.qualified(source.schema, names.insert_trigger),
                        when="INSERT", table=table)
            + self._insert_event(event, OP_INSERT, "NEW", key_names),
            head.format(create=create, name=self.qualified(source.schema, names.update_trigger),
                        when="UPDATE", table=table)
            + f"BEGIN IF NOT ({same_key}) THEN "
            + self._insert_event(event, OP_DELETE, "OLD", key_names)
            + "; END IF; "
            + self._insert_event(event, OP_UPDATE, "NEW", key_names)
            + "; END",
            head.format(create=create, name=self.qualified(source.schema, names.delete_trigger),
                        when="DELETE", table=table)
            + self._insert_event(event, OP_DELETE, "OLD", key_names),
        ]

    def replace_needs_drop(self):
        return not self.is_mariadb  # MySQL 8 has no CREATE OR REPLACE TRIGGER

    transactional_ddl = False  # CREATE/DROP TABLE commit at once

    @property
    def replaces_triggers_atomically(self):
        # MariaDB's CREATE OR REPLACE TRIGGER is atomic; MySQL drops then creates, and
        # its DDL commits at once: changes in between would go uncaptured
        return self.is_mariadb

    def drop_trigger_statements(self, source, names, triggers=None):
        chosen = names.triggers if triggers is None else [t for t in names.triggers if t in triggers]
        return [f"DROP TRIGGER IF EXISTS {self.qualified(source.schema, t)}" for t in chosen]

    def existing_triggers_query(self, schema, table_name, names):
        return sa.text(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = :schema AND EVENT_OBJECT_TABLE = :table"
        ).bindparams(schema=schema, table=table_name)

    def schema_triggers_query(self, schema):
        return sa.text("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = :schema"
                       ).bindparams(schema=schema)

    # -- visibility ----------------------------------------------------------
    def transaction_horizon(self, conn, event_table):
        # A locking read gives this transaction an id (above every id handed out before),
        # and locks nothing: no row has a negative id (READ COMMITTED takes no gap lock).
        conn.execute(sa.select(event_table.c.pdr_id).where(event_table.c.pdr_id == -1).with_for_update())
        # INNODB_TRX is a cache InnoDB refills only when nobody read it for 0.1 s: a result
        # that lists this transaction was filled after the check began; any other may be
        # stale (read-only transactions show id 0 on MariaDB, a large fake id on MySQL).
        rows = conn.execute(sa.text(
            "SELECT trx_id, trx_mysql_thread_id = CONNECTION_ID() FROM information_schema.INNODB_TRX")).all()
        mine = [int(trx_id) for trx_id, own in rows if own]
        if not mine or not mine[0]:
            # stale (another client keeps reading the view): the engine's status report is
            # made when asked
            return self._status_horizon(conn)
        others = [int(trx_id) for trx_id, own in rows if not own and 0 < int(trx_id) < mine[0]]
        return Horizon(mine[0], min(others, default=mine[0]))

    @staticmethod
    def _status_horizon(conn) -> Horizon | None:
        """The horizon from SHOW ENGINE INNODB STATUS, printed when asked: "Trx id counter"
        is above every id handed out, and the transaction list names every transaction
        (read-only ones without an id).  None when it cannot be read (no PROCESS
        privilege) or the list was truncated."""
        try:
            report = conn.execute(sa.text("SHOW ENGINE INNODB STATUS")).one()[2]
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            return None
        counter = re.search(r"^Trx id counter (\d+)$", report, re.M)
        listed = report.partition("LIST OF TRANSACTIONS FOR EACH SESSION:")[2].partition("\n--------\n")[0]
        if counter is None or not listed or "truncated" in listed:
            return None
        running = [int(x) for x in re.findall(r"^---TRANSACTION (\d+),", listed, re.M)]
        return Horizon(int(counter.group(1)), min(running, default=int(counter.group(1))))

    # -- apply ---------------------------------------------------------------
    def upsert(self, table, key_names, update_names, rows=None):
        stmt = mysql.insert(table)
        if rows is not None:
            stmt = stmt.values(rows)
        if not update_names:
            # a no-op update keeps the row and counts the key as applied
            update_names = key_names[:1]
        # VALUES(col) spelled with func: SQLAlchemy's stmt.inserted[...] escapes a "%" in
        # the column name twice for format-paramstyle drivers.
        return stmt.on_duplicate_key_update({n: sa.func.values(sa.column(n)) for n in update_names})

    #: Longest multi-row statement we send, in characters; also kept under the session's
    #: max_allowed_packet in bytes (``packet_limit``).
    max_statement_length = 500_000

    def packet_limit(self, conn) -> int:
        """The session's max_allowed_packet in bytes: the server drops the connection on a
        larger statement ("MySQL server has gone away", as in an outage).  Read once per
        DB-API connection (a session cannot change it)."""
        info = conn.connection.info
        if _PACKET_KEY not in info:
            def work(cursor):
                cursor.execute("SELECT @@max_allowed_packet")
                info[_PACKET_KEY] = int(cursor.fetchone()[0])

            self.run_on_driver(conn, "SELECT @@max_allowed_packet", work)
        return info[_PACKET_KEY]

    def _literal_statements(self, conn, head, rows, tail="", names=None):
        """``head`` + multi-row literal VALUES + ``tail``, split as ``_joined_statements``
        does (``names``: the columns of ``rows``, named by RowTooLarge).  Values are spelled
        by PyMySQL's own escaping rules (one dispatch per value)."""
        encode = _literal_encoder(conn.connection.dbapi_connection)

        def largest(i):
            return max((_sql_bytes(encode(value)), name) for name, value in zip(names, rows[i]))

        return self._joined_statements(head, (_row_literal(row, encode) for row in rows), tail,
                                       self.packet_limit(conn), largest if names else None)

    def _joined_statements(self, head, literals, tail="", limit=None, largest=None):
        """``head`` + the row ``literals`` joined by commas + ``tail``, split into statements
        under max_statement_length characters and, given ``limit`` (max_allowed_packet),
        under it in bytes; a generator.  A row too large alone raises RowTooLarge, naming
        the column ``largest(i)`` gives for the i-th row ((bytes, name) of its largest value)."""
        frame = len(head) + len(tail)
        longest, room = self.max_statement_length, None
        if limit is not None:
            # UTF-8 takes at most 4 bytes a character: text of room // 4 characters fits, and
            # only a literal longer than that is measured in bytes
            room = limit - _PACKET_MARGIN - _sql_bytes(head + tail)
            longest = min(longest, frame + room // 4)
        part, size = [], frame
        for i, text in enumerate(literals):
            if room is not None and len(text) * 4 > room and _sql_bytes(text) > room:
                raise _row_too_large(_sql_bytes(text), limit, largest(i) if largest else None)
            if part and size + len(text) + 1 > longest:
                # the literals are let go of once joined (large rows: one copy at a time)
                statement, part, size = _statement(head, part, tail), [], frame
                yield statement
                statement = None
            part.append(text)
            size += len(text) + 1
        if part:
            text = None
            statement, part = _statement(head, part, tail), None
            yield statement

    def _run_statements(self, conn, statements, label):
        """Execute ``statements``, an iterable spelled as it is sent: a value the driver
        refuses then comes out as SQLAlchemy's error, as it would through SQLAlchemy."""
        def work(cursor):
            for sql in statements:
                cursor.execute(sql)

        self.run_on_driver(conn, label[:200], work)

    def guard_rows(self, conn, table, rows):
        for row in rows:  # named by its column (PyMySQL's message names none)
            for name, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueRefused(f"value of column {name!r} is {value}: MariaDB's DOUBLE has no "
                                       f"infinity or NaN")
        # Only a row that might be near the limit is spelled (cheap bound first).
        if not rows or conn.dialect.driver != "pymysql":
            return
        limit = self.packet_limit(conn)
        for row in rows:
            if sum(map(_most_bytes, row.values())) > limit // 2:
                self._check_row(conn, table, row, limit)

    def _check_row(self, conn, table, row, limit):
        """Raise RowTooLarge when ``row`` spelled as SQL would not fit under ``limit`` in one
        statement (its columns named, as an upsert names them, three times)."""
        encode = _literal_encoder(conn.connection.dbapi_connection)
        sizes, frame = [], _PACKET_MARGIN
        for name, value in row.items():
            process = bind_processor(table.c[name].type, conn.dialect) \
                if table is not None and name in table.c else None
            sizes.append((_sql_bytes(encode(process(value) if process else value)), name))
            frame += 3 * _sql_bytes(name) + 32
        size = sum(s for s, _ in sizes)
        if size + frame > limit:
            raise _row_too_large(size, limit, max(sizes))

    def _upsert_head_tail(self, table, names, key_names, update_names):
        columns = ", ".join(self.raw_name(n) for n in names)
        updates = update_names or key_names[:1]  # a no-op update keeps the row
        action = ", ".join(f"{self.raw_name(n)} = VALUES({self.raw_name(n)})" for n in updates)
        return f"INSERT INTO {self.raw_table(table)} ({columns}) VALUES ", f" ON DUPLICATE KEY UPDATE {action}"

    def _delete_head_tail(self, table, key_names):
        columns = ", ".join(self.raw_name(n) for n in key_names)
        return f"DELETE FROM {self.raw_table(table)} WHERE ({columns}) IN (", ")"

    def bulk_upsert(self, conn, table, key_names, update_names, rows):
        # Multi-row INSERT ... ON DUPLICATE KEY UPDATE statements, spelled here rather than by
        # PyMySQL's executemany (which formats each value through three Python calls).
        if conn.dialect.driver != "pymysql":
            return False
        names = [n for n in table.c.keys() if n in rows[0]]
        head, tail = self._upsert_head_tail(table, names, key_names, update_names)
        values = self.bound_rows(conn, table, names, rows)
        self._run_statements(conn, self._literal_statements(conn, head, values, tail, names), head)
        return True

    def bulk_delete(self, conn, table, key_names, keys):
        if conn.dialect.driver != "pymysql":
            return False
        head, tail = self._delete_head_tail(table, key_names)
        values = self.bound_rows(conn, table, key_names, keys)
        self._run_statements(conn, self._literal_statements(conn, head, values, tail, key_names), head)
        return True

    range_delete_locks_next_row = True

    # -- rows passed as text ---------------------------------------------------------
    #: Written: row literals spelled by the source ("values", see PostgreSQL's
    #: ``crosstext.values_query``); read: rows spelled in PostgreSQL's COPY text form.
    text_format = "values"
    renders_text = ("copy",)

    def text_compatible(self, source_type, dest_type, dest=None, *, is_key=False):
        if dest is None or dest.text_format != "copy":
            return False
        if is_key and isinstance(source_type, sa.String):
            # a collation may compare different spellings equal ('bob' = 'Bob', 'a' = 'a '):
            # the batch query's DISTINCT and join would fold keys the Python path keeps apart
            return False
        return copy_spelling(source_type, dest_type) is not None

    #: An event read without keys, joined by the server: one row of (count, the ids joined
    #: by commas, the length that should have, the one-letter operations joined), which
    #: Python splits in C, instead of one row per event that PyMySQL parses in pure Python.
    #: {events} is the read (compiled by SQLAlchemy); only these fixed names are added.
    JOINED_EVENTS = ("SELECT COUNT(*), GROUP_CONCAT(pdr_e.pdr_id ORDER BY pdr_e.pdr_id SEPARATOR ','), "
                     "SUM(LENGTH(pdr_e.pdr_id)), "
                     "GROUP_CONCAT(pdr_e.pdr_op ORDER BY pdr_e.pdr_id SEPARATOR '') "
                     "FROM ({events}) AS pdr_e")
    #: GROUP_CONCAT stops at group_concat_max_len (1 MB by default: ~100,000 events), with
    #: a warning only: a result cut short (its length tells) is read again after this.
    GROUP_LENGTH = "SET SESSION group_concat_max_len = @@max_allowed_packet"

    def event_ids(self, conn, query):
        if conn.dialect.driver != "pymysql":
            return super().event_ids(conn, query)
        sql, params = self.driver_statement(conn, query)
        joined = self.JOINED_EVENTS.format(events=sql)
        for attempt in range(2):
            count, ids, length, ops = conn.exec_driver_sql(joined, params).one()
            if not count:
                return []
            if len(ids) == length + count - 1 and len(ops) == count:
                if isinstance(ids, bytes):  # (a binary string on some servers)
                    ids, ops = ids.decode("ascii"), ops.decode("ascii")
                return list(zip(map(int, ids.split(",")), itertools.repeat(None), ops))
            if attempt == 0:
                conn.exec_driver_sql(self.GROUP_LENGTH)
        return super().event_ids(conn, query)  # longer than max_allowed_packet: row by row

    def copy_out(self, conn, queries, fmt="copy", limit=None, values=None):
        if fmt != "copy":
            raise NotImplementedError(f"MySQL does not spell rows as {fmt!r}")
        out = []
        counter = TextCounter(limit)

        def work(cursor):
            from pymysql.cursors import SSCursor

            for query in queries:
                # unbuffered: the lines come as they are read, counted against ``limit``
                lines, stream = [], cursor.connection.cursor(SSCursor)
                try:
                    stream.execute(*self.driver_statement(conn, copy_query(query), values))
                    for (line,) in stream:
                        if line is None:
                            # a line MySQL could not build (longer than max_allowed_packet: its
                            # string functions then return NULL, with a warning only)
                            raise NotImplementedError("a row too long to spell as one line")
                        counter.add(len(line))
                        lines.append(line)
                finally:
                    stream.close()  # reads what is left of the result
                count = len(lines)
                lines.append(b"")  # the last line's "\n", without copying the text once more
                joined = b"\n".join(lines) if count else b""
                del lines
                text = joined.decode("utf-8")
                del joined
                out.append(TextRows(fmt, text, count, counter.largest))

        try:
            self.run_on_driver(conn, "SELECT ... rows as COPY text", work)
        finally:
            conn.rollback()
            # the query ran on the driver's cursor: end its transaction (and the metadata
            # locks it holds on the source and event tables) whether SQLAlchemy began one or not
            conn.connection.dbapi_connection.rollback()
        return out

    def _run_literals(self, conn, table, names, key_names, update_names, upserts, deletes) -> int:
        from pymysql.constants import SERVER_STATUS

        if conn.connection.dbapi_connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            # the literals were spelled with backslash escapes
            raise TextRefused("the session has sql_mode NO_BACKSLASH_ESCAPES")
        limit, parts = self.packet_limit(conn), []
        if deletes:
            head, tail = self._delete_head_tail(table, key_names)
            parts.append(self._joined_statements(head, deletes, tail, limit))
        if upserts:
            head, tail = self._upsert_head_tail(table, names, key_names, update_names)
            parts.append(self._joined_statements(head, upserts, tail, limit))
        if parts:
            self._run_statements(conn, itertools.chain(*parts), head)
        return len(upserts) + len(deletes)

    def apply_marked(self, conn, table, names, key_names, update_names, rows):
        upserts = [text for gone, text in zip(rows.flags, rows.data, strict=True) if not gone]
        deletes = [text for gone, text in zip(rows.flags, rows.data, strict=True) if gone]
        return self._run_literals(conn, table, names, key_names, update_names, upserts, deletes)

    def apply_copied(self, conn, table, names, key_names, update_names, rows, fresh=False):
        return self._run_literals(conn, table, names, key_names, update_names, rows.data, [])

    def upsert_batches(self, table, key_names, update_names, rows):
        # One multi-row INSERT per chunk rather than executemany: PyMySQL's executemany
        # leaves the ON DUPLICATE KEY UPDATE clause unformatted, so a column name with
        # "%" would reach the server as "%%".
        per_statement = max(1, self.max_parameters // max(1, len(table.columns)))
        return [(self.upsert(table, key_names, update_names, rows[i:i + per_statement]), None)
                for i in range(0, len(rows), per_statement)]

    # -- capture: what the triggers never see ----------------------------------
    #: Foreign-key actions MySQL/MariaDB carry out without firing the child's triggers.
    silent_actions = ("CASCADE", "SET NULL")

    def capture_blind_spots(self, conn, source):
        # InnoDB applies ON DELETE / ON UPDATE actions inside the storage engine: the
        # child table's triggers do not fire for the rows they change.
        query = sa.text(
            "SELECT CONSTRAINT_NAME, REFERENCED_TABLE_NAME, DELETE_RULE, UPDATE_RULE "
            "FROM information_schema.REFERENTIAL_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table "
            "ORDER BY CONSTRAINT_NAME"
        ).bindparams(schema=source.schema, table=source.name)
        messages = []
        for name, parent, on_delete, on_update in conn.execute(query):
            actions = [f"ON {verb} {rule}" for verb, rule in (("DELETE", on_delete), ("UPDATE", on_update))
                       if rule in self.silent_actions]
            if actions:
                messages.append(
                    f"Foreign key {name!r} of {source.name!r} (referencing {parent!r}) has "
                    f"{' and '.join(actions)}: {self.label} changes these rows of {source.name!r} without "
                    f"firing triggers, so the changes made by the cascade are not captured. Run "
                    f"manage.py pdr-verify --repair after such changes to find and fix them (or delete "
                    f"the child rows with an explicit statement before the parent row).")
        return messages

    # -- types ---------------------------------------------------------------
    def refine_reflected(self, conn, table):
        table = self._stored_names(conn, table)
        if self.is_mariadb:  # MySQL 8 has a real JSON type, reflected as such
            self._json_columns(conn, table)
        return table

    @staticmethod
    def _stored_names(conn, table):
        """``table`` with its columns named as information_schema names them (SQLAlchemy
        reads a name with a backtick back doubled: `a``b` as "a``b"): a new Table when
        a name differs, else ``table``."""
        if not any("`" in column.name for column in table.columns):
            return table
        query = sa.text(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table "
            "ORDER BY ORDINAL_POSITION"
        ).bindparams(schema=table.schema, table=table.name)
        names = [row[0] for row in conn.execute(query)]
        if len(names) != len(table.columns) or names == [c.name for c in table.columns]:
            return table
        renamed = dict(zip([c.name for c in table.columns], names))
        columns = [sa.Column(renamed[c.name], c.type, nullable=c.nullable, autoincrement=c.autoincrement,
                             comment=c.comment) for c in table.columns]
        key = [renamed[c.name] for c in table.primary_key.columns]  # in the key's own order
        constraints = [sa.PrimaryKeyConstraint(*key)] if key else []
        return sa.Table(table.name, sa.MetaData(), *columns, *constraints, schema=table.schema,
                        comment=table.comment)

    @staticmethod
    def _json_columns(conn, table):
        # MariaDB's JSON is LONGTEXT with a column-level CHECK (json_valid(col)),
        # listed in INFORMATION_SCHEMA.CHECK_CONSTRAINTS (SQLAlchemy does not report it).
        query = sa.text(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
        ).bindparams(schema=table.schema, table=table.name)
        clauses = {(row[0] or "").lower().replace("`", "").replace(" ", "") for row in conn.execute(query)}
        for column in table.columns:
            plain = column.name.lower().replace("`", "").replace(" ", "")
            if isinstance(column.type, sa.String) and f"json_valid({plain})" in clauses:
                column.type = sa.JSON()

    def generic_type(self, source_type):
        if isinstance(source_type, mysql.TINYINT):
            return sa.SmallInteger()
        if isinstance(source_type, (mysql.YEAR,)):
            return sa.SmallInteger()
        if isinstance(source_type, (mysql.SET, mysql.ENUM)):
            return sa.String(255)
        if isinstance(source_type, (mysql.TEXT, mysql.MEDIUMTEXT, mysql.LONGTEXT, mysql.TINYTEXT)):
            return sa.Text()
        if isinstance(source_type, mysql.BIT):
            return sa.BigInteger()
        return super().generic_type(source_type)

    def destination_type(self, generic, *, is_key):
        if isinstance(generic, sa.Uuid):
            return mysql.CHAR(36)
        if isinstance(generic, sa.JSON):
            return mysql.JSON()
        if isinstance(generic, sa.LargeBinary):
            return mysql.VARBINARY(255) if is_key else mysql.LONGBLOB()
        if isinstance(generic, sa.Float):
            return mysql.DOUBLE() if (generic.precision or 53) > 24 or isinstance(generic, sa.Double) \
                else mysql.FLOAT()
        if isinstance(generic, sa.Numeric):
            precision = generic.precision or 65
            scale = generic.scale if generic.scale is not None else (30 if not generic.precision else 0)
            return mysql.DECIMAL(min(precision, 65), min(scale, 30))
        if isinstance(generic, sa.DateTime):
            return mysql.DATETIME(fsp=6)
        if isinstance(generic, sa.Time):
            return mysql.TIME(fsp=6)
        if isinstance(generic, sa.Interval):
            return mysql.LONGTEXT()
        if isinstance(generic, sa.Enum):
            return mysql.VARCHAR(255)
        if isinstance(generic, sa.String):
            length = generic.length
            if is_key:
                return mysql.VARCHAR(min(length or 255, 768))
            if not length or length > 16000 or isinstance(generic, sa.Text):
                return mysql.LONGTEXT()
            return mysql.VARCHAR(length)
        return generic

    def table_kwargs(self):
        # utf8mb4 holds every code point; a binary collation keeps keys that differ
        # only in case, accents or trailing spaces distinct, as on the source.
        return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    def explain_error(self, exc):
        code = getattr(getattr(exc, "orig", None), "args", (None,))[0]
        if code == 1419:
            return ("Binary logging is on: creating triggers needs the SUPER privilege or "
                    "log_bin_trust_function_creators=1 on the server.")
        if code in (1142, 1044, 1227):
            return ("The MySQL user lacks a privilege: it needs TRIGGER and CREATE on the source "
                    "schema to install capture, and PROCESS to read INFORMATION_SCHEMA.INNODB_TRX.")
        return None

    # -- failed writes -------------------------------------------------------
    driver_modules = ("pymysql", "MySQLdb")

    def is_data_error(self, error):
        if type(error).__module__.partition(".")[0] not in self.driver_modules:
            return unencodable(error)
        code = error.args[0] if error.args else None
        if isinstance(code, int):
            return code in _DATA_ERRORS
        # PyMySQL refuses a float or Decimal infinity or NaN before sending (ProgrammingError
        # "inf can not be used with MySQL"; ours spell Decimals the same way)
        return str(error).endswith(" can not be used with MySQL")


@functools.cache
def _pymysql_connection_class():
    """PyMySQL's Connection, sharing one TLS context per process in its "preferred" mode.

    Given no TLS option, PyMySQL (1.2 and later) tries TLS without verifying the server
    and goes on in clear if the server offers none; for that it builds a TLS context per
    connection, with the system's certificate store loaded (~1 MB each, kept as long as
    the connection). This one builds it once, as PyMySQL would, and shares it: a context
    is safe to share between connections and threads, and is never changed after it is
    built. Any TLS option of the connection (``Database.options``) builds its own, as before.
    """
    from pymysql.connections import Connection

    lock, shared = threading.Lock(), []

    class SharedPreferredTLS(Connection):
        def _create_ssl_ctx(self, sslp):
            if not (isinstance(sslp, dict) and not sslp):
                return super()._create_ssl_ctx(sslp)
            with lock:
                if not shared:
                    shared.append(super()._create_ssl_ctx(sslp))
                return shared[0]

    return SharedPreferredTLS


def _decimal_literal(value) -> str:
    """A DECIMAL literal (never in exponent form, which MySQL would read as a DOUBLE);
    refused as PyMySQL refuses it for NaN and infinities (MySQL has no literal for them)."""
    if not value.is_finite():
        from pymysql.err import ProgrammingError

        raise ProgrammingError(f"{str(value).lower()} can not be used with MySQL")
    return format(value, "f")


def _sql_bytes(text: str) -> int:
    """The bytes of ``text`` in a statement (a lone surrogate: PyMySQL refuses it itself)."""
    return len(text.encode("utf-8", "replace"))


#: Values spelled in a few dozen bytes at most.
_SHORT_VALUES = (int, float, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta, uuid.UUID)


def _most_bytes(value) -> float:
    """At most how many bytes ``value`` takes as a MySQL literal, without spelling it: 4 a
    character of text, 2 a byte of binary (hexadecimal); unbounded for a value a column type
    still has to spell (a JSON document)."""
    if isinstance(value, str):
        return 4 * len(value) + 2
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 2 * len(value) + 10
    return 64 if value is None or isinstance(value, _SHORT_VALUES) else math.inf


def _row_too_large(size, limit, largest=None) -> RowTooLarge:
    """RowTooLarge for a row of ``size`` bytes as SQL; ``largest``: (bytes, column) of its
    largest value, when known."""
    if largest and largest[0] > limit - _PACKET_MARGIN:
        what = f"value of column {largest[1]!r} is {largest[0]:,} bytes as SQL"
    else:
        what = f"row is {size:,} bytes as SQL"
        if largest:
            what += f" (column {largest[1]!r}: {largest[0]:,})"
    enough = min(1 << (size + 65536).bit_length(), 1 << 30)  # MySQL's largest: 1 GB
    return RowTooLarge(f"{what}; the destination's max_allowed_packet is {limit:,} bytes: raise "
                       f"max_allowed_packet on the destination server (SET GLOBAL max_allowed_packet = "
                       f"{enough}; also in its config file), then retry the dead letter")


def _literal_encoder(dbapi_connection):
    """A function spelling one DB-API value as a MySQL literal, as PyMySQL would."""
    from pymysql import converters
    from pymysql.constants import SERVER_STATUS

    if dbapi_connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        def text(value):
            return "'" + value.replace("'", "''") + "'"
    else:
        def text(value):
            return "'" + converters.escape_string(value) + "'"
    by_type = {int: str, str: text, decimal.Decimal: _decimal_literal, float: converters.escape_float,
               bool: converters.escape_bool, datetime.datetime: converters.escape_datetime,
               datetime.date: converters.escape_date}
    get, fallback = by_type.get, dbapi_connection.escape

    def encode(value):
        return "NULL" if value is None else get(type(value), fallback)(value)

    return encode


def _read_datetime(text):
    """A DATETIME/TIMESTAMP value from MySQL's text protocol, as PyMySQL would read it."""
    from pymysql import converters

    try:
        value = text.decode("ascii") if isinstance(text, (bytes, bytearray)) else text
        if len(value) >= 19 and value[10] == " " and "+" not in value and value[0] != "0":
            return datetime.datetime.fromisoformat(value)
    except ValueError:
        pass
    return converters.convert_datetime(text)


def _row_literal(row, encode) -> str:
    """``(v1,v2,...)`` in one join of the joined values (``"(" + ... + ")"`` would copy a
    large row twice more)."""
    return "".join(("(", ",".join(map(encode, row)), ")"))


def _statement(head, literals, tail) -> str:
    """``head`` + the ``literals`` joined by commas + ``tail``, in one join (one literal
    alone is not copied by the inner join)."""
    return "".join((head, ",".join(literals), tail))
