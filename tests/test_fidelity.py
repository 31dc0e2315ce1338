"""Values that did not arrive as they left (issue: every value arrives equal, or is set
aside with a reason): explicit regression tests.  Data is written through each engine's
own SQL and read back raw, so that SQL NULL and the JSON value null, or two spellings
of one timestamp, cannot look alike."""
import decimal
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr.models import DeadLetter, Reflection
from tests.targets import PAIRS, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

JSON_DDL = {"postgresql": "jsonb", "mysql": "json", "sqlite": "json",
            "firebird": "BLOB SUB_TYPE TEXT"}  # Firebird has no JSON type: the document's text
#: JSON documents as SQL literals: SQL NULL, the JSON value null, a nested null, a large
#: integer (top level and nested), exact decimals, unicode keys
DOCUMENTS = ["NULL", "'null'", "'{\"a\": null}'", "'12345678901234567890123'",
             "'[1, 2.50, \"x\", {\"ключ\": 98765432109876543210}]'", "'\"text\"'", "'true'"]
SQL_NULL = "SQL NULL"


def json_cells(target, table="t"):
    """{id: SQL_NULL or the parsed document} read raw (PostgreSQL's json text, MariaDB's and
    SQLite's stored value), numbers parsed exactly."""
    column = "j::text" if target.kind == "postgresql" else "j"
    with target.engine.connect() as conn:
        found = conn.exec_driver_sql(f"SELECT id, j IS NULL, {column} FROM {table} ORDER BY id").all()
    out = {}
    for id_, is_null, value in found:
        if is_null:
            out[id_] = SQL_NULL
        elif isinstance(value, (int, float)):  # SQLite: a document that is a number, stored as one
            out[id_] = decimal.Decimal(repr(value))
        else:
            out[id_] = json.loads(value, parse_float=decimal.Decimal, parse_int=decimal.Decimal)
    return out


@pytest.mark.parametrize("source_kind,dest_kind", PAIRS)
def test_sql_null_and_json_null_stay_apart_and_numbers_keep_their_digits(make_target, source_kind, dest_kind):
    source, dest = make_target(source_kind), make_target(dest_kind)
    source.execute(f"CREATE TABLE t (id int PRIMARY KEY, j {JSON_DDL[source_kind]})",
                   *[f"INSERT INTO t VALUES ({i}, {doc})" for i, doc in enumerate(DOCUMENTS)])
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    call_command("pdr-reflect", verbosity=0)  # the initial load
    source.execute(*[f"INSERT INTO t VALUES ({100 + i}, {doc})" for i, doc in enumerate(DOCUMENTS)])
    call_command("pdr-reflect", verbosity=0)  # events
    want, got = json_cells(source), json_cells(dest)
    assert want[0] == want[100] == SQL_NULL and want[1] is None  # the source holds both kinds
    assert got == want


def test_sqlite_values_arrive_in_sqlite_byte_for_byte(make_target):
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id integer PRIMARY KEY, ts datetime, d date, tm time, n numeric(12,2), "
                   "b boolean, f double, j json, u uuid, k text)",
                   "INSERT INTO t VALUES (1, '2024-01-01 10:00:00', '2024-02-29', '10:00', '1.50', 't', 1, "
                   "'{\"b\":1,  \"a\":2}', 'ABCDEF00-0000-0000-0000-000000000001', 'x')",
                   "INSERT INTO t VALUES (2, '2024-01-01T10:00:00.5+02:00', 20240101, 36000, 7, 1, '2.5', "
                   "'12345678901234567890123', x'00ff', NULL)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO t VALUES (3, '2024-01-01 10:00:00', '2024-1-1', '10:00:00.000', '0.10', 0, "
                   "-0.0, 'null', 'abc', 'y')",
                   "UPDATE t SET ts = '1999-12-31 23:59:59.999999' WHERE id = 1")
    call_command("pdr-reflect", verbosity=0)

    def stored(target):
        columns = ["id", "ts", "d", "tm", "n", "b", "f", "j", "u", "k"]
        select = ", ".join(f"{c}, typeof({c})" for c in columns)
        with target.engine.connect() as conn:
            return conn.exec_driver_sql(f"SELECT {select} FROM t ORDER BY id").all()

    assert stored(dest) == stored(source)


def test_nan_into_sqlite_is_a_dead_letter_not_null(make_target):
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, f double precision)",
                   "INSERT INTO t VALUES (1, 'NaN'), (2, 1.5), (3, 'Infinity')")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    with dest.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id, f FROM t ORDER BY id").all() == [(2, 1.5), (3, float("inf"))]
    letter = DeadLetter.objects.get(reflection=reflection)
    assert letter.key == [1] and "'f'" in letter.error and "NaN" in letter.error


def test_counters_count_what_landed_and_the_state_shows_dead_letters(make_target):
    source, dest = make_target("postgresql"), make_target("mysql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)",
                   "INSERT INTO t SELECT g, CASE WHEN mod(g, 10) = 0 THEN g ELSE -g END FROM generate_series(1, 278) g")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v >= 0))")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    with pytest.raises(CommandError, match="251 row"):
        call_command("pdr-reflect", verbosity=0)
    reflection.refresh_from_db()
    assert DeadLetter.objects.filter(reflection=reflection).count() == 251
    assert reflection.load_progress["loaded"] == reflection.rows_applied == 27
    assert reflection.status == "error" and "251 row(s) refused by the destination" in reflection.last_error
    from django_pdr.admin.views import progress_text

    assert progress_text(reflection) == "initial load done (27 rows)"
