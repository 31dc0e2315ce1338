"""Dialect SQL without a database server.

Every statement django-pdr runs comes from ``django_pdr.dialects``; here it is
rendered with each engine's SQLAlchemy dialect and checked as text.  Where SQLite
can prove behaviour cheaply (an in-memory database), the SQL is also executed:
triggers, upserts, key filters and the event reader of ``django_pdr.engine.visibility``.
Per-engine facts asserted here are the ones listed in ``docs/dialects.md``.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import sqlite3
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from django_pdr import coerce
from django_pdr.engine import visibility
from django_pdr.dialects import (
    KINDS, MySQLDialect, PostgreSQLDialect, SQLiteDialect, dialect_for_kind, event_key_name, get_dialect,
)
from django_pdr.dialects.firebird import FirebirdDialect
from django_pdr.mapping import Mapping
from django_pdr.schema import destination_table
from django_pdr.dialects.base import Horizon
from django_pdr.engine.visibility import EventReader, Gap, Position, _split

UTC = dt.timezone.utc


# -- dialect fixtures ----------------------------------------------------------

def pg():
    return PostgreSQLDialect(postgresql.dialect())


def my(mariadb=False):
    sa_dialect = mysql.dialect()
    sa_dialect.is_mariadb = mariadb
    return MySQLDialect(sa_dialect)


def lite():
    return SQLiteDialect(sqlite.dialect())


def fb():
    from sqlalchemy_firebird.firebird import FBDialect_firebird

    sa_dialect = FBDialect_firebird()
    sa_dialect.server_version_info = (3, 0)  # what it reads on connecting to the tested server
    return FirebirdDialect(sa_dialect)


ALL = {"postgresql": pg, "mysql": my, "mariadb": lambda: my(mariadb=True), "sqlite": lite, "firebird": fb}
ENGINES = sorted(ALL)

#: A source table whose name and key columns try every way to break SQL text.
HOSTILE_TABLE = "Order \"Lines\" `x` it's; select :colon 50% Straße 日本"
HOSTILE_KEYS = ["select", "order", "Mixed \"q\" `b` 's'; :colon 50% Straße 日本"]
SCHEMA = {"postgresql": "My \"Schema\"", "mysql": "db", "mariadb": "db", "sqlite": None, "firebird": None}


def hand_quoted(dialect, name):
    """The quoted form of ``name``, derived by hand (not by the preparer under test)."""
    percent = "%%" if dialect.sa.paramstyle in ("format", "pyformat") else "%"
    if isinstance(dialect, MySQLDialect):
        return "`" + name.replace("`", "``").replace("%", percent) + "`"
    return '"' + name.replace('"', '""').replace("%", percent) + '"'


def hostile_source(engine, metadata=None):
    metadata = metadata or sa.MetaData()
    return sa.Table(
        HOSTILE_TABLE, metadata,
        sa.Column(HOSTILE_KEYS[0], sa.Integer, primary_key=True),
        sa.Column(HOSTILE_KEYS[1], sa.String(20), primary_key=True),
        sa.Column(HOSTILE_KEYS[2], sa.String(20), primary_key=True),
        sa.Column("Value 100%", sa.Integer),
        schema=SCHEMA[engine],
    )


def rendered(engine):
    dialect = ALL[engine]()
    source = hostile_source(engine)
    names = dialect.capture_names(source.schema, source.name)
    event = dialect.event_table(sa.MetaData(), source.schema, names, list(source.primary_key.columns))
    create = dialect.create_trigger_statements(source, event, names, HOSTILE_KEYS)
    drop = dialect.drop_trigger_statements(source, names)
    return dialect, source, names, event, create, drop


def outside_quotes(sql, quotes):
    """``sql`` with every quoted identifier / string literal replaced by ``Q``.

    Raises AssertionError when a quote is not closed (the SQL would not parse)."""
    out, i = [], 0
    while i < len(sql):
        ch = sql[i]
        if ch not in quotes:
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while True:
            k = sql.find(ch, j)
            assert k != -1, f"unterminated {ch} quote in {sql!r}"
            if sql[k + 1:k + 2] == ch:  # doubled quote: escaped, keep scanning
                j = k + 2
                continue
            break
        out.append("Q")
        i = k + 1
    return "".join(out)


#: Words that may appear unquoted in trigger SQL; anything else outside quotes
#: would be a piece of a hostile identifier leaking into the statement.
SQL_WORDS = {
    "CREATE", "OR", "REPLACE", "TRIGGER", "FUNCTION", "AFTER", "INSERT", "UPDATE", "DELETE", "ON", "FOR",
    "EACH", "ROW", "STATEMENT", "BEGIN", "END", "INTO", "VALUES", "SELECT", "FROM", "WHERE", "IS", "NOT",
    "IF", "THEN", "ELSIF", "AND", "CAST", "AS", "BINARY", "REFERENCING", "NEW", "OLD", "TABLE", "EXECUTE",
    "EXCEPT", "RETURNS", "RETURN", "NULL", "LANGUAGE", "plpgsql", "trigger", "TG_OP", "DROP", "EXISTS",
    "pg_current_xact_id", "DECLARE", "PERFORM", "pg_notify", "text", "bigint", "n", "o", "Q", "db",
    "UNION", "ALL", "pg_try_advisory_xact_lock_shared", "GET", "DIAGNOSTICS", "ROW_COUNT", "pdr_rows",
    "LIMIT", "OFFSET", "pg_catalog", "array_agg", "row_number", "OVER", "GROUP", "BY", "p", "r", "t",
    "ALTER", "ENABLE", "ALWAYS", "TRUNCATE",
    "variable_conflict", "use_variable",
    # Firebird
    "ACTIVE", "POSITION", "DELETING", "UPDATING", "INSERTING", "TRUE", "IIF", "CURRENT_TRANSACTION", "DISTINCT",
    "BLOCK", "STATEMENT", "RDB", "TRIGGERS", "TRIGGER_NAME", "pdr", "ddl",
}


def leaked_words(stripped):
    words = set(re.findall(r"[^\W\d]\w*", stripped))
    return {w for w in words if w not in SQL_WORDS and not w.startswith("pdr_")}


# -- engine registry -------------------------------------------------------------

def test_registry_maps_engines_and_refuses_unimplemented_ones():
    assert set(KINDS) == {"postgresql", "mysql", "sqlite", "firebird"}
    assert isinstance(get_dialect(postgresql.dialect()), PostgreSQLDialect)
    from sqlalchemy_firebird.firebird import FBDialect_firebird

    assert isinstance(get_dialect(FBDialect_firebird()), FirebirdDialect)  # dialect.name "firebird.firebird"
    assert isinstance(get_dialect(mysql.dialect()), MySQLDialect)
    assert isinstance(get_dialect(sqlite.dialect()), SQLiteDialect)
    mariadb = mysql.dialect()
    mariadb.name = "mariadb"  # what SQLAlchemy reports after connecting to a MariaDB server
    assert isinstance(get_dialect(mariadb), MySQLDialect)
    # SQL Server and Oracle are not implemented: a loud error, never a fallback
    from sqlalchemy.dialects import mssql, oracle

    for sa_dialect in (mssql.dialect(), oracle.dialect()):
        with pytest.raises(NotImplementedError, match="no support"):
            get_dialect(sa_dialect)
    with pytest.raises(NotImplementedError, match="unknown database kind"):
        dialect_for_kind("mssql")


def test_live_flags_and_identifier_limits():
    assert PostgreSQLDialect.tested_live and MySQLDialect.tested_live and SQLiteDialect.tested_live
    for cls, limit, in_bytes in ((PostgreSQLDialect, 63, True), (MySQLDialect, 64, False)):
        assert (cls.max_identifier_length, cls.identifier_length_in_bytes) == (limit, in_bytes)
    assert pg().identifier_fits("é" * 31) and not pg().identifier_fits("é" * 32)  # 62 vs 64 bytes
    assert my().identifier_fits("é" * 64) and not my().identifier_fits("é" * 65)  # characters
    assert pg().identifier_fits("x" * 63) and not pg().identifier_fits("x" * 64)


@pytest.mark.parametrize("cls,name,rule", [
    (PostgreSQLDialect, "é" * 32, "at most 63 bytes (UTF-8), this one has 64, and the server would"),
    (PostgreSQLDialect, "x\x00y", "NUL"),
    (MySQLDialect, "x" * 65, "at most 64 characters, this one has 65"),
    (MySQLDialect, "note ", "cannot end with a space"),
    (MySQLDialect, "a😀b", "outside the Basic Multilingual Plane"),
    (SQLiteDialect, "x\x00y", "NUL"),
    (FirebirdDialect, "x" * 32, "Firebird 3 names are at most 31 bytes (UTF-8), this one has 32 (Firebird 4+ "
                                "allows 63 characters, but the server django-pdr is tested with is 3.0)"),
    (FirebirdDialect, "é" * 16, "this one has 32"),
    (FirebirdDialect, "note ", "cannot end with a space"),
    (FirebirdDialect, "a😀b", "outside the Basic Multilingual Plane"),
])
def test_identifier_problem_names_the_rule(cls, name, rule):
    assert rule in cls.identifier_problem(name)


@pytest.mark.parametrize("cls,name", [(PostgreSQLDialect, "é" * 31), (PostgreSQLDialect, "😀 a "),
                                      (MySQLDialect, "é" * 64), (MySQLDialect, " lead"),
                                      (SQLiteDialect, "x" * 500), (SQLiteDialect, "😀 "),
                                      (FirebirdDialect, "x" * 31), (FirebirdDialect, "Order \"Lines\" it's")])
def test_identifier_problem_accepts_what_the_engine_holds(cls, name):
    assert cls.identifier_problem(name) is None


def test_every_dialect_says_whether_replacing_triggers_needs_a_drop():
    # capture.install() asks this of every dialect when triggers already exist
    # (re-install, upgrade, force): it must answer, never raise AttributeError.
    # PostgreSQL and MariaDB replace atomically (CREATE OR REPLACE TRIGGER).
    assert pg().replace_needs_drop() is False
    assert my(mariadb=True).replace_needs_drop() is False
    assert my(mariadb=False).replace_needs_drop() is True  # MySQL 8: DROP then CREATE
    assert lite().replace_needs_drop() is True


# -- capture names -----------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_capture_names_are_prefixed_safe_and_deterministic(engine):
    names = ALL[engine]().capture_names("public", "Order Lines")
    again = ALL[engine]().capture_names("public", "Order Lines")
    assert names == again
    every = [n for n in (names.event_table, *names.triggers, names.function) if n]
    # PostgreSQL: TRUNCATE too; Firebird: one trigger for the three operations, no function
    assert len(set(every)) == len(every) == {"postgresql": 6, "firebird": 2}.get(engine, 5)
    for name in every:
        assert name.startswith("pdr_")
        assert re.fullmatch(r"[a-z0-9_]+", name), name  # never needs quoting, any engine, any case rule
    assert names.event_table.endswith("_ev")
    if engine == "firebird":
        assert names.insert_trigger == names.update_trigger == names.delete_trigger
        assert names.insert_trigger.endswith("_trg") and names.function == ""
        return
    assert names.insert_trigger.endswith("_ins") and names.update_trigger.endswith("_upd")
    assert names.delete_trigger.endswith("_del")
    assert "order_lines" in names.event_table  # readable


@pytest.mark.parametrize("engine", ENGINES)
def test_capture_names_distinct_for_tables_and_schemas_that_look_alike(engine):
    dialect = ALL[engine]()
    keys = [(schema, table)
            for schema in (None, "public", "Public", "other")
            for table in ("Order Lines", "order_lines", "order-lines", "ORDER_LINES", "order lines",
                          "order_lines ", "orderlines", "🍮", "🍰", "é" * 63, "è" * 63)]
    seen = {}
    for schema, table in keys:
        names = dialect.capture_names(schema, table)
        for name in filter(None, (names.event_table, *names.triggers, names.function)):
            assert name not in seen, (name, (schema, table), seen.get(name))
            seen[name] = (schema, table)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("table", ["é" * 63, "日本" * 40, "x" * 300, "a" * 63, "🍮" * 63,
                                   "Order \"Lines\" `x`; 50%"])
def test_capture_names_fit_the_identifier_limit(engine, table):
    dialect = ALL[engine]()
    names = dialect.capture_names("a_schema_with_a_rather_long_name_" * 3, table)
    for name in (names.event_table, *names.triggers, names.function):
        assert dialect.identifier_fits(name), name
        assert len(name.encode("utf-8")) <= 63  # inside every engine's limit, PostgreSQL's bytes included


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("table", ["🍮🍰", "!!!", "—", "???", "_", " "])
def test_capture_names_never_empty_for_symbol_only_tables(engine, table):
    names = ALL[engine]().capture_names(None, table)
    for name in filter(None, (names.event_table, *names.triggers, names.function)):
        assert re.fullmatch(r"pdr_[a-z0-9]+(_[a-z0-9]+)*", name), name
        middle = name[len("pdr_"):].rsplit("_", 2)[0]
        assert middle, name


# -- quoting ---------------------------------------------------------------------

def test_identifier_preparers_quote_as_documented():
    for dialect in (pg(), lite()):
        assert dialect.quote('a"b') == '"a""b"'
        assert dialect.quote("select") == '"select"'
        assert dialect.quote("Order") == '"Order"'  # mixed case must keep its case
        assert dialect.quote("Straße") == '"Straße"'
        assert dialect.quote("plain_name") == "plain_name"
    assert my().quote("a`b") == "`a``b`"
    assert my().quote("select") == "`select`"
    assert my().quote('a"b') == '`a"b`'
    # pyformat drivers (psycopg2, PyMySQL) expect "%" doubled in any statement text;
    # sqlite3 (qmark) takes it as is
    assert pg().quote("50%") == '"50%%"'
    assert my().quote("50%") == "`50%%`"
    assert lite().quote("50%") == '"50%"'


@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_identifiers_are_quoted_in_every_trigger_statement(engine):
    dialect, source, names, event, create, drop = rendered(engine)
    table = hand_quoted(dialect, HOSTILE_TABLE)
    keys = [hand_quoted(dialect, k) for k in HOSTILE_KEYS]
    assert keys[0] in ('"select"', "`select`") and keys[1] in ('"order"', "`order`")
    if engine == "postgresql":
        function, triggers = create[0], create[1:]
        for key in keys:
            assert f"n.{key}" in function and f"o.{key}" in function
        for statement in triggers:
            assert (f"ON {hand_quoted(dialect, SCHEMA[engine])}.{table} " in statement
                    or statement.startswith(f"ALTER TABLE {hand_quoted(dialect, SCHEMA[engine])}.{table} "))
        for statement in drop[:3]:
            assert statement.endswith(f" ON {hand_quoted(dialect, SCHEMA[engine])}.{table}")
    else:
        schema = f"{hand_quoted(dialect, SCHEMA[engine])}." if SCHEMA[engine] else ""
        schema = schema.replace("`db`", "db")  # a plain name needs no quotes
        for statement in create:
            # Firebird: CREATE TRIGGER name FOR table
            assert f" {'FOR' if engine == 'firebird' else 'ON'} {schema}{table} " in statement
            for key in keys:
                assert f".{key}" in statement  # NEW.key / OLD.key
    # nothing of a hostile name is left outside quotes
    quotes = {"`", "'"} if isinstance(dialect, MySQLDialect) else {'"', "'"}
    for statement in create[1:] if engine == "postgresql" else create:
        stripped = outside_quotes(statement, quotes)
        assert leaked_words(stripped) == set(), statement
        assert all(ord(c) < 128 for c in stripped)
        assert "%" not in stripped and ":colon" not in stripped
    for statement in drop:
        stripped = outside_quotes(statement, quotes)
        # Firebird: an EXECUTE BLOCK (DROP TRIGGER only if it exists) holds its own ";"
        assert leaked_words(stripped) == set() and (";" not in stripped or engine == "firebird"), statement


def test_postgresql_function_body_is_one_dollar_quoted_plpgsql_block():
    dialect, source, names, event, create, drop = rendered("postgresql")
    function = create[0]
    schema = hand_quoted(dialect, SCHEMA["postgresql"])
    match = re.fullmatch(
        rf"CREATE OR REPLACE FUNCTION {re.escape(schema)}\.{names.function}\(\) RETURNS trigger "
        r"LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS (\$\w*\$)(.*)\1",
        function, re.S)
    assert match, function
    tag, body = match.groups()
    assert tag not in body
    stripped = outside_quotes(body, {'"', "'"})
    assert leaked_words(stripped) == set(), stripped
    assert all(ord(c) < 128 for c in stripped)


def test_postgresql_function_body_survives_a_column_named_with_the_dollar_tag():
    # PostgreSQL identifiers may contain "$": the body's dollar-quote tag must not
    # occur inside the body, or the function text ends early (and the rest of the
    # body is parsed as SQL).  Correct behaviour: choose a tag absent from the body.
    dialect = pg()
    source = sa.Table("t", sa.MetaData(), sa.Column("k$pdr$x", sa.Integer, primary_key=True),
                      sa.Column("a$$b", sa.Integer, primary_key=True), schema="public")
    names = dialect.capture_names("public", "t")
    event = dialect.event_table(sa.MetaData(), "public", names, list(source.primary_key.columns))
    function = dialect.create_trigger_statements(source, event, names, ["k$pdr$x", "a$$b"])[0]
    match = re.fullmatch(r"CREATE OR REPLACE FUNCTION .*? LANGUAGE plpgsql .*? AS (\$\w*\$)(.*)\1",
                         function, re.S)
    assert match, function
    tag, body = match.groups()
    assert tag not in body, f"dollar-quote tag {tag} occurs inside the function body"


def test_postgresql_capture_is_statement_level_with_transition_tables():
    dialect, source, names, event, create, drop = rendered("postgresql")
    schema = hand_quoted(dialect, SCHEMA["postgresql"])
    table = f"{schema}.{hand_quoted(dialect, HOSTILE_TABLE)}"
    fn = f"{schema}.{names.function}()"
    # each trigger fires in replica sessions too (ENABLE ALWAYS)
    always = [f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {t}" for t in names.triggers]
    assert create[1:] == [
        f"CREATE OR REPLACE TRIGGER {names.insert_trigger} AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS pdr_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}", always[0],
        f"CREATE OR REPLACE TRIGGER {names.update_trigger} AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS pdr_old NEW TABLE AS pdr_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}", always[1],
        f"CREATE OR REPLACE TRIGGER {names.delete_trigger} AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS pdr_old FOR EACH STATEMENT EXECUTE FUNCTION {fn}", always[2],
        f"CREATE OR REPLACE TRIGGER {names.truncate_trigger} AFTER TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}", always[3],
    ]
    assert f"INSERT INTO {schema}.{names.event_table} (pdr_op, pdr_txid) VALUES ('T', pdr_txid)" in create[0]
    assert drop == [
        f"DROP TRIGGER IF EXISTS {names.insert_trigger} ON {table}",
        f"DROP TRIGGER IF EXISTS {names.update_trigger} ON {table}",
        f"DROP TRIGGER IF EXISTS {names.delete_trigger} ON {table}",
        f"DROP TRIGGER IF EXISTS {names.truncate_trigger} ON {table}",
        f"DROP FUNCTION IF EXISTS {fn}",
    ]


def test_postgresql_update_records_old_key_as_delete_only_when_the_key_changed():
    dialect, source, names, event, create, drop = rendered("postgresql")
    body = create[0]
    keys = ", ".join(f"p.{hand_quoted(dialect, k)}" for k in HOSTILE_KEYS)
    target = (f"INSERT INTO {hand_quoted(dialect, SCHEMA['postgresql'])}.{names.event_table} "
              f"(pdr_op, pdr_txid, pdr_k0, pdr_k1, pdr_k2) ")
    txid = "pdr_txid"  # pg_current_xact_id(), read once per statement into a variable
    assert "pdr_txid bigint := pg_current_xact_id()::text::bigint;" in body

    def values(alias):
        return ", ".join(f"{alias}.{hand_quoted(dialect, k)}" for k in HOSTILE_KEYS)

    insert_branch = body.split("IF TG_OP = 'INSERT' THEN", 1)[1].split("ELSIF", 1)[0]
    update_branch = body.split("ELSIF TG_OP = 'UPDATE' THEN", 1)[1].split("ELSIF", 1)[0]
    delete_branch = body.split("ELSIF TG_OP = 'DELETE' THEN", 1)[1].split("END IF", 1)[0]
    def first(branch):  # the statement writing one event row per key
        return branch.strip().splitlines()[0]

    limit = " LIMIT 1000"  # the first 1,000 keys; the rest go into key arrays
    assert first(insert_branch) == f"{target}SELECT 'I', {txid}, {values('n')} FROM pdr_new AS n{limit};"
    assert first(delete_branch) == f"{target}SELECT 'D', {txid}, {values('o')} FROM pdr_old AS o{limit};"
    # one statement: old keys absent from the new rows (the key changed): 'D'; every new row: 'U'
    assert first(update_branch) == (f"{target}SELECT 'D', {txid}, {values('o')} FROM "
                                    f"(SELECT {keys} FROM pdr_old AS p EXCEPT SELECT {keys} FROM pdr_new AS p) AS o "
                                    f"UNION ALL (SELECT 'U', {txid}, {values('n')} FROM pdr_new AS n{limit});")
    for branch, op, transition in ((insert_branch, "I", "pdr_new"), (update_branch, "U", "pdr_new"),
                                   (delete_branch, "D", "pdr_old")):
        lines = [line.strip() for line in branch.strip().splitlines()]
        assert lines[1:3] == ["GET DIAGNOSTICS pdr_rows = ROW_COUNT;", "IF pdr_rows >= 1000 THEN"]
        renamed = ", ".join(f"t.{hand_quoted(dialect, k)} AS pdr_k{i}" for i, k in enumerate(HOSTILE_KEYS))
        # the rest in arrays of 1,000 keys, grouped by row number; only our own names
        # outside the innermost select
        assert lines[3] == (
            f"{target.replace('pdr_k', 'pdr_a')}SELECT '{op}', {txid}, pg_catalog.array_agg(o.pdr_k0), "
            "pg_catalog.array_agg(o.pdr_k1), pg_catalog.array_agg(o.pdr_k2) FROM (SELECT r.pdr_k0, r.pdr_k1, "
            "r.pdr_k2, (pg_catalog.row_number() OVER () - 1) / 1000 AS pdr_g FROM "
            f"(SELECT {renamed} FROM {transition} AS t OFFSET 1000) AS r) AS o GROUP BY o.pdr_g;")
    # a source column named like a variable (pdr_txid, pdr_rows) reads as the variable:
    # every column reference is qualified
    assert body.split("DECLARE", 1)[0].strip().endswith("#variable_conflict use_variable")
    assert "RETURN NULL;" in body


@pytest.mark.parametrize("engine", ["mysql", "mariadb"])
def test_mysql_triggers_are_row_level_one_statement_each(engine):
    dialect, source, names, event, create, drop = rendered(engine)
    create_word = "CREATE OR REPLACE TRIGGER" if engine == "mariadb" else "CREATE TRIGGER"
    table = f"db.{hand_quoted(dialect, HOSTILE_TABLE)}"
    assert len(create) == 3
    for statement, trigger, when in zip(create, names.triggers, ("INSERT", "UPDATE", "DELETE")):
        assert statement.startswith(f"{create_word} db.{trigger} AFTER {when} ON {table} FOR EACH ROW ")
        stripped = outside_quotes(statement, {"`", "'"})
        assert stripped.count("CREATE") == 1 and "DELIMITER" not in stripped
        if when == "UPDATE":
            # a compound body is still one statement: every ";" sits inside BEGIN ... END
            assert re.fullmatch(r"[^;]* FOR EACH ROW BEGIN [^;]+; END IF; [^;]+; END", stripped), stripped
        else:
            assert ";" not in stripped
    assert drop == [f"DROP TRIGGER IF EXISTS db.{t}" for t in names.triggers]


@pytest.mark.parametrize("engine", ["mysql", "mariadb"])
def test_mysql_update_records_old_key_as_delete_only_when_the_key_changed(engine):
    dialect, source, names, event, create, drop = rendered(engine)
    q = [hand_quoted(dialect, k) for k in HOSTILE_KEYS]
    insert = f"INSERT INTO db.{names.event_table} (pdr_op, pdr_k0, pdr_k1, pdr_k2) VALUES "
    same_key = " AND ".join(f"CAST(OLD.{k} AS BINARY) <=> CAST(NEW.{k} AS BINARY)" for k in q)
    body = create[1].split(" FOR EACH ROW ", 1)[1]
    assert body == (
        f"BEGIN IF NOT ({same_key}) THEN {insert}('D', {', '.join('OLD.' + k for k in q)}); END IF; "
        f"{insert}('U', {', '.join('NEW.' + k for k in q)}); END"
    )
    assert create[0].endswith(f"{insert}('I', {', '.join('NEW.' + k for k in q)})")
    assert create[2].endswith(f"{insert}('D', {', '.join('OLD.' + k for k in q)})")


def test_mariadb_replaces_atomically_and_mysql_drops_first():
    for dialect, word in ((my(mariadb=True), "CREATE OR REPLACE TRIGGER "),
                          (my(mariadb=False), "CREATE TRIGGER ")):
        source = hostile_source("mysql")
        names = dialect.capture_names("db", source.name)
        event = dialect.event_table(sa.MetaData(), "db", names, list(source.primary_key.columns))
        statements = dialect.create_trigger_statements(source, event, names, HOSTILE_KEYS)
        assert [s[:len(word)] for s in statements] == [word] * 3
        # MySQL 8 has no CREATE OR REPLACE TRIGGER: install drops the old triggers first
        assert dialect.replace_needs_drop() is (not dialect.is_mariadb)


def test_sqlite_triggers_render_one_statement_each():
    dialect, source, names, event, create, drop = rendered("sqlite")
    table = hand_quoted(dialect, HOSTILE_TABLE)
    q = [hand_quoted(dialect, k) for k in HOSTILE_KEYS]
    insert = f"INSERT INTO {names.event_table} (pdr_op, pdr_k0, pdr_k1, pdr_k2) SELECT "
    changed = " OR ".join(f"OLD.{k} IS NOT NEW.{k}" for k in q)
    assert create == [
        f"CREATE TRIGGER {names.insert_trigger} AFTER INSERT ON {table} BEGIN "
        f"{insert}'I', {', '.join('NEW.' + k for k in q)}; END",
        f"CREATE TRIGGER {names.update_trigger} AFTER UPDATE ON {table} BEGIN "
        f"{insert}'D', {', '.join('OLD.' + k for k in q)} WHERE {changed}; "
        f"{insert}'U', {', '.join('NEW.' + k for k in q)}; END",
        f"CREATE TRIGGER {names.delete_trigger} AFTER DELETE ON {table} BEGIN "
        f"{insert}'D', {', '.join('OLD.' + k for k in q)}; END",
    ]
    for statement in create:
        assert sqlite3.complete_statement(statement + ";")
    assert drop == [f"DROP TRIGGER IF EXISTS {t}" for t in names.triggers]


def test_sqlite_trigger_in_an_attached_schema_is_named_by_schema_not_by_table():
    dialect = lite()
    source = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), schema="aux db")
    names = dialect.capture_names("aux db", "t")
    event = dialect.event_table(sa.MetaData(), "aux db", names, [source.c.id])
    create = dialect.create_trigger_statements(source, event, names, ["id"])
    # SQLite: CREATE TRIGGER schema.name ... ON table (a qualified table is a syntax error)
    assert create[0].startswith(f'CREATE TRIGGER "aux db".{names.insert_trigger} AFTER INSERT ON t BEGIN ')
    assert f"INSERT INTO {names.event_table} " in create[0]  # unqualified inside the body
    assert dialect.drop_trigger_statements(source, names)[0] == \
        f'DROP TRIGGER IF EXISTS "aux db".{names.insert_trigger}'


# -- executing the SQLite capture SQL (in memory) ------------------------------------

def sqlite_engine():
    return sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)


@pytest.mark.parametrize("schema", [None, "aux db"])
def test_sqlite_capture_records_the_right_events_for_hostile_names(schema):
    dialect = lite()
    engine = sqlite_engine()
    metadata = sa.MetaData()
    source = sa.Table(
        HOSTILE_TABLE, metadata,
        sa.Column(HOSTILE_KEYS[0], sa.Integer, primary_key=True),
        sa.Column(HOSTILE_KEYS[1], sa.String(20), primary_key=True),
        sa.Column(HOSTILE_KEYS[2], sa.String(20), primary_key=True),
        sa.Column("Value 100%", sa.Integer),
        schema=schema,
    )
    names = dialect.capture_names(schema, source.name)
    event = dialect.event_table(metadata, schema, names, list(source.primary_key.columns))
    k0, k1, k2 = (source.c[k] for k in HOSTILE_KEYS)
    value = source.c["Value 100%"]
    with engine.connect() as conn:
        if schema:
            conn.exec_driver_sql(f"ATTACH DATABASE ':memory:' AS \"{schema}\"")
        metadata.create_all(conn)
        for statement in dialect.create_trigger_statements(source, event, names, HOSTILE_KEYS):
            conn.exec_driver_sql(statement)  # sqlite3 refuses more than one statement per call
        existing = {r[0] for r in conn.execute(dialect.existing_triggers_query(schema, source.name, names))}
        assert existing == set(names.triggers)

        conn.execute(source.insert(), [{k0.name: 1, k1.name: "a", k2.name: "Straße", value.name: 0},
                                       {k0.name: 2, k1.name: "b", k2.name: "日本", value.name: 0}])
        conn.execute(source.update().where(k0 == 1).values({value.name: 5}))      # key unchanged
        conn.execute(source.update().where(k0 == 2).values({k2.name: "日本語"}))  # key changed
        conn.execute(source.update().where(k0 == 1).values({k2.name: "Straße"}))  # same value: unchanged
        conn.execute(source.delete().where(k0 == 1))
        query = sa.select(event.c.pdr_op, event.c.pdr_k0, event.c.pdr_k1, event.c.pdr_k2)
        got = [tuple(r) for r in conn.execute(query.order_by(event.c.pdr_id))]
        assert got == [
            ("I", 1, "a", "Straße"), ("I", 2, "b", "日本"),
            ("U", 1, "a", "Straße"),
            ("D", 2, "b", "日本"), ("U", 2, "b", "日本語"),
            ("U", 1, "a", "Straße"),
            ("D", 1, "a", "Straße"),
        ]

        for statement in dialect.drop_trigger_statements(source, names):
            conn.exec_driver_sql(statement)
        assert list(conn.execute(dialect.existing_triggers_query(schema, source.name, names))) == []
        conn.execute(source.insert(), [{k0.name: 3, k1.name: "c", k2.name: "x", value.name: 0}])
        assert conn.execute(sa.select(sa.func.count()).select_from(event)).scalar() == 7


# -- event table ---------------------------------------------------------------------

def test_event_table_ddl_per_engine():
    key = sa.Table("src", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                   sa.Column("code", sa.String(12), primary_key=True))
    for dialect, expected in (
        (pg(), ["pdr_id BIGSERIAL NOT NULL", "pdr_op VARCHAR(1) NOT NULL", "pdr_txid BIGINT",
                "pdr_k0 BIGINT", "pdr_k1 VARCHAR(12)", "pdr_a0 BIGINT[]", "pdr_a1 VARCHAR(12)[]",
                "PRIMARY KEY (pdr_id)"]),
        (my(), ["pdr_id BIGINT NOT NULL AUTO_INCREMENT", "pdr_k0 BIGINT", "pdr_k1 VARCHAR(12)",
                "ENGINE=InnoDB", "CHARSET=utf8mb4"]),
        (lite(), ["pdr_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT", "pdr_k0 BIGINT",
                  "pdr_k1 VARCHAR(12)"]),
    ):
        names = dialect.capture_names(None, "src")
        event = dialect.event_table(sa.MetaData(), None, names, [key.c.id, key.c.code])
        ddl = str(sa.schema.CreateTable(event).compile(dialect=dialect.sa))
        assert event.name == names.event_table
        for fragment in expected:
            assert fragment in ddl, (fragment, ddl)
        assert ("pdr_a0" in ddl) == (dialect.bulk_event_keys > 1) == isinstance(dialect, PostgreSQLDialect)
    assert [event_key_name(i) for i in range(3)] == ["pdr_k0", "pdr_k1", "pdr_k2"]


def test_postgresql_event_table_upgrade_adds_the_key_arrays_after_locking_the_source():
    dialect = pg()
    key = sa.Table("src", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                   sa.Column("Code %", sa.String(12), primary_key=True), schema="s")
    names = dialect.capture_names("s", "src")
    event = dialect.event_table(sa.MetaData(), "s", names, [key.c.id, key.c["Code %"]])
    table = f"s.{names.event_table}"
    # writers lock the source table, then the event table: the upgrade too (no deadlock)
    assert dialect.event_table_upgrades(key, event) == [
        "LOCK TABLE s.src IN SHARE ROW EXCLUSIVE MODE",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS pdr_a0 BIGINT[]",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS pdr_a1 VARCHAR(12)[]",
    ]
    for other in (my(), lite()):
        assert other.event_table_upgrades(key, other.event_table(sa.MetaData(), None, names, [key.c.id])) == []
    # keys that are arrays (PostgreSQL arrays of arrays are flat) or domains (a NOT NULL
    # domain would refuse the empty key column of an array row): one key per row
    for type_ in (postgresql.ARRAY(sa.Integer), postgresql.DOMAIN("d", sa.Integer, not_null=True)):
        flat = sa.Table("f", sa.MetaData(), sa.Column("k", type_, primary_key=True))
        plain = dialect.event_table(sa.MetaData(), "s", names, [flat.c.k])
        assert not dialect.has_bulk_events(plain) and dialect.event_table_upgrades(flat, plain) == []
        assert dialect.event_relation(plain, 1) is plain
        function = dialect.create_trigger_statements(flat, plain, names, ["k"])[0]
        assert "LIMIT" not in function and "array_agg" not in function


# -- upsert ---------------------------------------------------------------------------

def upsert_table():
    return sa.Table("Order Lines", sa.MetaData(), sa.Column("select", sa.Integer, primary_key=True),
                    sa.Column("Order", sa.String(5), primary_key=True), sa.Column("v 50%", sa.Text),
                    sa.Column("w", sa.Text))


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_upsert_on_conflict(engine):
    dialect = ALL[engine]()
    table = upsert_table()
    v = hand_quoted(dialect, "v 50%")
    sql = str(dialect.upsert(table, ["select", "Order"], ["v 50%", "w"]).compile(dialect=dialect.sa))
    assert sql.endswith(f'ON CONFLICT ("select", "Order") DO UPDATE SET {v} = excluded.{v}, w = excluded.w')
    assert sql.startswith(f'INSERT INTO "Order Lines" ("select", "Order", {v}, w) VALUES ')
    nothing = str(dialect.upsert(table, ["select", "Order"], []).compile(dialect=dialect.sa))
    assert nothing.endswith('ON CONFLICT ("select", "Order") DO NOTHING')


@pytest.mark.parametrize("engine", ["mysql", "mariadb"])
def test_upsert_on_duplicate_key(engine):
    dialect = ALL[engine]()
    table = upsert_table()
    sql = str(dialect.upsert(table, ["select", "Order"], ["v 50%", "w"]).compile(dialect=dialect.sa))
    pattern = r"ON DUPLICATE KEY UPDATE `v 50%%` = values\(`v 50%%`\), w = values\(w\)$"
    assert re.search(pattern, sql, re.I), sql
    nothing = str(dialect.upsert(table, ["select", "Order"], []).compile(dialect=dialect.sa))
    # no value columns: a no-op assignment of a key column to itself (the row is kept)
    match = re.search(r"ON DUPLICATE KEY UPDATE (`\w+`) = values\((`\w+`)\)$", nothing, re.I)
    assert match and match.group(1) == match.group(2) and match.group(1) in ("`select`", "`Order`"), nothing


def test_firebird_upsert_is_a_merge_per_row():
    dialect = fb()
    table = upsert_table()
    rows = [{"select": 1, "Order": "a", "v 50%": "x", "w": None}]
    [(statement, params)] = dialect.upsert_batches(table, ["select", "Order"], ["v 50%", "w"], rows)
    assert params == rows
    sql = str(statement.compile(dialect=dialect.sa))
    assert sql.startswith('MERGE INTO "Order Lines" AS pdr_t USING (SELECT CAST(')
    assert ' FROM RDB$DATABASE) AS pdr_s ON pdr_t."select" = pdr_s."select" AND pdr_t."Order" = pdr_s."Order" ' \
        'WHEN MATCHED THEN UPDATE SET "v 50%" = pdr_s."v 50%", w = pdr_s.w WHEN NOT MATCHED THEN INSERT (' in sql
    assert sql.count("CAST(:") == 4  # one parameter a column, cast to its column's type
    [(nothing, _)] = dialect.upsert_batches(table, ["select", "Order"], [], rows)
    assert "WHEN MATCHED" not in str(nothing.compile(dialect=dialect.sa))  # an existing row is kept
    # several rows: one MERGE whose source is a UNION ALL of one-row SELECTs, one round trip
    many = [{"select": i, "Order": "a", "v 50%": "x" * i, "w": None} for i in range(600)]
    batches = dialect.upsert_batches(table, ["select", "Order"], ["v 50%", "w"], many)
    assert [len(params) for _, params in batches] == [1000, 1000, 400]  # 250 rows a MERGE, 4 parameters a row
    statement, params = batches[1]
    assert params["pdr_0_0"] == 250 and params["pdr_249_2"] == "x" * 499
    sql = str(statement.compile(dialect=dialect.sa))
    assert sql.count(" FROM RDB$DATABASE UNION ALL SELECT ") == 249 and len(sql) < 64_000
    # a last row alone is one row's statement, its parameters named by column
    *_, (last, params) = dialect.upsert_batches(table, ["select", "Order"], ["v 50%", "w"], many[:251])
    assert params == [many[250]] and "UNION ALL" not in str(last.compile(dialect=dialect.sa))
    # wide text columns: the parameters' bytes (4 a UTF8 character) bound the rows
    wide = sa.Table("w", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("t", sa.String(8000)))
    rows = [{"id": i, "t": ""} for i in range(10)]
    [(statement, params)] = dialect.upsert_batches(wide, ["id"], ["t"], rows)
    assert params == rows and "UNION ALL" not in str(statement.compile(dialect=dialect.sa))  # one row a MERGE


def test_firebird_one_trigger_per_table_key_changes_as_delete_and_upsert():
    dialect = fb()
    source = sa.Table("T", sa.MetaData(), sa.Column("a", sa.Integer, primary_key=True),
                      sa.Column("b", sa.Date, primary_key=True), sa.Column("v", sa.Text))
    names = dialect.capture_names(None, "T")
    event = dialect.event_table(sa.MetaData(), None, names, list(source.primary_key.columns))
    [trigger] = dialect.create_trigger_statements(source, event, names, ["a", "b"])
    assert trigger.startswith(f'CREATE OR ALTER TRIGGER {names.insert_trigger} FOR "T" ACTIVE AFTER INSERT OR '
                              f'UPDATE OR DELETE POSITION 32000 AS BEGIN ')
    assert "IF (DELETING OR (UPDATING AND (OLD.a IS DISTINCT FROM NEW.a OR OLD.b IS DISTINCT FROM NEW.b)))" \
        in trigger
    assert "VALUES ('D', CURRENT_TRANSACTION, OLD.a, OLD.b);" in trigger
    assert "VALUES (IIF(INSERTING, 'I', 'U'), CURRENT_TRANSACTION, NEW.a, NEW.b);" in trigger
    # a text key: Firebird compares text ignoring trailing spaces (and by collation): both events always
    text = sa.Table("S", sa.MetaData(), sa.Column("k", sa.String(10), primary_key=True))
    [trigger] = dialect.create_trigger_statements(text, event, names, ["k"])
    assert "IF (DELETING OR (UPDATING AND (TRUE)))" in trigger
    create = dialect.create_table_statement(event, if_not_exists=True)
    assert create.startswith("/* pdr:ddl */ EXECUTE BLOCK AS BEGIN IF (NOT EXISTS(SELECT 1 FROM RDB$RELATIONS "
                             f"WHERE RDB$RELATION_NAME = '{names.event_table.upper()}')) THEN EXECUTE STATEMENT ")
    assert "GENERATED BY DEFAULT AS IDENTITY" in create and "IF NOT EXISTS" not in create
    assert dialect.drop_trigger_statements(source, names) == [
        f"/* pdr:ddl */ EXECUTE BLOCK AS BEGIN IF (EXISTS(SELECT 1 FROM RDB$TRIGGERS WHERE RDB$TRIGGER_NAME = "
        f"'{names.insert_trigger.upper()}')) THEN EXECUTE STATEMENT 'DROP TRIGGER {names.insert_trigger}'; END"]


def test_firebird_types_hold_values_exactly_or_refuse():
    from sqlalchemy_firebird import types as fbt

    from django_pdr.errors import ConfigurationError, ValueRefused

    dialect = fb()

    def dest(generic, is_key=False):
        return dialect.destination_type(generic, is_key=is_key).compile(dialect=dialect.sa)

    assert dest(sa.Numeric(18, 4)) == "NUMERIC(18, 4)"
    for too_wide in (sa.Numeric(19, 2), sa.Numeric()):
        with pytest.raises(ConfigurationError, match="at most 18 digits"):
            dest(too_wide)
    assert dest(sa.Float(53)) == dest(sa.Double()) == "DOUBLE PRECISION"
    assert dest(sa.Text()) == "BLOB SUB_TYPE TEXT" and dest(sa.LargeBinary()) == "BLOB SUB_TYPE BINARY"
    assert dest(sa.Text(), is_key=True) == "VARCHAR(255)"
    assert dest(sa.String(9000)) == "BLOB SUB_TYPE TEXT" and dest(sa.String(40)) == "VARCHAR(40)"
    assert dest(sa.DateTime(timezone=True)) == "TIMESTAMP" and dest(sa.Uuid()) == "CHAR(36)"
    assert dest(sa.JSON()) == "BLOB SUB_TYPE TEXT" and dest(sa.Boolean()) == "BOOLEAN"
    blob = dialect.destination_type(sa.LargeBinary(), is_key=False)
    assert blob.bind_processor(dialect.sa)(None) is None  # sqlalchemy-firebird's own fails on NULL
    assert isinstance(dialect.generic_type(fbt.FBDOUBLE_PRECISION()), sa.Double)
    assert isinstance(dialect.generic_type(fbt.FBTEXT()), sa.Text)
    assert isinstance(dialect.generic_type(fbt.FBBIGINT()), sa.BigInteger)  # not the INTEGER it reads as
    assert isinstance(dialect.generic_type(fbt.FBSMALLINT()), sa.SmallInteger)
    with pytest.raises(ValueRefused, match="1/10000 s"):
        dialect.guard_rows(None, None, [{"t": dt.datetime(2020, 1, 1, 0, 0, 0, 123456)}])
    with pytest.raises(ValueRefused, match="before 1858-11-17"):
        dialect.guard_rows(None, None, [{"t": dt.datetime(1800, 1, 1)}])
    dialect.guard_rows(None, None, [{"t": dt.datetime(2020, 1, 1, 0, 0, 0, 123400), "d": dt.date(1, 1, 1)}])


def test_firebird_errors_are_classified_by_gdscode():
    from firebird.driver import DatabaseError, IntegrityError

    from django_pdr.errors import DATA, TRANSIENT

    dialect = fb()

    def error(cls, *codes):
        exc = cls("message")
        exc.gds_codes = codes
        return exc

    assert dialect.classify_error(error(IntegrityError, 335544665, 335544349)) == DATA  # duplicate key
    assert dialect.classify_error(error(DatabaseError, 335544321, 335544914)) == DATA  # string truncation
    assert dialect.classify_error(error(DatabaseError, 335544336)) == TRANSIENT  # deadlock / update conflict
    assert dialect.classify_error(error(DatabaseError, 335544580)) == TRANSIENT  # table unknown
    assert dialect.classify_error(KeyError("x")) is None


def test_sqlite_upsert_updates_and_do_nothing_keeps_rows():
    dialect = lite()
    table = upsert_table()
    engine = sqlite_engine()
    with engine.begin() as conn:
        table.create(conn)
        rows = [{"select": 1, "Order": "a", "v 50%": "one", "w": "x"},
                {"select": 2, "Order": "b", "v 50%": "two", "w": "y"}]
        conn.execute(dialect.upsert(table, ["select", "Order"], ["v 50%", "w"]), rows)
        conn.execute(dialect.upsert(table, ["select", "Order"], ["v 50%", "w"]),
                     [{"select": 1, "Order": "a", "v 50%": "ONE", "w": "X"}])
        conn.execute(dialect.upsert(table, ["select", "Order"], []),
                     [{"select": 2, "Order": "b", "v 50%": "ignored", "w": "ignored"},
                      {"select": 3, "Order": "c", "v 50%": "three", "w": "z"}])
        got = [tuple(r) for r in conn.execute(sa.select(table).order_by(table.c["select"]))]
    assert got == [(1, "a", "ONE", "X"), (2, "b", "two", "y"), (3, "c", "three", "z")]


# -- key_filter / key_after ------------------------------------------------------------

def key_table():
    return sa.Table("t", sa.MetaData(), sa.Column("a", sa.Integer, primary_key=True),
                    sa.Column("Order", sa.String(5), primary_key=True), sa.Column("v", sa.Integer))


def literal(expr, dialect):
    return str(expr.compile(dialect=dialect.sa, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("engine", ENGINES)
def test_key_filter_renders(engine):
    dialect = ALL[engine]()
    t = key_table()
    q = hand_quoted(dialect, "Order")
    assert literal(dialect.key_filter([t.c.a], [(1,), (2,)]), dialect) == "t.a IN (1, 2)"
    composite = literal(dialect.key_filter([t.c.a, t.c.Order], [(1, "x"), (2, "it's")]), dialect)
    values = "(1, 'x'), (2, 'it''s')"
    if engine == "sqlite":
        assert composite == f"(t.a, t.{q}) IN (VALUES {values})"
    elif engine == "firebird":  # no row values in Firebird
        assert composite == f"t.a = 1 AND t.{q} = 'x' OR t.a = 2 AND t.{q} = 'it''s'"
    else:
        assert composite == f"(t.a, t.{q}) IN ({values})"


@pytest.mark.parametrize("engine", ENGINES)
def test_key_after_renders(engine):
    dialect = ALL[engine]()
    t = key_table()
    q = hand_quoted(dialect, "Order")
    assert literal(dialect.key_after([t.c.a], (5,)), dialect) == "t.a > 5"
    assert literal(dialect.key_after([t.c.a, t.c.Order], (5, "m")), dialect) == \
        f"t.a > 5 OR t.a = 5 AND t.{q} > 'm'"
    three = sa.Table("t3", sa.MetaData(), *[sa.Column(c, sa.Integer, primary_key=True) for c in "xyz"])
    assert literal(dialect.key_after(list(three.c), (1, 2, 3)), dialect) == \
        "t3.x > 1 OR t3.x = 1 AND t3.y > 2 OR t3.x = 1 AND t3.y = 2 AND t3.z > 3"


def test_key_filter_and_key_after_select_the_right_rows_on_sqlite():
    dialect = lite()
    t = key_table()
    keys = [(a, o) for a in (1, 2, 3) for o in ("a", "b", "c")]
    engine = sqlite_engine()
    with engine.begin() as conn:
        t.create(conn)
        conn.execute(t.insert(), [{"a": a, "Order": o, "v": 0} for a, o in keys])
        columns = [t.c.a, t.c.Order]

        def select(where):
            return [tuple(r) for r in conn.execute(sa.select(*columns).where(where).order_by(*columns))]

        assert select(dialect.key_filter([t.c.a], [(2,), (9,)])) == [(2, "a"), (2, "b"), (2, "c")]
        assert select(dialect.key_filter(columns, [(1, "c"), (3, "a"), (9, "z")])) == [(1, "c"), (3, "a")]
        for after in keys:
            assert select(dialect.key_after(columns, after)) == [k for k in keys if k > after]
        assert select(dialect.key_after([t.c.a], (2,))) == [k for k in keys if k[0] > 2]


# -- types --------------------------------------------------------------------------

#: (generic type, is_key) -> compiled destination type per engine
TYPE_CASES = [
    (sa.Integer(), False, "INTEGER", "INTEGER", "INTEGER"),
    (sa.Integer(), True, "INTEGER", "INTEGER", "INTEGER"),
    (sa.SmallInteger(), False, "SMALLINT", "SMALLINT", "SMALLINT"),
    (sa.BigInteger(), False, "BIGINT", "BIGINT", "BIGINT"),
    (sa.BigInteger(), True, "BIGINT", "BIGINT", "BIGINT"),
    (sa.Numeric(12, 2), False, "NUMERIC(12, 2)", "DECIMAL(12, 2)", "NUMERIC(12, 2)"),
    (sa.Numeric(12, 2), True, "NUMERIC(12, 2)", "DECIMAL(12, 2)", "NUMERIC(12, 2)"),
    (sa.Numeric(), False, "NUMERIC", "DECIMAL(65, 30)", "NUMERIC"),
    (sa.Numeric(70, 40), False, "NUMERIC(70, 40)", "DECIMAL(65, 30)", "NUMERIC(70, 40)"),
    (sa.Float(), False, "DOUBLE PRECISION", "DOUBLE", "FLOAT"),
    (sa.Float(precision=10), False, "REAL", "FLOAT", "FLOAT"),
    (sa.Double(), False, "DOUBLE PRECISION", "DOUBLE", "DOUBLE"),
    (sa.Double(), True, "DOUBLE PRECISION", "DOUBLE", "DOUBLE"),
    (sa.Boolean(), False, "BOOLEAN", "BOOL", "BOOLEAN"),
    (sa.Boolean(), True, "BOOLEAN", "BOOL", "BOOLEAN"),
    (sa.String(50), False, "VARCHAR(50)", "VARCHAR(50)", "VARCHAR(50)"),
    (sa.String(50), True, "VARCHAR(50)", "VARCHAR(50)", "VARCHAR(50)"),
    (sa.String(2000), True, "VARCHAR(2000)", "VARCHAR(768)", "VARCHAR(2000)"),
    (sa.String(20000), False, "VARCHAR(20000)", "LONGTEXT", "VARCHAR(20000)"),
    (sa.String(), False, "TEXT", "LONGTEXT", "VARCHAR"),
    (sa.String(), True, "TEXT", "VARCHAR(255)", "VARCHAR"),
    (sa.Text(), False, "TEXT", "LONGTEXT", "TEXT"),
    (sa.Text(), True, "TEXT", "VARCHAR(255)", "TEXT"),
    (sa.Date(), False, "DATE", "DATE", "DATE"),
    (sa.Date(), True, "DATE", "DATE", "DATE"),
    (sa.Time(), False, "TIME(6) WITHOUT TIME ZONE", "TIME(6)", "TIME"),
    (sa.DateTime(), False, "TIMESTAMP(6) WITHOUT TIME ZONE", "DATETIME(6)", "DATETIME"),
    (sa.DateTime(), True, "TIMESTAMP(6) WITHOUT TIME ZONE", "DATETIME(6)", "DATETIME"),
    (sa.DateTime(timezone=True), False, "TIMESTAMP(6) WITH TIME ZONE", "DATETIME(6)", "DATETIME"),
    (sa.DateTime(timezone=True), True, "TIMESTAMP(6) WITH TIME ZONE", "DATETIME(6)", "DATETIME"),
    (sa.JSON(), False, "JSONB", "JSON", "TEXT"),  # SQLite: TEXT affinity keeps a document's digits
    (sa.LargeBinary(), False, "BYTEA", "LONGBLOB", "BLOB"),
    (sa.LargeBinary(), True, "BYTEA", "VARBINARY(255)", "BLOB"),
    (sa.Uuid(), False, "UUID", "CHAR(36)", "CHAR(36)"),
    (sa.Uuid(), True, "UUID", "CHAR(36)", "CHAR(36)"),
    (sa.Enum("a", "b"), False, "TEXT", "VARCHAR(255)", "TEXT"),
    (sa.Interval(), False, "INTERVAL", "LONGTEXT", "TEXT"),
]


@pytest.mark.parametrize("generic,is_key,pg_type,mysql_type,sqlite_type", TYPE_CASES,
                         ids=[f"{type(c[0]).__name__}-{'key' if c[1] else 'value'}-{i}"
                              for i, c in enumerate(TYPE_CASES)])
def test_destination_type(generic, is_key, pg_type, mysql_type, sqlite_type):
    for dialect, want in ((pg(), pg_type), (my(), mysql_type), (my(mariadb=True), mysql_type),
                          (lite(), sqlite_type)):
        got = dialect.destination_type(generic, is_key=is_key).compile(dialect=dialect.sa)
        assert got == want, (type(dialect).__name__, generic, is_key, got)


@pytest.mark.parametrize("length", [None, 1, 255, 768, 769, 5000, 100000])
def test_mysql_string_keys_fit_an_index(length):
    # InnoDB indexes at most 3072 bytes: 768 utf8mb4 characters
    for generic in (sa.String(length), sa.Unicode(length), sa.Text(length)):
        type_ = my().destination_type(generic, is_key=True)
        assert isinstance(type_, mysql.VARCHAR) and 1 <= type_.length <= 768
        if length and length <= 768:
            assert type_.length == length


def test_generic_types_of_reflected_source_types():
    cases = [
        (pg(), postgresql.JSONB(), sa.JSON), (pg(), postgresql.UUID(), sa.Uuid),
        (pg(), postgresql.BYTEA(), sa.LargeBinary), (pg(), postgresql.DOUBLE_PRECISION(53), sa.Double),
        (my(), mysql.TINYINT(display_width=1), sa.SmallInteger), (my(), mysql.YEAR(), sa.SmallInteger),
        (my(), mysql.LONGTEXT(), sa.Text), (my(), mysql.MEDIUMTEXT(), sa.Text),
        (my(), mysql.SET("a", "b"), sa.String), (my(), mysql.ENUM("a", "b"), sa.String),
        (my(), mysql.BIT(8), sa.BigInteger), (my(), mysql.DATETIME(fsp=6), sa.DateTime),
        (my(), mysql.LONGBLOB(), sa.LargeBinary), (my(), mysql.JSON(), sa.JSON),
        (lite(), sa.types.NullType(), sa.Text), (lite(), sqlite.DATETIME(), sa.DateTime),
        (lite(), sa.Uuid(), sa.Uuid),
    ]
    for dialect, source, want in cases:
        assert isinstance(dialect.generic_type(source), want), (dialect, source)
    assert pg().generic_type(postgresql.TIMESTAMP(timezone=True)).timezone is True
    assert my().generic_type(mysql.SET("a", "b")).length == 255


#: The ``types`` table of tests/test_types.py as SQLAlchemy reflects it from each
#: engine (MariaDB JSON after refine_reflected; SQLite "uuid" after refine_reflected).
REFLECTED = {
    "postgresql": dict(
        id=postgresql.INTEGER(), i=postgresql.INTEGER(), bi=postgresql.BIGINT(), n=postgresql.NUMERIC(12, 2),
        f=postgresql.DOUBLE_PRECISION(53), b=postgresql.BOOLEAN(), vc=postgresql.VARCHAR(50),
        t=postgresql.TEXT(), d=postgresql.DATE(), tm=postgresql.TIME(), ts=postgresql.TIMESTAMP(),
        tstz=postgresql.TIMESTAMP(timezone=True), j=postgresql.JSONB(), by=postgresql.BYTEA(),
        u=postgresql.UUID()),
    "mysql": dict(
        id=mysql.INTEGER(display_width=11), i=mysql.INTEGER(display_width=11),
        bi=mysql.BIGINT(display_width=20), n=mysql.DECIMAL(12, 2), f=mysql.DOUBLE(),
        b=mysql.TINYINT(display_width=1), vc=mysql.VARCHAR(50), t=mysql.LONGTEXT(), d=mysql.DATE(),
        tm=mysql.TIME(fsp=6), ts=mysql.DATETIME(fsp=6), tstz=mysql.DATETIME(fsp=6), j=sa.JSON(),
        by=mysql.LONGBLOB(), u=sa.UUID()),
    "sqlite": dict(
        id=sqlite.INTEGER(), i=sqlite.INTEGER(), bi=sa.BIGINT(), n=sqlite.NUMERIC(12, 2), f=sa.DOUBLE(),
        b=sqlite.BOOLEAN(), vc=sqlite.VARCHAR(50), t=sqlite.TEXT(), d=sqlite.DATE(), tm=sqlite.TIME(),
        ts=sqlite.DATETIME(), tstz=sqlite.DATETIME(), j=sqlite.JSON(), by=sa.BLOB(), u=sa.Uuid()),
}
# Column types PDR creates, per source engine -> destination engine (docs/dialects.md, "Type matrix").
_INTS = dict(id="INTEGER", i="INTEGER", bi="BIGINT", d="DATE", vc="VARCHAR(50)")
_TO_PG = dict(_INTS, n="NUMERIC(12, 2)", f="DOUBLE PRECISION", b="BOOLEAN", t="TEXT",
              tm="TIME(6) WITHOUT TIME ZONE", ts="TIMESTAMP(6) WITHOUT TIME ZONE",
              tstz="TIMESTAMP(6) WITHOUT TIME ZONE", j="JSONB", by="BYTEA", u="UUID")
_TO_MY = dict(_INTS, n="DECIMAL(12, 2)", f="DOUBLE", b="BOOL", t="LONGTEXT", tm="TIME(6)", ts="DATETIME(6)",
              tstz="DATETIME(6)", j="JSON", by="LONGBLOB", u="CHAR(36)")
_TO_LITE = dict(_INTS, n="NUMERIC(12, 2)", f="DOUBLE", b="BOOLEAN", t="TEXT", tm="TIME", ts="DATETIME",
                tstz="DATETIME", j="TEXT", by="BLOB", u="CHAR(36)")
CREATED = {
    ("postgresql", "mysql"): _TO_MY,
    ("postgresql", "sqlite"): _TO_LITE,
    ("mysql", "postgresql"): dict(_TO_PG, b="SMALLINT"),  # TINYINT(1) is an integer
    ("mysql", "sqlite"): dict(_TO_LITE, b="SMALLINT"),
    ("sqlite", "postgresql"): _TO_PG,
    ("sqlite", "mysql"): _TO_MY,
}
SA_DIALECT = {"postgresql": pg, "mysql": my, "sqlite": lite}


@pytest.mark.parametrize("src,dst", sorted(CREATED))
def test_type_matrix_across_engines(src, dst):
    source = sa.Table("types", sa.MetaData(), *[
        sa.Column(name, type_, primary_key=(name == "id")) for name, type_ in REFLECTED[src].items()])
    src_dialect, dst_dialect = SA_DIALECT[src](), SA_DIALECT[dst]()
    table = destination_table(source, src_dialect, dst_dialect, None, "types_copy")
    got = {c.name: str(c.type.compile(dialect=dst_dialect.sa)) for c in table.columns}
    assert got == CREATED[(src, dst)]
    assert [c.name for c in table.primary_key.columns] == ["id"]
    assert not table.c.id.nullable and table.c.i.nullable and table.c.id.autoincrement is False


@pytest.mark.parametrize("kind", sorted(SA_DIALECT))
def test_same_engine_copies_keep_the_reflected_type(kind):
    source = sa.Table("types", sa.MetaData(), *[
        sa.Column(name, type_, primary_key=(name == "id")) for name, type_ in REFLECTED[kind].items()])
    mapping = Mapping.parse('{"columns": {"id": "id", "b": "b", "tstz": "tstz", "j": "j"}}',
                            list(REFLECTED[kind]), ["id"])
    table = destination_table(source, SA_DIALECT[kind](), SA_DIALECT[kind](), None, "types_copy",
                              mapping=mapping)
    assert [c.name for c in table.columns] == ["id", "b", "tstz", "j"]
    for column in table.columns:
        assert column.type is source.c[column.name].type


def test_mysql_destination_tables_use_utf8mb4_bin():
    source = sa.Table("t", sa.MetaData(), sa.Column("k", sa.Text, primary_key=True))
    table = destination_table(source, pg(), my(), None, "t_copy")
    ddl = str(sa.schema.CreateTable(table).compile(dialect=my().sa))
    assert "k VARCHAR(255) NOT NULL" in ddl
    assert "ENGINE=InnoDB" in ddl and "CHARSET=utf8mb4" in ddl and "COLLATE utf8mb4_bin" in ddl
    assert pg().table_kwargs() == {} and lite().table_kwargs() == {}


# -- coerce ---------------------------------------------------------------------------

def convert(type_, value):
    func = coerce.converter_for(type_)
    assert func is not None, type_
    return func(value)


def test_coerce_datetimes():
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 654321, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive_utc = dt.datetime(2024, 5, 6, 5, 8, 9, 654321)
    for type_ in (sa.DateTime(), mysql.DATETIME(fsp=6), sqlite.DATETIME(), postgresql.TIMESTAMP()):
        got = convert(type_, aware)
        assert got == naive_utc and got.tzinfo is None
        assert convert(type_, naive_utc) == naive_utc
        assert convert(type_, "2024-05-06T07:08:09.654321+02:00") == naive_utc
    for type_ in (sa.DateTime(timezone=True), postgresql.TIMESTAMP(timezone=True)):
        got = convert(type_, naive_utc)
        assert got == naive_utc.replace(tzinfo=UTC) and got.utcoffset() == dt.timedelta(0)
        assert convert(type_, aware) == aware  # same instant, kept aware
        assert convert(type_, "2024-05-06T05:08:09.654321").tzinfo == UTC


def test_coerce_dates_and_times():
    assert convert(sa.Date(), dt.datetime(2024, 2, 29, 23, 59)) == dt.date(2024, 2, 29)
    assert type(convert(sa.Date(), dt.datetime(2024, 2, 29, 23, 59))) is dt.date
    assert convert(sa.Date(), "2024-02-29") == dt.date(2024, 2, 29)
    t = dt.time(13, 14, 15, 123456)
    assert convert(sa.Time(), dt.timedelta(hours=13, minutes=14, seconds=15, microseconds=123456)) == t
    assert convert(mysql.TIME(fsp=6), "13:14:15.123456") == t
    got = convert(postgresql.TIME(), t.replace(tzinfo=UTC))
    assert got == t and got.tzinfo is None


def test_coerce_json():
    for type_ in (sa.JSON(), postgresql.JSONB(), mysql.JSON(), sqlite.JSON()):
        assert convert(type_, '{"b": 1, "a": [1, 2.5, null, "ü"]}') == {"b": 1, "a": [1, 2.5, None, "ü"]}
        assert convert(type_, b"[]") == []
        assert convert(type_, {"k": 1}) == {"k": 1}
        assert convert(type_, "not json") == "not json"  # the destination rejects it loudly


def test_coerce_text():
    u = uuid.UUID(int=0x1234567812345678)
    for type_ in (sa.String(36), sa.Text(), mysql.CHAR(36), mysql.LONGTEXT(), sa.CHAR(32)):
        assert convert(type_, u) == "00000000-0000-0000-1234-567812345678"
        assert json.loads(convert(type_, {"b": 1, "a": "ü"})) == {"b": 1, "a": "ü"}
        assert "ü" in convert(type_, {"a": "ü"})  # not \u-escaped
        assert convert(type_, b"caf\xc3\xa9") == "café"
        assert convert(type_, dt.date(2024, 2, 29)) == "2024-02-29"
        assert convert(type_, decimal.Decimal("1.50")) == "1.50"
        assert convert(type_, "Ünïcødé ✓ 🍮") == "Ünïcødé ✓ 🍮"


def test_coerce_uuid_bool_int_numeric_binary():
    u = uuid.uuid4()
    for type_ in (sa.Uuid(), postgresql.UUID()):
        assert convert(type_, str(u)) == u
        assert convert(type_, u.bytes) == u
        assert convert(type_, u) == u
    for type_ in (sa.Boolean(), postgresql.BOOLEAN(), sqlite.BOOLEAN()):
        assert convert(type_, 1) is True and convert(type_, 0) is False
        assert convert(type_, decimal.Decimal(1)) is True
        assert convert(type_, True) is True
    for type_ in (sa.Integer(), mysql.TINYINT(display_width=1), sa.SmallInteger()):
        got = convert(type_, True)
        assert got == 1 and type(got) is int
        assert convert(type_, 7) == 7
    for type_ in (sa.Numeric(12, 2), mysql.DECIMAL(12, 2)):
        got = convert(type_, 0.1 + 0.2)
        assert got == decimal.Decimal("0.30000000000000004") and isinstance(got, decimal.Decimal)
        assert convert(type_, decimal.Decimal("-1234567890.12")) == decimal.Decimal("-1234567890.12")
    assert coerce.converter_for(sa.Float()) is None and coerce.converter_for(sa.Double()) is None
    for type_ in (sa.LargeBinary(), postgresql.BYTEA(), sa.BLOB()):
        got = convert(type_, memoryview(b"\x00\xff"))
        assert got == b"\x00\xff" and type(got) is bytes
        assert convert(type_, "é") == "é".encode("utf-8")


def test_row_converter_leaves_null_and_unlisted_columns():
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("ts", sa.DateTime()), sa.Column("u", sa.String(36)),
                     sa.Column("f", sa.Float()))
    row = {"id": True, "ts": None, "u": uuid.UUID(int=1), "f": 0.5}
    out = coerce.row_converter(table, ["ts", "u", "f"])(row)
    assert out == {"id": True, "ts": None, "u": "00000000-0000-0000-0000-000000000001", "f": 0.5}


# -- visibility -----------------------------------------------------------------------

def test_gap_and_position_json_round_trip():
    position = Position(9, [Gap(3, 4, None), Gap(7, 8, 1234)])
    data = json.loads(json.dumps(position.to_json()))
    assert data == {"c": 9, "g": [[3, 4, None], [7, 8, 1234]]}
    assert Position.from_json(data) == position
    assert Position.from_json(None) == Position(0, []) == Position.from_json({})
    assert position.horizon == 2
    assert Position(9).horizon == 9
    assert Position(9, [Gap(7, 8)]).horizon == 6
    # a checkpoint of an earlier version (a list of open transactions): a new proof is taken
    assert Position.from_json({"c": 9, "g": [[3, 4, ["42"], 7.5], [5, 5, None, 1.0]]}) == \
        Position(9, [Gap(3, 4, None), Gap(5, 5, None)])


def test_split_gap():
    gap = Gap(3, 8, 42)

    def ranges(found):
        parts = _split(gap, found)
        assert all(p.proof == 42 for p in parts)
        return [(p.lo, p.hi) for p in parts]

    assert ranges([]) == [(3, 8)]
    assert ranges([3]) == [(4, 8)]
    assert ranges([8]) == [(3, 7)]
    assert ranges([3, 8]) == [(4, 7)]
    assert ranges([5]) == [(3, 4), (6, 8)]
    assert ranges([4, 6]) == [(3, 3), (5, 5), (7, 8)]
    assert ranges([3, 4, 5, 6, 7, 8]) == []
    assert [(p.lo, p.hi) for p in _split(Gap(5, 5), [5])] == []


class Transactions(SQLiteDialect):
    """SQLite with scripted write transactions (as PostgreSQL or MariaDB would report):
    ``started`` counts the numbers handed out, ``open`` holds those still running, and
    ``stale`` makes the engine unable to tell (MariaDB's INNODB_TRX cache)."""

    def __init__(self):
        super().__init__(sqlite.dialect())
        self.started = 100
        self.open = set()
        self.stale = False
        self.checks = 0

    def begin(self) -> int:
        self.started += 1
        self.open.add(self.started)
        return self.started

    def transaction_horizon(self, conn, event_table):
        self.checks += 1
        if self.stale:
            return None
        return Horizon(self.started + 1, min(self.open, default=self.started + 1))


class EventSource:
    """An in-memory SQLite event table for a two-column key, built by the dialect."""

    def __init__(self, dialect):
        self.engine = sqlite_engine()
        self.conn = self.engine.connect()
        source = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("code", sa.String(5), primary_key=True))
        names = dialect.capture_names(None, "orders")
        self.table = dialect.event_table(sa.MetaData(), None, names, [source.c.id, source.c.code])
        self.table.create(self.conn)
        self.conn.commit()
        self.reader = EventReader(dialect, self.table, key_count=2)

    def add(self, *ids):
        self.conn.execute(self.table.insert(), [
            {"pdr_id": i, "pdr_op": "U", "pdr_k0": i * 10, "pdr_k1": f"c{i}"} for i in ids])
        self.conn.commit()

    def read(self, position, limit=100):
        events, new = self.reader.read(self.conn, position, limit)
        return [e.id for e in events], new, events


def gap_ranges(position):
    return [(g.lo, g.hi) for g in position.gaps]


def test_event_reader_on_sqlite_reads_gaps_and_closes_them_next_read():
    source = EventSource(lite())
    source.add(1, 2, 5, 6, 9)
    ids, position, events = source.read(Position())
    assert ids == [1, 2, 5, 6, 9]
    assert [e.key for e in events[:2]] == [(10, "c1"), (20, "c2")]
    assert position.cursor == 9
    assert gap_ranges(position) == [(3, 4), (7, 8)]
    assert all(g.proof is None for g in position.gaps)
    assert position.horizon == 2

    source.add(3)
    ids, position, _ = source.read(position)
    assert ids == [3]
    # one writer at a time: nothing can still fill 4, 7 or 8, so the gaps close now
    assert position.cursor == 9 and position.gaps == []

    source.add(10, 12)
    ids, position, _ = source.read(position)
    assert ids == [10, 12] and position.cursor == 12 and gap_ranges(position) == [(11, 11)]
    ids, position, _ = source.read(position)
    assert ids == [] and position == Position(12, [])


def test_event_reader_keeps_gap_while_an_older_transaction_is_open():
    dialect = Transactions()
    holder = dialect.begin()  # took ids 3..4 and 7..8 and has not committed
    source = EventSource(dialect)
    source.add(1, 2, 5, 6, 9)
    ids, position, _ = source.read(Position())
    assert ids == [1, 2, 5, 6, 9] and gap_ranges(position) == [(3, 4), (7, 8)]
    assert dialect.checks == 0  # no gap yet: no horizon asked

    # the holder is open: the gaps get their proof (a number above every writer so far) and stay
    ids, position, _ = source.read(position)
    assert ids == [] and gap_ranges(position) == [(3, 4), (7, 8)]
    assert [g.proof for g in position.gaps] == [holder + 1, holder + 1]

    # id 3 commits: returned at once, its gap shrinks; new ids after the cursor are read too
    source.add(3, 10)
    ids, position, _ = source.read(position)
    assert ids == [3, 10]
    assert position.cursor == 10 and gap_ranges(position) == [(4, 4), (7, 8)]

    # a transaction that began writing later does not hold gaps proven before it began;
    # the holder has ended, so a final read settles them: id 8 (committed meanwhile) is returned
    dialect.begin()
    dialect.open.discard(holder)
    source.add(8)
    ids, position, _ = source.read(position)
    assert ids == [8]
    assert position == Position(10, [])


def test_event_reader_gap_seen_after_a_later_transaction_began_waits_for_it():
    dialect = Transactions()
    source = EventSource(dialect)
    source.add(1, 4)
    _, position, _ = source.read(Position())
    late = dialect.begin()  # began before the proof is taken: it may hold id 2 or 3
    _, position, _ = source.read(position)
    assert gap_ranges(position) == [(2, 3)] and position.gaps[0].proof == late + 1
    _, position, _ = source.read(position)
    assert gap_ranges(position) == [(2, 3)]  # still open: kept, however long it takes
    dialect.open.clear()
    source.add(2)
    ids, position, _ = source.read(position)
    assert ids == [2] and position == Position(4, [])


def test_event_reader_settles_nothing_while_the_engine_cannot_tell():
    dialect = Transactions()
    dialect.stale = True  # e.g. MariaDB's INNODB_TRX cache not refreshed since the gap was seen
    source = EventSource(dialect)
    source.add(1, 3)
    _, position, _ = source.read(Position())
    for _ in range(3):
        _, position, _ = source.read(position)
        assert gap_ranges(position) == [(2, 2)] and position.gaps[0].proof is None
    dialect.stale = False
    _, position, _ = source.read(position)
    assert position.gaps == []


def test_event_reader_does_not_change_the_callers_gaps():
    dialect = Transactions()
    dialect.begin()
    source = EventSource(dialect)
    source.add(1, 3)
    _, position, _ = source.read(Position())
    before = position.to_json()
    _, new, _ = source.read(position)
    assert position.to_json() == before and new.gaps[0].proof is not None  # a change the caller stores


def test_event_reader_examines_every_gap_however_many():
    dialect = Transactions()
    holder = dialect.begin()  # a long transaction holds every gap open
    source = EventSource(dialect)
    ids = list(range(1, 4 * visibility.GAP_RANGES_PER_QUERY * 2 + 2, 2))  # 1, 3, 5, ...: a gap between each
    source.add(*ids)
    _, position, _ = source.read(Position(), limit=len(ids))
    assert len(position.gaps) == len(ids) - 1 == 4 * visibility.GAP_RANGES_PER_QUERY
    checkpoint = len(json.dumps(position.to_json()))
    # ids in the last gaps commit: they are read at once, not after the first gaps close
    source.add(ids[-2] + 1, 2)
    found, position, _ = source.read(position)
    assert sorted(found) == [2, ids[-2] + 1] and len(position.gaps) == len(ids) - 3
    assert source.reader.count_pending(source.conn, position) == 0
    # the checkpoint grows with the gaps, never with the number of open transactions
    for _ in range(2000):
        dialect.begin()
    _, position, _ = source.read(position)
    assert len(json.dumps(position.to_json())) < checkpoint
    dialect.open.clear()
    _, position, _ = source.read(position)
    assert position.gaps == [] and holder


def test_event_reader_keeps_settled_gap_when_the_batch_is_full():
    dialect = Transactions()
    source = EventSource(dialect)
    source.add(1, 5)
    _, position, _ = source.read(Position())
    assert gap_ranges(position) == [(2, 4)]
    source.add(2, 3, 4)
    ids, position, _ = source.read(position, limit=2)
    assert ids == [2, 3] and gap_ranges(position) == [(4, 4)]  # not all of the gap was read yet
    assert source.reader.count_pending(source.conn, position) == 1
    ids, position, _ = source.read(position, limit=2)
    assert ids == [4] and position == Position(5, [])


class KeyArrays(SQLiteDialect):
    """Event rows carrying up to 3 keys, presented as one row per key (as PostgreSQL's
    ``event_relation`` unnests its key arrays): several rows share an id."""

    bulk_event_keys = 3

    def __init__(self, keys_table):
        super().__init__(sqlite.dialect())
        self.keys_table = keys_table

    def event_relation(self, event, key_count):
        return self.keys_table


def test_event_reader_never_splits_an_event_row_between_reads():
    engine = sqlite_engine()
    conn = engine.connect()
    unnested = sa.Table("keys", sa.MetaData(), sa.Column("pdr_id", sa.Integer), sa.Column("pdr_op", sa.Text),
                        sa.Column("pdr_at", sa.Text), sa.Column("pdr_k0", sa.Text))
    unnested.create(conn)
    conn.execute(unnested.insert(), [{"pdr_id": i, "pdr_k0": k} for i, k in (
        (1, "a"), (1, "b"), (1, "c"), (2, "d"), (3, "e"), (3, "f"), (5, "g"))])
    conn.commit()
    event = lite().event_table(sa.MetaData(), None, lite().capture_names(None, "t"),
                               [sa.Column("id", sa.Text, primary_key=True)])
    reader = EventReader(KeyArrays(unnested), event, key_count=1)
    assert reader.arrays

    def read(position, limit):
        events, new = reader.read(conn, position, limit)
        return "".join(e.key[0] for e in events), new

    # id 2 ends a full read: its keys may go on past the limit, so it waits for the next read
    keys, position = read(Position(), 4)
    assert keys == "abc" and position == Position(1, [])
    keys, position = read(position, 4)
    assert keys == "def" and position == Position(3, [])
    keys, position = read(position, 4)
    assert keys == "g" and gap_ranges(position) == [(4, 4)] and position.cursor == 5
    # fewer than an event row's keys asked: a whole event row is read all the same
    keys, position = read(Position(), 2)
    assert keys == "abc" and position == Position(1, [])
    keys, position = read(position, 1)
    assert keys == "d" and position == Position(2, [])
    # gaps too: a full read of gap 1..3 keeps id 3 in the gap
    keys, position = read(Position(5, [Gap(1, 3)]), 5)
    assert keys == "abcd" and position.cursor == 5 and gap_ranges(position) == [(3, 3)]
    # a reader of an event table without key arrays reads one key per row
    assert not EventReader(KeyArrays(unnested), event, key_count=1, arrays=False).arrays


def test_event_reader_start_position_and_pending_count():
    source = EventSource(lite())
    source.add(1, 2, 3, 7)
    assert source.reader.start_position(2) == Position(2, [])
    assert source.reader.count_pending(source.conn, Position(2, [])) == 2
    assert source.reader.count_pending(source.conn, Position(7, [Gap(1, 2)])) == 2
    ids, _, _ = source.read(source.reader.start_position(2))
    assert ids == [3, 7]


def test_postgresql_copy_text_escapes_and_refuses_what_it_cannot_spell():
    from django_pdr.dialects.postgresql import _NotCopyable, copy_text

    row = (1, "tab\there\\back\nnew\rcr", None, True, False, 1.5, float("nan"), float("-inf"), b"\x00\xff",
           decimal.Decimal("-1.20"), dt.datetime(2024, 1, 2, 3, 4, 5, 6), dt.date(1, 1, 1), dt.time(23, 59),
           uuid.UUID(int=1))
    assert copy_text([row]) == (
        "1\ttab\\there\\\\back\\nnew\\rcr\t\\N\tt\tf\t1.5\tNaN\t-Infinity\t\\\\x00ff\t-1.20\t"
        "2024-01-02T03:04:05.000006\t0001-01-01\t23:59:00\t00000000-0000-0000-0000-000000000001\n")
    for value in ([1, 2], dt.timedelta(seconds=1), "nul\x00"):
        with pytest.raises(_NotCopyable):
            copy_text([(value,)])


def test_postgresql_small_text_batches_are_read_as_copy_reads_them_or_left_to_copy():
    from django_pdr.dialects.base import TextRows
    from django_pdr.dialects.postgresql import _copy_fields, _small_text_batch

    assert _copy_fields("a\\tb\t\\N\t\\\\x00\t\\n\\r\\b\\f\\v\t") == ["a\tb", None, "\\x00", "\n\r\b\f\v", ""]
    assert _copy_fields("\\101") is None and _copy_fields("\\x41") is None  # bytes: COPY's to read
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("v", sa.Text))
    rows = TextRows("copy", ["t\t1\t\\N\n", "f\t2\tx\\ty\n"], 2)
    assert _small_text_batch(table, ["id", "v"], rows) == ([{"id": "1", "v": None}], [{"id": "2", "v": "x\ty"}])
    assert _small_text_batch(table, ["id", "v"], TextRows("copy", "f\t2\tnul\x00\n", 1)) is None
    assert _small_text_batch(table, ["id", "v"], TextRows("copy", "f\t2\n", 1)) is None  # a field short
    big = TextRows("copy", "".join(f"f\t{i}\tx\n" for i in range(300)), 300)
    assert _small_text_batch(table, ["id", "v"], big) is None
    for type_ in (postgresql.JSONB(), postgresql.ARRAY(sa.Integer), postgresql.INET()):
        other = sa.Table("o", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("v", type_))
        assert _small_text_batch(other, ["id", "v"], rows) is None  # JSON null would read as NULL, ...


def test_postgresql_new_rows_are_split_from_a_marked_text():
    from django_pdr.dialects.base import TextRows
    from django_pdr.dialects.postgresql import _split_new

    lines = ["n\t1\ta\\tb\n", "f\t2\tn\\nx\n", "t\t3\t\\N\n", "n\t4\tn\\n\n", "n\t5\t\\\\n\n"]
    want = (["1\ta\\tb\n", "4\tn\\n\n", "5\t\\\\n\n"], ["f\t2\tn\\nx\n", "t\t3\t\\N\n"])
    # one text (a MySQL source), or a part per row (a PostgreSQL source): the new lines
    # without their flag, the others
    assert _split_new(TextRows("copy", "".join(lines), 5)) == want
    assert _split_new(TextRows("copy", lines, 5)) == want
    assert _split_new(TextRows("copy", "n\t1\tx\n", 1)) == (["1\tx\n"], [])  # new rows only
    # no new row, or not one line per row: nothing split
    for data, count in [("f\t1\tx\n", 1), ("".join(lines), 4), ("n\t1\n\nf\t2\n", 3), ("", 0),
                        (lines[:4], 5), (["n\t1\tx"], 1)]:
        assert _split_new(TextRows("copy", data, count)) == ([], data)


def test_postgresql_statement_parameters_keep_negative_zero():
    # psycopg2 spells -0.0 as the literal " -0.0", which PostgreSQL reads as minus the
    # numeric 0.0, i.e. 0: the dialect hands it a value that spells itself exactly
    from psycopg2.extensions import adapt

    (row,) = PostgreSQLDialect(postgresql.dialect()).driver_rows([{"a": -0.0, "b": 0.0, "c": -1.5, "d": "x"}])
    assert adapt(row["a"]).getquoted() == b"'-0'::float8"
    assert row["b"] == 0.0 and str(row["b"]) == "0.0" and row["c"] == -1.5 and row["d"] == "x"
    assert adapt(-0.0).getquoted() == b" -0.0"  # what it guards against (psycopg2's own spelling)
    # psycopg2 spells every Decimal that is not finite as NaN
    (row,) = PostgreSQLDialect(postgresql.dialect()).driver_rows(
        [{"a": decimal.Decimal("Infinity"), "b": decimal.Decimal("-Infinity"), "c": decimal.Decimal("NaN")}])
    assert [adapt(row[k]).getquoted() for k in "abc"] == [b"'Infinity'::numeric", b"'-Infinity'::numeric",
                                                         b"'NaN'::numeric"]
    assert adapt(decimal.Decimal("-Infinity")).getquoted() == b"'NaN'::numeric"
    rows = [{"a": -0.0}]
    assert SQLiteDialect(sqlite.dialect()).driver_rows(rows) is rows  # other drivers send doubles as they are


def test_postgresql_notify_is_rendered_only_when_asked():
    dialect = pg()
    source = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), schema="public")
    names = dialect.capture_names("public", "t")
    event = dialect.event_table(sa.MetaData(), "public", names, [source.c.id])
    loud = dialect.create_trigger_statements(source, event, names, ["id"], notify=True)[0]
    quiet = dialect.create_trigger_statements(source, event, names, ["id"], notify=False)[0]
    # only when the statement wrote events, and only while a worker sleeps: it holds
    # the sleep lock (not free to share)
    # (pdr_rows: the events the statement's first INSERT wrote, counted in every branch)
    assert body_lines(loud).count("GET DIAGNOSTICS pdr_rows = ROW_COUNT;") == 3
    notify = ("  END IF;\n  IF pdr_rows > 0 THEN\n"
              "    IF NOT pg_try_advisory_xact_lock_shared(1346654753, 0) THEN\n"
              "      PERFORM pg_notify('pdr_events', '');\n    END IF;\n  END IF;\n")
    assert notify in loud
    assert "pg_notify" not in quiet and "advisory" not in quiet
    assert quiet == loud.replace(notify, "  END IF;\n")


def body_lines(statement):
    return [line.strip() for line in statement.splitlines()]


def test_text_path_pairs():
    # PostgreSQL spells COPY text (for itself) and MySQL literals; MySQL and SQLite spell COPY text
    assert pg().copies_text_to(pg()) and pg().copies_text_to(my()) and my().copies_text_to(pg())
    assert lite().copies_text_to(pg())
    assert not my().copies_text_to(my()) and not lite().copies_text_to(my()) and not pg().copies_text_to(lite())
    assert not lite().copies_text_to(lite())


def test_postgresql_text_path_to_postgresql_only_for_the_same_types():
    from sqlalchemy.dialects import postgresql as pgt

    dialect = pg()
    same = [
        (sa.Integer(), sa.Integer()), (sa.Numeric(12, 2), sa.Numeric(12, 2)), (sa.String(40), sa.String(40)),
        (sa.String(40), sa.Text()), (sa.Text(), sa.Text()), (pgt.JSON(), pgt.JSONB()),
        # a table PDR creates gives timestamps precision 6, the default precision
        (pgt.TIMESTAMP(timezone=True), pgt.TIMESTAMP(timezone=True, precision=6)),
        (pgt.TIME(), pgt.TIME(precision=6)), (pgt.UUID(), pgt.UUID()), (pgt.BYTEA(), pgt.BYTEA()),
    ]
    different = [
        (sa.Integer(), sa.BigInteger()), (sa.BigInteger(), sa.Integer()), (sa.Numeric(12, 2), sa.Numeric(10, 2)),
        (sa.Text(), sa.String(40)), (pgt.JSONB(), pgt.JSON()), (pgt.TIMESTAMP(), pgt.TIMESTAMP(timezone=True)),
        (pgt.TIMESTAMP(timezone=True), pgt.TIMESTAMP()), (pgt.BYTEA(), sa.Text()), (sa.Boolean(), sa.Integer()),
        (pgt.TIMESTAMP(precision=3), pgt.TIMESTAMP()), (sa.Float(), sa.Numeric()),
    ]
    assert [dialect.text_compatible(a, b) for a, b in same] == [True] * len(same)
    assert [dialect.text_compatible(a, b) for a, b in different] == [False] * len(different)


def test_postgresql_copy_text_by_type_matches_the_general_encoder():
    import datetime as dt
    import decimal
    import uuid

    from django_pdr.dialects.postgresql import _copy_value, copy_text

    values = [0, -7, 2 ** 70, "", "plain", "tab\there", "back\\slash", "new\nline\r", decimal.Decimal("-1.50"),
              1.5, float("nan"), float("-inf"), True, False, dt.datetime(2024, 1, 2, 3, 4, 5, 6),
              dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), dt.date(2024, 2, 29), dt.time(1, 2, 3),
              uuid.UUID(int=1), b"\x00\xff", None]
    expected = "\t".join("\\N" if v is None else _copy_value(v) for v in values) + "\n"
    assert copy_text([values]) == expected


@pytest.mark.parametrize("text", [b"2024-02-29 13:14:15", b"2024-02-29 13:14:15.123456", b"2024-02-29 13:14:15.1",
                                  b"2024-02-29 13:14:15.123", b"0000-00-00 00:00:00", b"2024-02-31 00:00:00",
                                  b"9999-12-31 23:59:59.999999", b"1000-01-01 00:00:00", "2024-01-01 00:00:00"])
def test_mysql_datetime_reader_reads_what_pymysql_reads(text):
    from pymysql import converters

    from django_pdr.dialects.mysql import _read_datetime

    assert _read_datetime(text) == converters.convert_datetime(text)
    assert type(_read_datetime(text)) is type(converters.convert_datetime(text))


def test_mysql_connections_share_one_preferred_tls_context_and_keep_their_own_options():
    import ssl

    from pymysql.connections import Connection

    from django_pdr.dialects.mysql import MySQLDialect, _pymysql_connection_class

    shared = _pymysql_connection_class()
    plain = Connection(defer_connect=True)  # what PyMySQL builds for a connection given no TLS option
    first, second = shared(defer_connect=True), shared(defer_connect=True)
    assert first.ssl == plain.ssl and first._ssl_required == plain._ssl_required
    if plain.ssl:  # PyMySQL 1.2 and later: "preferred", TLS if offered (1.1: none unless asked)
        assert not first._ssl_required
        assert first.ctx is second.ctx  # one context, not one per connection
        for attribute in ("verify_mode", "check_hostname", "options", "verify_flags", "minimum_version"):
            assert getattr(first.ctx, attribute) == getattr(plain.ctx, attribute), attribute
    own = shared(defer_connect=True, ssl={"check_hostname": False})  # an option: its own, required
    assert own.ctx is not first.ctx and own._ssl_required and own.ctx.verify_mode == ssl.CERT_NONE
    assert shared(defer_connect=True, ssl_disabled=True).ssl is False
    # the options docs/security.md names reach PyMySQL as such a dict (a context of its own)
    url = sa.engine.make_url("mysql+pymysql://u:p@h/x?ssl_ca=/ca.pem&ssl_check_hostname=true")
    assert sa.create_engine(url).dialect.create_connect_args(url)[1]["ssl"] == {"ca": "/ca.pem",
                                                                              "check_hostname": True}

    engine = sa.create_engine("mysql+pymysql://u:p@127.0.0.1:9/x")
    MySQLDialect.prepare_engine(engine)  # connections of a MySQL engine are built by it
    made = []
    real = shared.connect
    shared.connect = lambda self, sock=None: made.append(self)
    try:
        engine.raw_connection()
    except Exception:
        pass
    finally:
        shared.connect = real
    assert made and made[0].user == "u" and made[0].port == 9
    assert made[0].ctx is first.ctx or not plain.ssl


def test_mysql_decimal_literals_are_never_in_exponent_form():
    import decimal

    from django_pdr.dialects.mysql import _literal_encoder

    class Connection:
        server_status = 0

        def escape(self, value):
            raise AssertionError("not expected here")

    encode = _literal_encoder(Connection())
    assert encode(decimal.Decimal("0.000000123456789012345678")) == "0.000000123456789012345678"
    assert encode(decimal.Decimal("1E+3")) == "1000"
    assert encode(decimal.Decimal("-12.50")) == "-12.50"
    assert encode(None) == "NULL" and encode(True) == "1" and encode("it's") == "'it\\'s'"


def test_postgresql_text_path_never_takes_arrays_to_another_type():
    from sqlalchemy.dialects import postgresql as pgt

    dialect = pg()
    assert not dialect.text_compatible(pgt.ARRAY(sa.String(10)), sa.Text())
    assert not dialect.text_compatible(pgt.ARRAY(sa.Integer()), pgt.ARRAY(sa.BigInteger()))
    assert dialect.text_compatible(pgt.ARRAY(sa.Integer()), pgt.ARRAY(sa.Integer()))


def test_postgresql_values_only_for_pairs_the_python_path_writes_alike():
    from sqlalchemy.dialects import mysql as myt
    from sqlalchemy.dialects import postgresql as pgt

    dialect, dest = pg(), my()
    same = [
        (sa.Integer(), myt.BIGINT()), (sa.BigInteger(), myt.INTEGER()), (sa.Boolean(), myt.TINYINT(1)),
        (pgt.DOUBLE_PRECISION(), myt.DOUBLE()), (pgt.REAL(), myt.FLOAT()), (sa.Numeric(12, 2), myt.DECIMAL(12, 2)),
        (pgt.TIMESTAMP(), myt.DATETIME(fsp=6)), (sa.Date(), myt.DATE()), (sa.Text(), myt.LONGTEXT()),
        (sa.String(40), myt.VARCHAR(40)),
    ]
    different = [
        (pgt.TIMESTAMP(timezone=True), myt.DATETIME()),  # an aware value: converted on the Python path
        (sa.CHAR(5), myt.CHAR(5)),  # character(n) casts to text without its padding
        (sa.Numeric(12, 2), myt.DOUBLE()), (pgt.DOUBLE_PRECISION(), myt.DECIMAL(12, 2)),
        (sa.Integer(), myt.VARCHAR(10)), (sa.Text(), myt.ENUM("a", "b")), (sa.Text(), myt.SET("a", "b")),
        (pgt.BYTEA(), myt.LONGBLOB()), (pgt.JSONB(), myt.JSON()), (pgt.UUID(), myt.CHAR(36)),
        (pgt.ARRAY(sa.Integer()), myt.LONGTEXT()), (sa.Date(), myt.DATETIME()), (sa.Time(), myt.TIME()),
    ]
    assert [dialect.text_compatible(a, b, dest) for a, b in same] == [True] * len(same)
    assert [dialect.text_compatible(a, b, dest) for a, b in different] == [False] * len(different)


def test_mysql_copy_text_only_for_pairs_the_python_path_writes_alike():
    from sqlalchemy.dialects import mysql as myt
    from sqlalchemy.dialects import postgresql as pgt

    dialect, dest = my(mariadb=True), pg()
    same = [
        (myt.INTEGER(), sa.Integer()), (myt.TINYINT(1), sa.SmallInteger()), (myt.BIGINT(unsigned=True), sa.BigInteger()),
        (myt.DOUBLE(), pgt.DOUBLE_PRECISION()), (myt.FLOAT(), pgt.REAL()), (myt.FLOAT(), pgt.DOUBLE_PRECISION()),
        (myt.DECIMAL(12, 2), sa.Numeric(12, 2)), (myt.DATETIME(fsp=6), pgt.TIMESTAMP()),
        (myt.TIMESTAMP(), pgt.TIMESTAMP()), (myt.DATE(), sa.Date()),
        (myt.VARCHAR(40, charset="latin1"), sa.String(40)), (myt.LONGTEXT(), sa.Text()),
        (myt.ENUM("a", "b"), sa.Text()),
    ]
    different = [
        (myt.DOUBLE(), pgt.REAL()),  # rounded twice on one path, once on the other
        (myt.DATETIME(), pgt.TIMESTAMP(timezone=True)), (myt.BIT(8), sa.BigInteger()),
        (myt.SET("a", "b"), sa.Text()), (myt.VARBINARY(10), pgt.BYTEA()), (myt.JSON(), pgt.JSONB()),
        (myt.DECIMAL(12, 2), pgt.DOUBLE_PRECISION()), (myt.TIME(), sa.Time()), (myt.YEAR(), sa.SmallInteger()),
        (myt.VARCHAR(10), pgt.ENUM("a", "b", name="e")), (myt.INTEGER(), sa.Boolean()),
    ]
    assert [dialect.text_compatible(a, b, dest) for a, b in same] == [True] * len(same)
    assert [dialect.text_compatible(a, b, dest) for a, b in different] == [False] * len(different)
    assert not dialect.text_compatible(myt.INTEGER(), sa.Integer(), my())  # MySQL reads no COPY text


def _labelled_query():
    t = sa.table("t", sa.column("id", sa.Integer()), sa.column("s", sa.Text()), sa.column("ok", sa.Boolean()))
    return sa.select(t.c.id.is_(None).label("pdr_gone"), t.c.id.label("pdr_k0"), t.c.s.label("pdr_c1"),
                     t.c.ok.label("pdr_c2"))


def test_postgresql_spells_mysql_literals_in_sql():
    from django_pdr.dialects.crosstext import values_query as _values_query

    sql = literal(_values_query(_labelled_query()), pg())
    # a gone key: "(id)"; a row: "(id,'s',flag)"; NULL as NULL; backslashes and quotes escaped
    assert sql.startswith("SELECT pdr_q.pdr_gone, CASE WHEN pdr_q.pdr_gone THEN '(' || CASE WHEN (pdr_q.pdr_k0 IS NULL) "
                          "THEN 'NULL' ELSE CAST(pdr_q.pdr_k0 AS TEXT) END || ')' ELSE '('")
    assert ("CASE WHEN (pdr_q.pdr_c1 IS NULL) THEN 'NULL' ELSE '''' || replace(replace(CAST(pdr_q.pdr_c1 AS TEXT), "
            r"'\', '\\'), '''', '\''') || '''' END") in sql
    assert "ELSE CASE WHEN pdr_q.pdr_c2 THEN '1' WHEN NOT pdr_q.pdr_c2 THEN '0' END END || ')' END" in sql
    with pytest.raises(NotImplementedError):
        _values_query(sa.select(sa.column("x", sa.LargeBinary()).label("pdr_c0")))


def test_postgresql_spells_no_mysql_literal_for_values_the_python_path_reads_otherwise():
    # infinity, BC and 5-digit years, NaN: the spelling is SQL NULL (the whole row literal
    # becomes NULL and copy_out hands the batch to the Python path), never a MySQL literal
    from django_pdr.dialects.crosstext import values_spelling as _values_spelling

    def spelled(type_):
        return literal(_values_spelling(type_)(sa.column("x", type_)), pg())

    assert spelled(sa.DateTime()) == (
        "CASE WHEN (isfinite(x) AND right(CAST(x AS TEXT), 3) != ' BC' AND length(split_part(CAST(x AS TEXT), "
        "'-', 1)) = 4) THEN '''' || replace(replace(CAST(x AS TEXT), '\\', '\\\\'), '''', '\\''') || '''' "
        "ELSE NULL END")
    assert spelled(sa.Date()).startswith("CASE WHEN (isfinite(x) AND")
    assert spelled(sa.Float()) == ("CASE WHEN (CAST(x AS TEXT) = 'NaN' OR CAST(x AS TEXT) = 'Infinity' OR CAST(x AS TEXT) = '-Infinity') THEN NULL "
                                   "WHEN (strpos(CAST(x AS TEXT), 'e') > 0) THEN CAST(x AS TEXT) "
                                   "ELSE CAST(x AS TEXT) || 'e0' END")
    assert spelled(sa.Numeric()) == ("CASE WHEN (CAST(x AS TEXT) = 'NaN' OR CAST(x AS TEXT) = 'Infinity' OR CAST(x AS TEXT) = '-Infinity') THEN NULL "
                                     "ELSE CAST(x AS TEXT) END")


def test_mysql_spells_copy_text_in_sql():
    from django_pdr.dialects.crosstext import copy_query as _copy_query

    sql = literal(_copy_query(_labelled_query()), my())
    assert sql.startswith("SELECT CAST(concat(CASE WHEN (pdr_q.pdr_gone IS NULL) THEN '\\\\N' ELSE CASE WHEN "
                          "pdr_q.pdr_gone THEN 't' WHEN pdr_q.pdr_gone = 0 THEN 'f' END END, '\t', CASE WHEN "
                          "(pdr_q.pdr_k0 IS NULL) THEN '\\\\N' ELSE CAST(pdr_q.pdr_k0 AS CHAR) END, '\t', ")
    # backslash first, then newline, carriage return, tab; on the bytes of the utf8mb4 form
    # whatever the column's charset (linear time); a NULL spelling (too long) leaves the line NULL
    assert ("ELSE regexp_replace(regexp_replace(regexp_replace(regexp_replace(CAST(CAST(pdr_q.pdr_c1 AS CHAR CHARACTER "
            r"SET utf8mb4) AS BINARY), '\\\\', '\\\\\\\\'), '\\n', '\\\\n'), '\\r', '\\\\r'), '\\t', '\\\\t') END") in sql
    assert "AS BINARY)" in sql and "coalesce" not in sql
    with pytest.raises(NotImplementedError):
        _copy_query(sa.select(sa.column("x", sa.LargeBinary()).label("pdr_c0")))


def test_string_keys_whose_collation_may_fold_spellings_keep_the_python_path():
    from sqlalchemy.dialects import mysql as myt

    # MySQL: any string key (collations compare 'bob' = 'Bob', 'a' = 'a ')
    assert my().text_compatible(myt.VARCHAR(20), sa.Text(), pg())
    assert not my().text_compatible(myt.VARCHAR(20), sa.Text(), pg(), is_key=True)
    assert my().text_compatible(myt.INTEGER(), sa.Integer(), pg(), is_key=True)
    # PostgreSQL: a key with its own collation (possibly nondeterministic)
    assert pg().text_compatible(sa.Text(), sa.Text(), pg(), is_key=True)
    assert not pg().text_compatible(sa.Text(collation="und-x-icu-ci"), sa.Text(collation="und-x-icu-ci"), pg(),
                                    is_key=True)
    assert not pg().text_compatible(sa.Text(collation="ci"), myt.VARCHAR(20), my(), is_key=True)


def test_driver_statement_orders_positional_parameters_and_uses_engine_processors():
    from sqlalchemy.dialects.mysql import pymysql
    from sqlalchemy.dialects.postgresql import psycopg2

    from django_pdr.dialects.base import Dialect, bind_processor

    class Conn:
        dialect = pymysql.dialect()

    query = sa.select(sa.literal("a")).where(sa.column("x") == 2)
    sql, params = Dialect.driver_statement(Conn(), query)
    assert sql.count("%s") == 2 and params == ("a", 2)
    # a generic NUMERIC's own processor makes floats (-123456789012345678.123456 lost its
    # last digits on the Python path into PostgreSQL); psycopg2's NUMERIC keeps Decimal
    assert sa.Numeric(24, 6).bind_processor(psycopg2.dialect()) is not None
    assert bind_processor(sa.Numeric(24, 6), psycopg2.dialect()) is None


def test_driver_statement_compiles_a_shape_once_and_binds_each_statements_own_values():
    from sqlalchemy.dialects.postgresql import psycopg2

    from django_pdr.dialects.base import Dialect

    class Conn:
        dialect = psycopg2.dialect()

    t = sa.table("t", sa.column("a", sa.Integer), sa.column("b", sa.String))

    def window(lo, hi, name="x"):
        return sa.select(t.c.a, sa.literal(name).label("n")).where(t.c.a > lo, t.c.a <= hi)

    sql, params = Dialect.driver_statement(Conn(), window(5, 9))
    cached = dict(Conn.dialect._pdr_compiled)
    assert len(cached) == 1
    sql2, params2 = Dialect.driver_statement(Conn(), window(7, 11, "y"))
    assert sql2 == sql and Conn.dialect._pdr_compiled == cached  # compiled once
    assert sorted(params.values(), key=str) == [5, 9, "x"] and sorted(params2.values(), key=str) == [11, 7, "y"]
    # an IN list is spelled into the SQL: never served from the cache with other values
    one = Dialect.driver_statement(Conn(), sa.select(t.c.a).where(t.c.a.in_([1, 2])))
    two = Dialect.driver_statement(Conn(), sa.select(t.c.a).where(t.c.a.in_([3, 4, 5])))
    assert sorted(one[1].values()) == [1, 2] and sorted(two[1].values()) == [3, 4, 5]
    assert one[0].count("%(") == 2 and two[0].count("%(") == 3


def test_a_collation_does_not_cross_engines():
    from sqlalchemy.dialects import mysql as myt

    generic = my().generic_type(myt.VARCHAR(20, charset="latin1", collation="latin1_swedish_ci"))
    assert generic.collation is None and generic.length == 20


STATUS_REPORT = """
------------
TRANSACTIONS
------------
Trx id counter 19725
Purge done for trx's n:o < 19720 undo n:o < 2 state: running
History list length 2
LIST OF TRANSACTIONS FOR EACH SESSION:
---TRANSACTION 19724, ACTIVE 0 sec
2 lock struct(s), heap size 1128, 1 row lock(s)
---TRANSACTION 19702, ACTIVE (PREPARED) 3 sec
---TRANSACTION (0x7fd7e5459680), not started
0 lock struct(s), heap size 1128, 0 row lock(s)
--------
FILE I/O
--------
"""


class _Report:
    def __init__(self, text):
        self.text = text

    def execute(self, statement):
        return self

    def one(self):
        return ("InnoDB", "", self.text)


def test_mariadb_status_report_horizon():
    assert MySQLDialect._status_horizon(_Report(STATUS_REPORT)) == Horizon(19725, 19702)
    idle = STATUS_REPORT.replace("---TRANSACTION 19724, ACTIVE 0 sec\n", "").replace(
        "---TRANSACTION 19702, ACTIVE (PREPARED) 3 sec\n", "")
    assert MySQLDialect._status_horizon(_Report(idle)) == Horizon(19725, 19725)
    truncated = STATUS_REPORT.replace("---TRANSACTION (0x", "...truncated...\n---TRANSACTION (0x")
    assert MySQLDialect._status_horizon(_Report(truncated)) is None


class _Monitoring:
    """A connection answering Firebird's horizon query with one row."""

    def __init__(self, row):
        self.row, self.sql = row, []

    def execute(self, query):
        self.sql.append(str(query))
        return SimpleResult(self.row)


class SimpleResult:
    def __init__(self, row):
        self.row = row

    def one(self):
        return self.row


def test_firebird_horizon_from_one_monitoring_snapshot():
    from django_pdr.errors import ConfigurationError

    dialect = fb()
    conn = _Monitoring((120, 97, 1))
    assert dialect.transaction_horizon(conn, None) == Horizon(120, 97)
    [sql] = conn.sql  # one statement: both numbers from one MON$ snapshot
    assert "MON$NEXT_TRANSACTION" in sql and "FROM MON$DATABASE" in sql
    assert "MON$TRANSACTION_ID <> CURRENT_TRANSACTION AND t.MON$READ_ONLY = 0" in sql
    assert dialect.transaction_horizon(_Monitoring((120, None, 1)), None) == Horizon(120, 120)  # none open
    # a user who sees only its own attachments proves nothing: an error, never a horizon
    with pytest.raises(ConfigurationError, match="SYSDBA"):
        dialect.transaction_horizon(_Monitoring((120, None, 0)), None)
    gap = Gap(5, 5, proof=120)
    assert not gap.settled_by(Horizon(130, 119)) and gap.settled_by(Horizon(130, 120))


def test_a_small_batch_writes_under_its_condition_whatever_its_names_hold():
    """The condition of a small batch written in one statement (the checkpoint moved) goes
    on the DELETE's WHERE and the INSERT's SELECT, never by editing the SQL text: a name
    holding "ON CONFLICT" is left as it is."""
    target, columns, keys, action = '"t ON CONFLICT x"', ['"k ON CONFLICT "', '"v"'], ['"k ON CONFLICT "'], \
        'DO UPDATE SET "v" = EXCLUDED."v"'
    parts = pg()._marked_statements(target, columns, keys, action, [{"k": "1"}], [{"k": "2", "v": "a"}],
                                    only_if="EXISTS (SELECT FROM pdr_moved)")
    (_, delete, _), (_, insert, parameter) = parts
    assert delete.endswith('pdr_t."k ON CONFLICT " = pdr_g."k ON CONFLICT " AND EXISTS (SELECT FROM pdr_moved)')
    assert insert == ('INSERT INTO "t ON CONFLICT x" ("k ON CONFLICT ", "v") SELECT "k ON CONFLICT ", "v" FROM '
                      'json_populate_recordset(NULL::"t ON CONFLICT x", %s) WHERE EXISTS (SELECT FROM pdr_moved) '
                      'ON CONFLICT ("k ON CONFLICT ") DO UPDATE SET "v" = EXCLUDED."v"')
    assert parameter == '[{"k": "2", "v": "a"}]'
    plain = pg()._marked_statements(target, columns, keys, action, [], [{"k": "2", "v": "a"}])
    assert " WHERE " not in plain[0][1]
