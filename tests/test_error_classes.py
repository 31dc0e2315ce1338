"""Failed destination writes sorted per dialect (``Dialect.classify_error``): DATA (the row
becomes a dead letter), TRANSIENT (retried later, never a dead letter) or None (not a
database error: a bug, re-raised); and MySQL statements kept under max_allowed_packet.

The unit tests build the drivers' exceptions by hand; the live ones (``live``) provoke each
error on the real servers, as the worker's sessions would meet it."""
from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
import threading
import time
from types import SimpleNamespace

import psycopg2
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from django_pdr.dialects import MySQLDialect, PostgreSQLDialect, SQLiteDialect, get_dialect
from django_pdr.dialects.base import Dialect, TextRows
from django_pdr.errors import DATA, TRANSIENT, RowTooLarge

live = pytest.mark.live

PG = PostgreSQLDialect(postgresql.dialect())
MY = MySQLDialect(mysql.pymysql.dialect())
LITE = SQLiteDialect(sqlite.dialect())
NUL_REFUSED = "A string literal cannot contain NUL (0x00) characters."


def wrapped(orig, dbapi_error):
    """``orig`` as SQLAlchemy raises it from a statement."""
    return sa.exc.DBAPIError.instance("INSERT ...", {}, orig, dbapi_error)


def pg_error(code, base=psycopg2.DatabaseError):
    """A psycopg2 error carrying SQLSTATE ``code`` (psycopg2 sets it from the server only)."""
    return type("ServerError", (base,), {"pgcode": code, "__module__": "psycopg2.errors"})("message")


def raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


# -- unit: classification ----------------------------------------------------------

def test_base_dialect_counts_every_error_transient_except_a_row_too_large():
    base = Dialect(sqlite.dialect())
    assert base.classify_error(RowTooLarge("big")) == DATA
    assert base.classify_error(KeyError("x")) == TRANSIENT
    assert base.classify_error(wrapped(sqlite3.IntegrityError("UNIQUE"), sqlite3.Error)) == TRANSIENT


@pytest.mark.parametrize("dialect", [PG, MY, LITE], ids=["postgresql", "mysql", "sqlite"])
def test_row_too_large_is_data_and_bugs_are_not_database_errors(dialect):
    assert dialect.classify_error(RowTooLarge("big")) == DATA
    for bug in (KeyError("x"), TypeError("unsupported operand"), ValueError("invalid literal for int()"),
                AttributeError("x"), sa.exc.InvalidRequestError("x")):
        assert dialect.classify_error(bug) is None, bug
    # SQLAlchemy wraps an error of a type's own conversion (not the driver's) too
    uuid_failure = sa.exc.StatementError("badly formed", "INSERT ...", {}, ValueError("badly formed hex"))
    assert dialect.classify_error(uuid_failure) is None
    # text the driver cannot encode (a lone surrogate) never reaches any server
    surrogate = raised(lambda: "\ud800".encode("utf-8"))
    assert dialect.classify_error(surrogate) == DATA


@pytest.mark.parametrize("code, kind", [
    ("23502", DATA), ("23505", DATA), ("23514", DATA), ("23503", DATA), ("22003", DATA), ("22001", DATA),
    ("22P02", DATA), ("22021", DATA), ("22P05", DATA), ("22012", DATA), ("54000", DATA),
    *[(code, TRANSIENT) for code in ("40001", "40P01", "55P03", "25006", "25P02", "53300", "53100", "57P01",
                                     "57014", "08006", "42703", "42P01", "42601", "42501", "54001", "P0001",
                                     "XX000")],
])
def test_postgresql_sqlstate_classes(code, kind):
    error = pg_error(code)
    assert PG.classify_error(error) == kind
    assert PG.classify_error(wrapped(error, psycopg2.Error)) == kind


def test_postgresql_driver_refusals():
    # psycopg2 refuses NUL in text with a bare ValueError, which SQLAlchemy does not wrap
    assert PG.classify_error(ValueError(NUL_REFUSED)) == DATA
    # a dropped connection: psycopg2.OperationalError without SQLSTATE
    lost = psycopg2.OperationalError("server closed the connection unexpectedly")
    assert PG.classify_error(lost) == PG.classify_error(wrapped(lost, psycopg2.Error)) == TRANSIENT
    # a type psycopg2 cannot adapt is the same for every row: not the row's fault
    assert PG.classify_error(wrapped(psycopg2.ProgrammingError("can't adapt type 'dict'"), psycopg2.Error)) \
        == TRANSIENT


@pytest.mark.parametrize("code, kind", [
    (1048, DATA), (1062, DATA), (1264, DATA), (1265, DATA), (1292, DATA), (1300, DATA), (1364, DATA),
    (1365, DATA), (1366, DATA), (1367, DATA), (1406, DATA), (1411, DATA), (1451, DATA), (1452, DATA),
    (1690, DATA), (3140, DATA), (3819, DATA), (4025, DATA), (1153, DATA),
    (1205, TRANSIENT), (1213, TRANSIENT), (1290, TRANSIENT), (1836, TRANSIENT), (1792, TRANSIENT),
    (1040, TRANSIENT), (2006, TRANSIENT), (2013, TRANSIENT), (1053, TRANSIENT), (1927, TRANSIENT),
    (1114, TRANSIENT), (1021, TRANSIENT), (1054, TRANSIENT), (1146, TRANSIENT), (1064, TRANSIENT),
    (1969, TRANSIENT), (1317, TRANSIENT), (1142, TRANSIENT),
])
def test_mysql_error_numbers(code, kind):
    error = pymysql.err.OperationalError(code, "message")
    assert MY.classify_error(error) == kind
    assert MY.classify_error(wrapped(error, pymysql.err.Error)) == kind


def test_mysql_driver_refusals():
    for text in ("inf", "-inf", "nan"):
        error = pymysql.err.ProgrammingError(f"{text} can not be used with MySQL")
        assert MY.classify_error(error) == DATA
        assert MY.classify_error(wrapped(error, pymysql.err.Error)) == DATA
    # an OSError's number is not a server error number
    assert MY.classify_error(ConnectionResetError(1062, "reset")) is None
    assert MY.classify_error(pymysql.err.InterfaceError("(0, '')")) == TRANSIENT


def test_mysql_decimal_without_a_literal_is_refused_as_pymysql_refuses_it():
    from django_pdr.dialects.mysql import _literal_encoder

    encode = _literal_encoder(SimpleNamespace(server_status=0, escape=None))
    for value, text in ((decimal.Decimal("NaN"), "nan"), (decimal.Decimal("-Infinity"), "-infinity")):
        error = raised(lambda: encode(value))
        assert isinstance(error, pymysql.err.ProgrammingError)
        assert str(error) == f"{text} can not be used with MySQL"
        assert MY.classify_error(error) == DATA


@pytest.mark.parametrize("error, kind", [
    (sqlite3.IntegrityError("NOT NULL constraint failed: t.v"), DATA),
    (sqlite3.IntegrityError("UNIQUE constraint failed: t.id"), DATA),
    (sqlite3.IntegrityError("CHECK constraint failed: n > 0"), DATA),
    (sqlite3.IntegrityError("datatype mismatch"), DATA),
    (sqlite3.IntegrityError("cannot store TEXT value in INT column t.s"), DATA),
    (sqlite3.DataError("string or blob too big"), DATA),
    (sqlite3.OperationalError("database is locked"), TRANSIENT),
    (sqlite3.OperationalError("attempt to write a readonly database"), TRANSIENT),
    (sqlite3.OperationalError("disk I/O error"), TRANSIENT),
    (sqlite3.OperationalError("no such table: t"), TRANSIENT),
])
def test_sqlite_errors(error, kind):
    assert LITE.classify_error(error) == kind
    assert LITE.classify_error(wrapped(error, sqlite3.Error)) == kind


def test_sqlite_refuses_integers_beyond_64_bits():
    assert LITE.classify_error(OverflowError("Python int too large to convert to SQLite INTEGER")) == DATA
    assert LITE.classify_error(OverflowError("math range error")) is None


# -- unit: MySQL statements under max_allowed_packet -----------------------------

def test_statements_split_under_the_packet_limit_in_bytes():
    from django_pdr.dialects.mysql import _PACKET_MARGIN

    head, tail, limit = "INSERT INTO t (a) VALUES ", " ON DUPLICATE KEY UPDATE a = VALUES(a)", 12_000
    rows = ["('" + "日" * 1000 + "')"] * 5 + ["(1)"] * 10 + ["('" + "x" * 9000 + "')", "(2)"]
    statements = list(MY._joined_statements(head, rows, tail, limit))
    assert all(len(s.encode()) <= limit - _PACKET_MARGIN for s in statements)
    # several rows: at most a quarter of the room in characters (any text that long fits in
    # bytes); a row longer than that is measured in bytes and goes alone
    assert [s.count("(") - 2 for s in statements] == [2, 2, 1 + 10, 1, 1]
    assert "".join(s[len(head):-len(tail)] + "," for s in statements) == ",".join(rows) + ","
    # without a limit: characters only, as before
    assert len(list(MY._joined_statements(head, rows, tail))) == 1


def test_a_row_larger_than_the_packet_limit_names_its_column():
    head, limit = "INSERT INTO t (id, body) VALUES ", 12_000
    rows = [(1, "a"), (2, "é" * 6000)]
    literals = [f"({i},'{v}')" for i, v in rows]
    error = raised(lambda: list(MY._joined_statements(head, literals, "", limit,
                                                      lambda i: (len(rows[i][1].encode()) + 2, "body"))))
    assert isinstance(error, RowTooLarge) and MY.classify_error(error) == DATA
    assert str(error) == (
        "value of column 'body' is 12,002 bytes as SQL; the destination's max_allowed_packet is 12,000 "
        "bytes: raise max_allowed_packet on the destination server (SET GLOBAL max_allowed_packet = 131072; "
        "also in its config file), then retry the dead letter")
    # rows spelled by the source (the text path): no column to name
    error = raised(lambda: list(MY._joined_statements(head, literals, "", limit)))
    assert str(error).startswith("row is 12,006 bytes as SQL; the destination's max_allowed_packet is 12,000")


def fake_mysql_connection(limit):
    """What guard_rows uses of a SQLAlchemy connection: its dialect, the DB-API
    connection's escaping, and the session's cached max_allowed_packet."""
    dbapi_connection = SimpleNamespace(server_status=0, escape=lambda value: f"X'{value.hex()}'")
    record = SimpleNamespace(info={"pdr_max_allowed_packet": limit}, dbapi_connection=dbapi_connection)
    return SimpleNamespace(dialect=mysql.pymysql.dialect(), connection=record)


def test_guard_rows_measures_values_as_their_column_types_spell_them():
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("doc", sa.JSON), sa.Column("body", sa.Text))
    conn = fake_mysql_connection(20_000)
    MY.guard_rows(conn, table, [{"id": 1, "doc": {"a": 1}, "body": "日" * 4000}])  # 12,000 bytes
    MY.guard_rows(conn, table, [])
    error = raised(lambda: MY.guard_rows(conn, table, [{"id": 1, "doc": {"a": "x" * 25_000}, "body": None}]))
    assert isinstance(error, RowTooLarge) and "value of column 'doc' is 25,015 bytes" in str(error)
    error = raised(lambda: MY.guard_rows(conn, table, [{"id": 1, "doc": ["y" * 9000], "body": "z" * 10_000}]))
    assert str(error).startswith("row is 19,0") and "(column 'body': 10,002)" in str(error)
    # a custom statement's parameters, with no table: the values as given
    error = raised(lambda: MY.guard_rows(conn, None, [{"p": 1}, {"p": b"\xff" * 10_000}]))
    assert "value of column 'p' is 20,003 bytes" in str(error)
    Dialect.guard_rows(PG, conn, table, [{"body": "x" * 10 ** 6}])  # no limit elsewhere


# -- live: PostgreSQL ---------------------------------------------------------------

def other_thread(fn):
    """Run ``fn`` in a thread; return a function that joins it and returns its exception."""
    box = []

    def run():
        try:
            fn()
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return lambda: (thread.join(10), box[0] if box else None)[1]


def deadlock(a, b):
    """Rows 1 and 2 of t locked by ``a`` and ``b`` in opposite orders: the errors raised
    (one of the two is chosen as the victim); both transactions rolled back."""
    a.exec_driver_sql("UPDATE t SET v = 'a' WHERE id = 1")
    b.exec_driver_sql("UPDATE t SET v = 'b' WHERE id = 2")
    join = other_thread(lambda: a.exec_driver_sql("UPDATE t SET v = 'a' WHERE id = 2"))
    time.sleep(0.3)
    mine = raised(lambda: b.exec_driver_sql("UPDATE t SET v = 'b' WHERE id = 1"))
    errors = [e for e in (mine, join()) if e]
    a.rollback()
    b.rollback()
    return errors


@pytest.fixture
def pg_target(make_target):
    target = make_target("postgresql")
    target.execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, n numeric(5, 2), "
                   "c int CHECK (c > 0))", "INSERT INTO t VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
    table = sa.Table("t", sa.MetaData(), autoload_with=target.engine)
    return target, table, get_dialect(target.engine)


def insert_error(engine, table, rows):
    def fn():
        with engine.begin() as conn:
            conn.execute(sa.insert(table), rows)
    return raised(fn)


@live
def test_postgresql_rows_refused_for_their_data(pg_target):
    target, table, dialect = pg_target
    cases = {"NOT NULL": [{"id": 3, "v": None}], "CHECK": [{"id": 3, "v": "x", "c": -1}],
             "unique": [{"id": 1, "v": "x"}], "numeric overflow": [{"id": 3, "v": "x", "n": 12345}],
             "NUL": [{"id": 3, "v": "a\x00b"}],
             "NUL, executemany": [{"id": 3, "v": "a\x00b"}, {"id": 4, "v": "c"}]}
    errors = {name: insert_error(target.engine, table, rows) for name, rows in cases.items()}
    assert {name: type(e).__name__ for name, e in errors.items()} == {
        "NOT NULL": "IntegrityError", "CHECK": "IntegrityError", "unique": "IntegrityError",
        "numeric overflow": "DataError", "NUL": "ValueError", "NUL, executemany": "ValueError"}
    assert str(errors["NUL"]) == NUL_REFUSED
    assert {name: dialect.classify_error(e) for name, e in errors.items()} == dict.fromkeys(cases, DATA)


@live
def test_postgresql_bulk_paths_refuse_nul_as_data(pg_target):
    target, table, dialect = pg_target
    rows = [{"id": 3, "v": "a\x00b", "n": None, "c": None}, {"id": 4, "v": "c", "n": None, "c": None}]

    def bulk():  # COPY cannot spell NUL: the rows take execute_values, psycopg2 refuses
        with target.engine.begin() as conn:
            dialect.bulk_upsert(conn, table, ["id"], ["v", "n", "c"], rows)

    def copied():  # NUL in COPY text (a source's spelling): the server refuses it
        with target.engine.begin() as conn:
            dialect.apply_copied(conn, table, ["id", "v"], ["id"], ["v"], TextRows("copy", "3\ta\x00b\n", 1))

    error = raised(bulk)
    assert type(error) is ValueError and str(error) == NUL_REFUSED and dialect.classify_error(error) == DATA
    error = raised(copied)
    assert isinstance(error, sa.exc.DataError) and error.orig.pgcode == "22021"
    assert dialect.classify_error(error) == DATA


@live
def test_postgresql_locks_and_read_only_are_transient(pg_target):
    target, table, dialect = pg_target
    engine = target.engine
    with engine.connect() as holder:
        holder.exec_driver_sql("SELECT * FROM t WHERE id = 1 FOR UPDATE")

        def wait_for_lock():
            with engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                conn.exec_driver_sql("UPDATE t SET v = 'y' WHERE id = 1")

        def statement_timeout():
            with engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL statement_timeout = '200ms'")
                conn.exec_driver_sql("UPDATE t SET v = 'y' WHERE id = 1")

        lock, timeout = raised(wait_for_lock), raised(statement_timeout)
        holder.rollback()

    def read_only():
        with engine.begin() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.execute(sa.insert(table), [{"id": 9, "v": "x"}])

    def missing_column():
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE t SET nope = 1")

    errors = {"55P03": lock, "57014": timeout, "25006": raised(read_only), "42703": raised(missing_column)}
    assert {code: e.orig.pgcode for code, e in errors.items()} == {code: code for code in errors}
    assert {code: dialect.classify_error(e) for code, e in errors.items()} == dict.fromkeys(errors, TRANSIENT)


@live
def test_postgresql_deadlock_serialization_and_lost_connection_are_transient(pg_target):
    target, table, dialect = pg_target
    engine = target.engine
    with engine.connect() as a, engine.connect() as b:
        for conn in (a, b):
            conn.exec_driver_sql("SET deadlock_timeout = '100ms'")
        errors = deadlock(a, b)
        assert [e.orig.pgcode for e in errors] == ["40P01"]
        assert dialect.classify_error(errors[0]) == TRANSIENT

        for conn in (a, b):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            conn.exec_driver_sql("SELECT * FROM t").all()
        a.exec_driver_sql("UPDATE t SET v = 's' WHERE id = 1")
        a.commit()
        error = raised(lambda: b.exec_driver_sql("UPDATE t SET v = 's2' WHERE id = 1"))
        b.rollback()
        assert error.orig.pgcode == "40001" and dialect.classify_error(error) == TRANSIENT

        pid = a.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        b.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        time.sleep(0.2)
        error = raised(lambda: a.exec_driver_sql("SELECT 1"))
        assert error.connection_invalidated and dialect.classify_error(error) == TRANSIENT


# -- live: MariaDB -------------------------------------------------------------------

@pytest.fixture
def my_target(make_target):
    target = make_target("mysql")
    target.execute("CREATE TABLE p (id int PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO p VALUES (1)",
                   "CREATE TABLE t (id int PRIMARY KEY, v varchar(5) NOT NULL, s smallint, "
                   "c int CHECK (c > 0), d datetime, f double, n decimal(10, 2), pid int, "
                   "FOREIGN KEY (pid) REFERENCES p (id)) ENGINE=InnoDB",
                   "INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b')")
    table = sa.Table("t", sa.MetaData(), autoload_with=target.engine)
    return target, table, get_dialect(target.engine)


@live
def test_mariadb_rows_refused_for_their_data_in_strict_mode(my_target):
    target, table, dialect = my_target
    with target.engine.connect() as conn:
        assert "STRICT_TRANS_TABLES" in conn.exec_driver_sql("SELECT @@sql_mode").scalar()
    cases = {1048: {"v": None}, 1062: {"id": 1}, 1264: {"s": 99999}, 1406: {"v": "abcdefgh"}, 4025: {"c": -1},
             1292: {"d": "2020-13-45"}, 1366: {"s": "abc"}, 1265: {"n": "1.2.3"}, 1452: {"pid": 99}}
    errors = {code: insert_error(target.engine, table, [{"id": 3, "v": "x"} | row])
              for code, row in cases.items()}
    assert {code: e.orig.args[0] for code, e in errors.items()} == {code: code for code in cases}
    assert {code: dialect.classify_error(e) for code, e in errors.items()} == dict.fromkeys(cases, DATA)


@live
def test_mariadb_values_pymysql_refuses_are_data_on_every_path(my_target):
    target, table, dialect = my_target
    row = {"id": 3, "v": "x", "s": None, "c": None, "d": None, "f": None, "n": None, "pid": None}

    def bulk(**values):
        with target.engine.begin() as conn:
            dialect.bulk_upsert(conn, table, ["id"], ["v", "f", "n"], [row | values, row | {"id": 4}])

    through_sqlalchemy = insert_error(target.engine, table, [row | {"f": float("inf")}])
    for error in (through_sqlalchemy, raised(lambda: bulk(f=float("nan"))),
                  raised(lambda: bulk(n=decimal.Decimal("NaN")))):
        assert isinstance(error, sa.exc.ProgrammingError)
        assert isinstance(error.orig, pymysql.err.ProgrammingError)
        assert str(error.orig).endswith(" can not be used with MySQL")
        assert dialect.classify_error(error) == DATA


@live
def test_mariadb_locks_read_only_and_lost_connections_are_transient(my_target):
    target, table, dialect = my_target
    engine = target.engine
    with engine.connect() as holder, engine.connect() as conn:
        holder.exec_driver_sql("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
        lock = raised(lambda: conn.exec_driver_sql("UPDATE t SET v = 'y' WHERE id = 1"))
        conn.rollback()
        holder.rollback()

        deadlocks = deadlock(holder, conn)

        conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        conn.commit()
        read_only = raised(lambda: conn.execute(sa.insert(table), [{"id": 9, "v": "x"}]))
        conn.invalidate()  # the session setting goes with the connection
        missing = raised(lambda: holder.exec_driver_sql("UPDATE t SET nope = 1"))
        holder.rollback()

        killed_id = holder.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        with engine.connect() as admin:
            admin.exec_driver_sql(f"KILL {killed_id}")
        lost = raised(lambda: holder.exec_driver_sql("SELECT 1"))

    errors = {1205: lock, 1213: deadlocks[0], 1792: read_only, 1054: missing, 2013: lost}
    assert len(deadlocks) == 1
    assert {code: e.orig.args[0] for code, e in errors.items()} == {code: code for code in errors}
    assert {code: dialect.classify_error(e) for code, e in errors.items()} == dict.fromkeys(errors, TRANSIENT)


# -- live: MariaDB max_allowed_packet --------------------------------------------

MB = 1_000_000


@pytest.fixture
def big_target(make_target):
    target = make_target("mysql")
    target.execute("CREATE TABLE docs (id int PRIMARY KEY, title varchar(20), body longtext) "
                   "ENGINE=InnoDB CHARACTER SET utf8mb4")
    table = sa.Table("docs", sa.MetaData(), autoload_with=target.engine)
    with target.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar() == 16_777_216
    return target, table, get_dialect(target.engine)


def stored(target):
    with target.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT id, LENGTH(body) FROM docs ORDER BY id").all()


def sent_statements(monkeypatch):
    """The byte sizes of the statements MySQLDialect sends through its own path."""
    sizes, run = [], MySQLDialect._run_statements

    def spy(self, conn, statements, label):
        run(self, conn, (sizes.append(len(s.encode())) or s for s in statements), label)

    monkeypatch.setattr(MySQLDialect, "_run_statements", spy)
    return sizes


@live
def test_mariadb_row_over_max_allowed_packet_is_refused_before_sending(big_target):
    target, table, dialect = big_target
    body = "é" * 8_912_900  # 17,825,800 bytes

    def bulk():
        with target.engine.begin() as conn:
            rows = [{"id": 1, "title": "small", "body": "x"}, {"id": 2, "title": "big", "body": body}]
            dialect.bulk_upsert(conn, table, ["id"], ["title", "body"], rows)

    def guarded():
        with target.engine.begin() as conn:
            dialect.guard_rows(conn, table, [{"id": 2, "title": "big", "body": body}])

    for error in (raised(bulk), raised(guarded)):
        assert isinstance(error, RowTooLarge) and dialect.classify_error(error) == DATA
        assert str(error).startswith("value of column 'body' is 17,825,802 bytes as SQL; the destination's "
                                     "max_allowed_packet is 16,777,216 bytes: raise max_allowed_packet")
    rows = TextRows("values", [f"(2,'big','{body}')"], 1)

    def copied():
        with target.engine.begin() as conn:
            dialect.apply_copied(conn, table, ["id", "title", "body"], ["id"], ["title", "body"], rows)

    error = raised(copied)
    assert isinstance(error, RowTooLarge) and str(error).startswith("row is 17,825,812 bytes as SQL;")
    assert stored(target) == []


@live
def test_mariadb_rows_under_max_allowed_packet_land(big_target, monkeypatch):
    target, table, dialect = big_target
    sizes = sent_statements(monkeypatch)
    with target.engine.begin() as conn:  # one row of 15 MB through SQLAlchemy, as the one-row path does
        row = {"id": 1, "title": "one", "body": "x" * 15 * MB}
        dialect.guard_rows(conn, table, [row])
        for statement, params in dialect.upsert_batches(table, ["id"], ["title", "body"], [row]):
            conn.execute(statement, params)
    with target.engine.begin() as conn:  # and through the multi-row path: two statements
        rows = [{"id": 2, "title": "a", "body": "y" * 9 * MB}, {"id": 3, "title": "b", "body": "z" * 9 * MB}]
        dialect.bulk_upsert(conn, table, ["id"], ["title", "body"], rows)
    assert len(sizes) == 2 and all(9 * MB < size < 9 * MB + 200 for size in sizes)
    with target.engine.begin() as conn:  # 15 MB through the multi-row path
        rows = [{"id": 4, "title": "c", "body": "é" * 7_500_000}, {"id": 5, "title": "d", "body": "w"}]
        dialect.bulk_upsert(conn, table, ["id"], ["title", "body"], rows)
    assert len(sizes) == 4 and 15 * MB < sizes[2] < 15 * MB + 200
    assert stored(target) == [(1, 15 * MB), (2, 9 * MB), (3, 9 * MB), (4, 15 * MB), (5, 1)]


@live
def test_mariadb_statement_just_over_max_allowed_packet_is_a_data_error(big_target):
    # Slightly over the limit, the server answers 1153 before dropping the connection;
    # further over, the client only sees the connection go (2006), as in an outage.
    target, table, dialect = big_target
    with target.engine.connect() as conn:
        sql = "SELECT LENGTH('" + "x" * (16_777_216 - 16) + "')"
        error = raised(lambda: conn.exec_driver_sql(sql))
        assert not error.connection_invalidated  # SQLAlchemy does not know the connection is gone
        conn.invalidate()
        assert error.orig.args[0] == 1153 and dialect.classify_error(error) == DATA


# -- live: SQLite ----------------------------------------------------------------------

@live
def test_sqlite_locked_and_read_only_are_transient_constraints_are_data(tmp_path):
    path = tmp_path / "db.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    dialect = get_dialect(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id integer PRIMARY KEY, v text NOT NULL UNIQUE, "
                             "n int CHECK (n > 0))")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'a', 1)")
    table = sa.Table("t", sa.MetaData(), autoload_with=engine)
    cases = {"NOT NULL": [{"id": 2, "v": None}], "UNIQUE": [{"id": 2, "v": "a"}],
             "CHECK": [{"id": 2, "v": "b", "n": 0}], "datatype mismatch": [{"id": "x", "v": "c"}],
             "64 bits": [{"id": 2, "v": "d", "n": 2 ** 70}]}
    errors = {name: insert_error(engine, table, rows) for name, rows in cases.items()}
    assert type(errors["64 bits"]) is OverflowError
    assert str(errors["datatype mismatch"].orig) == "datatype mismatch"
    assert {name: dialect.classify_error(e) for name, e in errors.items()} == dict.fromkeys(cases, DATA)

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    locked = insert_error(engine, table, [{"id": 5, "v": "e"}])
    holder.execute("ROLLBACK")
    holder.close()
    assert str(locked.orig) == "database is locked" and dialect.classify_error(locked) == TRANSIENT
    engine.dispose()

    read_only = sa.create_engine("sqlite://",
                                 creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True))
    error = insert_error(read_only, table, [{"id": 6, "v": "f"}])
    assert str(error.orig) == "attempt to write a readonly database"
    assert dialect.classify_error(error) == TRANSIENT
    read_only.dispose()


# -- live: Firebird 3 ---------------------------------------------------------------
@live
def test_firebird_rows_refused_for_their_data_and_locks_transient(make_target):
    target = make_target("firebird")
    target.execute("CREATE TABLE p (id int NOT NULL PRIMARY KEY)",
                   "CREATE TABLE t (id int NOT NULL PRIMARY KEY, v varchar(5) NOT NULL, n numeric(5, 2), "
                   "s smallint, c int CHECK (c > 0), pid int REFERENCES p (id))")
    target.execute("INSERT INTO t (id, v) VALUES (1, 'a')")
    with target.engine.connect() as conn:
        dialect = get_dialect(conn)
        table = sa.Table("t", sa.MetaData(), autoload_with=conn)
        dialect.refine_reflected(conn, table)

    def merge_error(row):
        def fn():
            with target.engine.begin() as conn:
                dialect.guard_rows(conn, table, [row])
                for statement, params in dialect.upsert_batches(table, ["id"], [n for n in row if n != "id"],
                                                                [row]):
                    conn.execute(statement, params)
        return raised(fn)

    base = {"id": 3, "v": "x"}
    # NUMERIC(5, 2) is stored as a 32-bit integer: Firebird takes 12345 (its precision is
    # not enforced) and refuses what the storage cannot hold
    cases = {"NOT NULL": {"v": None}, "string too long": {"v": "abcdefgh"},
             "numeric overflow": {"n": decimal.Decimal("100000000")},
             "CHECK": {"c": -1}, "foreign key": {"pid": 99}, "smallint range": {"s": 99999},
             "timestamp precision": {"v": dt.datetime(2020, 1, 1, 0, 0, 0, 123456)}}
    errors = {name: merge_error(base | row) for name, row in cases.items()}
    assert {name: dialect.classify_error(e) for name, e in errors.items()} == dict.fromkeys(cases, DATA), \
        {name: repr(e)[:200] for name, e in errors.items()}
    duplicate = insert_error(target.engine, table, [{"id": 1, "v": "b"}])
    assert dialect.classify_error(duplicate) == DATA

    # a row another transaction holds: the lock time-out is transient
    from django_pdr.dialects import firebird

    holder = target.engine.connect()
    holder.begin()
    holder.execute(sa.update(table).where(table.c.id == 1).values(v="held"))
    other = sa.create_engine(target.engine.url)
    old, firebird.FirebirdDialect.lock_timeout = firebird.FirebirdDialect.lock_timeout, 1
    try:
        firebird.FirebirdDialect.prepare_engine(other)
        with other.connect() as conn:
            conn.begin()
            blocked = raised(lambda: conn.execute(sa.update(table).where(table.c.id == 1).values(v="late")))
            conn.rollback()
        assert dialect.classify_error(blocked) == TRANSIENT, repr(blocked)
        with other.connect() as conn:
            missing = raised(lambda: conn.execute(sa.text("SELECT * FROM no_such_table")))
        assert dialect.classify_error(missing) == TRANSIENT
    finally:
        firebird.FirebirdDialect.lock_timeout = old
        holder.rollback()
        holder.close()
        other.dispose()
