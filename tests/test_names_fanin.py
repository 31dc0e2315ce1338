"""Nothing silently lost: names that break only at run time, columns left behind, fan-in
into a missing table (live).  Each test failed before its fix."""
import re

import pytest
import sqlalchemy as sa

from django_pdr import worker
from django_pdr.errors import ConfigurationError
from django_pdr.models import Reflection
from django_pdr.admin.preview import preview
from django_pdr.validation import validate
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]


def table_names(target):
    with target.engine.connect() as conn:
        return sorted(sa.inspect(conn).get_table_names())


def raw_rows(target, table):
    """Every row of ``table`` by the engine's own SQL (SQLAlchemy's reflection of MariaDB
    misreads names with a backtick), ordered by the first column."""
    with target.engine.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(table)
        return [dict(r) for r in conn.exec_driver_sql(f"SELECT * FROM {quoted} ORDER BY 1").mappings()]


def failure(result, reflection):
    """The error message of ``reflection`` in a round's result (it must have failed)."""
    messages = [message for failed, message in result.failed if failed.pk == reflection.pk]
    assert messages, f"{reflection} did not fail: {result}"
    reflection.refresh_from_db()
    assert reflection.status == "error"
    return messages[0]


# -- names: a MariaDB column named with a backtick ------------------------------------
def test_backtick_column_mariadb_source(make_target):
    """SQLAlchemy reads `a``b` back as "a``b": the pass failed on every try."""
    source, dest = make_target("mysql"), make_target("postgresql")
    source.execute("CREATE TABLE tick (`i``d` int PRIMARY KEY, `a``b` varchar(20), plain int)",
                   "INSERT INTO tick VALUES (1, 'one', 10), (2, 'two', 20)")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "tick"),
                                           destination=dest.model("dst"), destination_table="tick")
    assert not worker.run_round().failed
    source.execute("UPDATE tick SET `a``b` = 'uno' WHERE `i``d` = 1",
                   "INSERT INTO tick VALUES (3, 'three', 30)", "DELETE FROM tick WHERE `i``d` = 2")
    assert not worker.run_round().failed
    reflection.refresh_from_db()
    assert reflection.status == "running" and not reflection.last_error
    expected = raw_rows(source, "tick")
    assert expected == [{"i`d": 1, "a`b": "uno", "plain": 10}, {"i`d": 3, "a`b": "three", "plain": 30}]
    assert raw_rows(dest, "tick") == expected


def test_backtick_column_mariadb_destination(make_target):
    """The table was created with the right names, then every value of "a`b" landed as NULL
    while the reflection said "running"."""
    source, dest = make_target("postgresql"), make_target("mysql")
    source.execute('CREATE TABLE tick ("i`d" int PRIMARY KEY, "a`b" text, plain int)',
                   "INSERT INTO tick VALUES (1, 'one', 10), (2, 'two', 20)")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "tick"),
                                           destination=dest.model("dst"), destination_table="tick")
    assert not worker.run_round().failed
    source.execute('UPDATE tick SET "a`b" = \'uno\' WHERE "i`d" = 1',
                   "INSERT INTO tick VALUES (3, 'three', 30)")
    assert not worker.run_round().failed
    reflection.refresh_from_db()
    assert reflection.status == "running" and not reflection.last_error
    expected = raw_rows(source, "tick")
    assert [r["a`b"] for r in expected] == ["uno", "two", "three"]
    assert raw_rows(dest, "tick") == expected


# -- names: destination names the engine cannot hold ---------------------------------
LONG_PG = "é" * 40  # 40 characters, 80 bytes: PostgreSQL would keep the first 63 bytes


def test_destination_name_too_long_for_postgresql(make_target):
    source, dest = make_target("sqlite"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 2)")
    st, dst = watch(source.model("src"), "t"), dest.model("dst")
    with pytest.raises(ConfigurationError) as info:
        validate(Reflection(source=st, destination=dst, destination_table=LONG_PG))
    message = str(info.value)
    assert LONG_PG in message and "63 bytes" in message and "80" in message
    mapping = '{"columns": {"id": "id", "%s": "v"}}' % LONG_PG
    with pytest.raises(ConfigurationError, match="63 bytes"):
        validate(Reflection(source=st, destination=dst, destination_table="t", mapping=mapping))
    # saved without validation (ORM): the worker refuses before creating anything
    reflection = Reflection.objects.create(source=st, destination=dst, destination_table=LONG_PG)
    with pytest.raises(ConfigurationError, match="63 bytes"):
        preview(reflection)
    assert failure(worker.run_round(), reflection) == message
    assert table_names(dest) == []


def test_destination_names_mariadb_cannot_hold(make_target):
    source, dest = make_target("postgresql"), make_target("mysql")
    source.execute('CREATE TABLE t (id int PRIMARY KEY, "note " text, "😀" int)',
                   "INSERT INTO t VALUES (1, 'x', 2)")
    st, dst = watch(source.model("src"), "t"), dest.model("dst")
    # a mirror creates the source's columns: neither fits MariaDB
    with pytest.raises(ConfigurationError) as info:
        validate(Reflection(source=st, destination=dst, destination_table="t"))
    message = str(info.value)
    assert "'note '" in message and "end with a space" in message
    assert "'😀'" in message and "outside the Basic Multilingual Plane" in message
    long_table = "t" * 65
    with pytest.raises(ConfigurationError, match=re.escape(f"{long_table!r}") + ".*at most 64 characters"):
        validate(Reflection(source=st, destination=dst, destination_table=long_table,
                            mapping='{"columns": {"id": "id"}}'))
    renamed = '{"columns": {"id": "id", "note": "note ", "smile": "😀"}}'
    validate(Reflection(source=st, destination=dst, destination_table="t", mapping=renamed))  # fits
    reflection = Reflection.objects.create(source=st, destination=dst, destination_table="t")
    assert failure(worker.run_round(), reflection) == message
    assert table_names(dest) == []


def test_destination_name_refused_by_the_admin_form(make_target, admin_client):
    from django.urls import reverse

    source, dest = make_target("sqlite"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    st, dst = watch(source.model("src"), "t"), dest.model("dst")
    form = {"source": st.pk, "destination": dst.pk, "destination_pick": "", "destination_schema": "",
            "destination_table": LONG_PG, "active": "on", "mapping": "", "delete_policy": "delete",
            "batch_size": "", "dead_letters-TOTAL_FORMS": "0", "dead_letters-INITIAL_FORMS": "0",
            "dead_letters-MIN_NUM_FORMS": "0", "dead_letters-MAX_NUM_FORMS": "1000"}
    response = admin_client.post(reverse("admin:django_pdr_reflection_add"), form)
    assert response.status_code == 200
    assert "63 bytes" in response.context["adminform"].form.errors["destination_table"][0]
    assert not Reflection.objects.exists()


# -- a column not replicated is an error ---------------------------------------------
def test_column_missing_in_destination_is_an_error(make_target):
    """A mirror into an existing table without one of the source's columns: that column
    was skipped with a log warning while the reflection said "running"."""
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(8,2))",
                   "INSERT INTO items VALUES (1, 'a', 1.5)")
    dest.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "items"),
                                           destination=dest.model("dst"), destination_table="items")
    message = failure(worker.run_round(), reflection)
    assert "price" in message and "'items'" in message and "not replicated" in message
    assert "pdr-sync-schema" in message and "explicit mapping" in message
    assert rows(dest.engine, "items", ["id"]) == []
    [note] = preview(reflection).notes  # the admin's preview says so too
    assert "price" in note and "stops with an error" in note


# -- fan-in into a missing table -------------------------------------------------------
def fan_in_sources(make_target, customers_ddl, totals_ddl):
    customers, totals, dest = make_target("postgresql"), make_target("mysql"), make_target("postgresql")
    customers.execute(customers_ddl, "INSERT INTO customers VALUES (1, 'Ann'), (2, 'Bob')")
    totals.execute(totals_ddl, "INSERT INTO orders_total VALUES (1, 10.50), (3, 7)")
    dest_db = dest.model("warehouse")
    made = [Reflection.objects.create(source=watch(target.model(f"src-{table}"), table), destination=dest_db,
                                      destination_table="customer_totals")
            for target, table in ((customers, "customers"), (totals, "orders_total"))]
    return dest, made


def test_fan_in_creates_the_missing_table_with_every_column(make_target):
    """The first reflection created the table with its own columns only; the other then
    failed on every pass."""
    dest, made = fan_in_sources(make_target, "CREATE TABLE customers (id int PRIMARY KEY, name text)",
                                "CREATE TABLE orders_total (id int PRIMARY KEY, total decimal(10,2))")
    result = worker.run_round()
    assert not result.failed, result.failed
    for reflection in made:
        reflection.refresh_from_db()
        assert reflection.status == "running"
    got = [(r["id"], r["name"], None if r["total"] is None else float(r["total"]))
           for r in rows(dest.engine, "customer_totals", ["id"])]
    assert got == [(1, "Ann", 10.5), (2, "Bob", None), (3, None, 7.0)]


def test_fan_in_conflicting_column_types_are_refused(make_target):
    dest, made = fan_in_sources(make_target, "CREATE TABLE customers (id int PRIMARY KEY, total text)",
                                "CREATE TABLE orders_total (id int PRIMARY KEY, total decimal(10,2))")
    result = worker.run_round()
    for reflection in made:
        message = failure(result, reflection)
        assert "'total'" in message and "customer_totals" in message
        assert "create the table yourself" in message
    assert table_names(dest) == []
