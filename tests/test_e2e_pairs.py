"""Live end-to-end replication for all 16 source -> destination pairs."""
import pytest
from django.core.management import call_command

from django_pdr.models import Reflection, SourceTable
from tests.targets import PAIRS, rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

CREATE = {
    "postgresql": 'CREATE TABLE "Order Lines" (order_id integer, "line No" varchar(20), '
                  'item text, qty numeric(12,2), note text, PRIMARY KEY (order_id, "line No"))',
    "mysql": "CREATE TABLE `Order Lines` (order_id int, `line No` varchar(20), item text, "
             "qty decimal(12,2), note text, PRIMARY KEY (order_id, `line No`)) CHARACTER SET utf8mb4",
    "sqlite": 'CREATE TABLE "Order Lines" (order_id integer, "line No" varchar(20), item text, '
              'qty numeric(12,2), note text, PRIMARY KEY (order_id, "line No"))',
    "firebird": 'CREATE TABLE "Order Lines" (order_id integer NOT NULL, "line No" varchar(20) NOT NULL, '
                'item BLOB SUB_TYPE TEXT, qty numeric(12,2), note varchar(200), PRIMARY KEY (order_id, "line No"))',
}
Q = {"postgresql": '"', "mysql": "`", "sqlite": '"', "firebird": '"'}
KEY = ["order_id", "line No"]


def sql(kind, text):
    """Write the test's statements with "double quotes"; MySQL gets backticks."""
    return text.replace('"', Q[kind])


def normalized(table_rows):
    return [{k: (str(v) if k == "qty" and v is not None else v) for k, v in r.items()} for r in table_rows]


def assert_mirrored(source, dest, table="Order Lines", dest_table="order_lines"):
    expected = normalized(rows(source.engine, table, KEY))
    actual = normalized(rows(dest.engine, dest_table, KEY))
    assert actual == expected


@pytest.mark.parametrize("source_kind,dest_kind", PAIRS)
def test_replication_pair(make_target, source_kind, dest_kind):
    source = make_target(source_kind)
    dest = make_target(dest_kind)
    other = make_target(dest_kind)
    q = lambda text: sql(source_kind, text)  # noqa: E731
    source.execute(CREATE[source_kind])
    source.execute(q("""INSERT INTO "Order Lines" VALUES (1, 'a', 'Crème brûlée 🍮', 2.50, NULL)"""),
                   q("""INSERT INTO "Order Lines" VALUES (1, 'b', 'Tea', 1.00, 'x')"""))

    st = SourceTable(database=source.model("src"), table="Order Lines")
    st.full_clean()
    assert st.key_columns == KEY
    st.save()
    st.install()
    dest_db, other_db = dest.model("dst"), other.model("other")
    Reflection.objects.create(source=st, destination=dest_db, destination_table="order_lines")
    Reflection.objects.create(source=st, destination=other_db, destination_table="order_lines")

    # initial load of existing rows
    call_command("pdr-reflect", verbosity=0)
    assert_mirrored(source, dest)
    assert len(rows(dest.engine, "order_lines", KEY)) == 2

    # the worker is offline while many changes happen: inserts, updates, deletes,
    # a key change, NULLs; then it catches up
    statements = [q(f"""INSERT INTO "Order Lines" VALUES ({i}, 'x{i}', 'item {i}', {i}.25, NULL)""")
                  for i in range(2, 120)]
    statements += [
        q("""UPDATE "Order Lines" SET qty = qty + 1, note = 'updated' WHERE order_id < 50"""),
        q("""DELETE FROM "Order Lines" WHERE order_id BETWEEN 60 AND 70"""),
        q("""UPDATE "Order Lines" SET "line No" = 'z' WHERE order_id = 1 AND "line No" = 'a'"""),
        q("""UPDATE "Order Lines" SET order_id = 500 WHERE order_id = 80"""),
        q("""UPDATE "Order Lines" SET note = NULL, item = NULL WHERE order_id = 1"""),
        q("""INSERT INTO "Order Lines" VALUES (200, 'tmp', 'gone', 1, NULL)"""),
        q("""DELETE FROM "Order Lines" WHERE order_id = 200"""),
    ]
    source.execute(*statements)
    call_command("pdr-reflect", verbosity=0)
    assert_mirrored(source, dest)
    assert_mirrored(source, other)
    dest_rows = rows(dest.engine, "order_lines", KEY)
    keys = {(r["order_id"], r["line No"]) for r in dest_rows}
    assert (1, "a") not in keys and (1, "z") in keys  # key change: old key removed
    assert (80, "x80") not in keys and (500, "x80") in keys
    assert not any(r["order_id"] == 200 for r in dest_rows)

    # a second round of changes, applied in small batches
    Reflection.objects.update(batch_size=7)
    source.execute(q("""DELETE FROM "Order Lines" WHERE order_id > 100"""),
                   q("""UPDATE "Order Lines" SET item = 'again' WHERE order_id BETWEEN 10 AND 40"""))
    call_command("pdr-reflect", verbosity=0)
    assert_mirrored(source, dest)
    assert_mirrored(source, other)
    for reflection in Reflection.objects.all():
        assert reflection.status == "running" and reflection.last_error == ""


def test_postgresql_values_copy_cannot_spell_take_the_other_bulk_path(make_target):
    """Arrays and intervals (kept verbatim PG→PG) go through execute_values, not COPY."""
    source, dest = make_target("postgresql"), make_target("postgresql")
    # "%%": the statement goes through psycopg2's parameter formatting
    source.execute("CREATE TABLE t (id int PRIMARY KEY, tags text[], wait interval, \"50%%\" text)",
                   "INSERT INTO t VALUES (1, ARRAY['a', 'b,c'], '1 day 02:00:00', 'x'), "
                   "(2, NULL, '-5 minutes', NULL)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO t VALUES (3, ARRAY['tab\there'], '3 seconds', 'y'), (4, '{}', NULL, 'z')",
                   "UPDATE t SET tags = ARRAY['new'] WHERE id = 1")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])


def test_mariadb_key_with_a_collation_other_than_the_default(make_target):
    # the event table's key column may not carry the source key's collation: reading the
    # batch's rows must not compare the two columns (MariaDB: "Illegal mix of collations")
    source, dest = make_target("mysql"), make_target("sqlite")
    source.execute("CREATE TABLE c (code varchar(20) COLLATE utf8mb4_unicode_ci PRIMARY KEY, v int) "
                   "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                   "INSERT INTO c VALUES ('Äpfel', 1), ('b', 2)")
    st = watch(source.model("src"), "c")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="c")
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO c VALUES ('ß', 3)", "UPDATE c SET v = 20 WHERE code = 'b'",
                   "DELETE FROM c WHERE code = 'Äpfel'")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "c", ["v"]) == [{"code": "ß", "v": 3}, {"code": "b", "v": 20}]


@pytest.mark.parametrize("source_kind,dest_kind", [("firebird", "postgresql"), ("postgresql", "firebird")])
def test_firebird_bigint_keys_beyond_32_bits(make_target, source_kind, dest_kind):
    # sqlalchemy-firebird 2.2 binds a reflected BIGINT as an INTEGER parameter: keys above
    # 2**31 - 1 must still be read, written and deleted by key
    source, dest = make_target(source_kind), make_target(dest_kind)
    not_null = " NOT NULL" if source_kind == "firebird" else ""
    big = 2 ** 40
    source.execute(f"CREATE TABLE b (id bigint{not_null} PRIMARY KEY, v varchar(10))",
                   f"INSERT INTO b VALUES ({big}, 'a')", f"INSERT INTO b VALUES ({-big}, 'b')")
    st = watch(source.model("src"), "b")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="b")
    call_command("pdr-reflect", verbosity=0)
    source.execute(f"UPDATE b SET v = 'c' WHERE id = {big}", f"DELETE FROM b WHERE id = {-big}",
                   f"INSERT INTO b VALUES ({big + 1}, 'd')", f"UPDATE b SET id = {2 ** 62} WHERE id = {big + 1}")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "b", ["id"]) == rows(source.engine, "b", ["id"]) == [
        {"id": big, "v": "c"}, {"id": 2 ** 62, "v": "d"}]


def test_firebird_destination_sets_aside_only_the_refused_row(make_target):
    # rows reach Firebird as multi-row MERGEs: a row the destination refuses is found by
    # halving in savepoints and dead-lettered; the others land
    from django_pdr.models import DeadLetter

    source, dest = make_target("postgresql"), make_target("firebird")
    source.execute("CREATE TABLE r (id int PRIMARY KEY, v varchar(10))",
                   "INSERT INTO r SELECT i, 'v' || i FROM generate_series(1, 300) AS i")
    st = watch(source.model("src"), "r")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="r")
    call_command("pdr-reflect", verbosity=0)
    assert len(rows(dest.engine, "r", ["id"])) == 300
    dest.execute("ALTER TABLE r ADD CONSTRAINT no_bad CHECK (v <> 'bad')")
    source.execute("UPDATE r SET v = 'w' || id", "UPDATE r SET v = 'bad' WHERE id = 123",
                   "INSERT INTO r SELECT i, 'n' || i FROM generate_series(301, 400) AS i")
    with pytest.raises(Exception, match="dead letter"):
        call_command("pdr-reflect", verbosity=0)
    [letter] = DeadLetter.objects.filter(reflection=reflection)
    assert letter.key == [123] and ("no_bad" in letter.error.lower() or "check" in letter.error.lower())
    got = {r["id"]: r["v"] for r in rows(dest.engine, "r", ["id"])}
    assert len(got) == 400 and got[123] == "v123"  # the refused row keeps its last value
    assert all(v == ("w" if i <= 300 else "n") + str(i) for i, v in got.items() if i != 123)
