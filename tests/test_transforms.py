"""New structures, fan-in, custom statements and schema drift, live; the examples of
docs/transforms.md are loaded from the page itself."""
import json
import pathlib
import re

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr import capture, worker
from django_pdr.errors import ConfigurationError
from django_pdr.models import Reflection
from django_pdr.validation import validate
from tests.targets import watch as shared_watch
from tests.targets import rows

pytestmark = [pytest.mark.django_db, pytest.mark.live]

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "transforms.md"


def example(name):
    """The code block after ``<!-- example: name -->`` in docs/transforms.md."""
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```(\w+)\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"example {name} missing from {DOC}"
    language, body = match.groups()
    if language == "json":
        json.loads(body)  # the page shows valid JSON
    return body.strip()


def watch(target, table, name=None):
    st = shared_watch(target.model(name or f"src-{target.kind}-{table}"), table)
    return st


def test_rename_compute_constant_filter(make_target):
    source, dest = make_target("postgresql"), make_target("mysql")
    source.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), "
                   "status varchar(20), note text)",
                   "INSERT INTO orders VALUES (1, 'Ann', 10.50, 'paid', 'x'), (2, 'Bob', 3.00, 'cancelled', 'y'), "
                   "(3, 'Cy', 7.25, 'open', NULL)")
    st = watch(source, "orders")
    reflection = Reflection(source=st, destination=dest.model("dst"), destination_table="orders_report",
                            mapping=example("rename"))
    validate(reflection)
    reflection.save()
    worker.run_round()

    def report():
        return [(r["order_id"], r["client"], r["total_cents"], r["shop"])
                for r in rows(dest.engine, "orders_report", ["order_id"])]

    assert report() == [(1, "Ann", 1050, "eu-1"), (3, "Cy", 725, "eu-1")]
    with dest.engine.connect() as conn:
        assert set(sa.inspect(conn).get_columns("orders_report")[i]["name"] for i in range(4)) == \
            {"order_id", "client", "total_cents", "shop"}
    source.execute("UPDATE orders SET status = 'cancelled' WHERE id = 1",  # leaves the filter
                   "UPDATE orders SET status = 'paid' WHERE id = 2",  # enters it
                   "UPDATE orders SET amount = 8, customer = 'Cyd' WHERE id = 3",
                   "INSERT INTO orders VALUES (4, 'Di', 1.01, 'cancelled', NULL), (5, 'Ed', 2, 'paid', NULL)",
                   "DELETE FROM orders WHERE id = 5")
    worker.run_round()
    assert report() == [(2, "Bob", 300, "eu-1"), (3, "Cyd", 800, "eu-1")]


def test_validation_messages(make_target):
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    st = watch(source, "t")
    dst = dest.model("dst")
    cases = [
        ('{"columns": {"id": "id", "w": {"expr": "no_such_fn(v)"}}}', "source database rejects"),
        ('{"columns": {"id": "id"}, "filter": "v > 1; DROP TABLE t"}', "may not contain ';'"),
        ('{"columns": {"id": "id", "w": {"expr": "v -- comment"}}}', "comments"),
        ('{"columns": {"v": "v"}}', "must map every source primary-key column"),
        ('{"columns": {"id": "id", "w": {"expr": "v", "const": 1}}}', "exactly one of"),
        ('{"colums": {}}', "unknown key(s) colums"),
    ]
    for mapping, message in cases:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            validate(Reflection(source=st, destination=dst, destination_table="x", mapping=mapping))
    dest.execute("CREATE TABLE x (id int PRIMARY KEY, v int)")
    for statement, message in [
        ("INSERT INTO x VALUES (:id, :nope)", "uses parameter(s) :nope"),
        ("DROP TABLE x", "must be one INSERT, UPDATE, DELETE"),
        ("INSERT INTO x VALUES (:id, :v); DELETE FROM x", "may not contain ';'"),
        ("INSERT INTO missing_table VALUES (:id, :v)", "destination database rejects"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            validate(Reflection(source=st, destination=dst, destination_table="x", statement=statement))


def test_custom_statement(make_target):
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2))",
                   "INSERT INTO orders VALUES (1, 'Ann', 10), (2, 'Bob', 2.5)")
    dest.execute("CREATE TABLE order_audit (order_id int PRIMARY KEY, customer text, amount_x2 numeric)")
    st = watch(source, "orders")
    reflection = Reflection(source=st, destination=dest.model("dst"), destination_table="order_audit",
                            statement=example("statement"), delete_statement=example("delete-statement"))
    validate(reflection)
    reflection.save()
    worker.run_round()
    source.execute("UPDATE orders SET amount = 4 WHERE id = 2", "INSERT INTO orders VALUES (3, 'Cy', 1)",
                   "DELETE FROM orders WHERE id = 1")
    worker.run_round()
    got = [(r["order_id"], r["customer"], float(r["amount_x2"])) for r in rows(dest.engine, "order_audit",
                                                                               ["order_id"])]
    assert got == [(2, "Bob", 8.0), (3, "Cy", 2.0)]


FANIN_DDL = {
    "customers": ("postgresql", "CREATE TABLE customers (id int PRIMARY KEY, name varchar(40), country char(2))"),
    "balances": ("mysql", "CREATE TABLE balances (customer_no int PRIMARY KEY, balance decimal(10,2))"),
    "loyalty": ("sqlite", "CREATE TABLE loyalty (cust int PRIMARY KEY, points int)"),
}
EXAMPLE = {"customers": "fanin-customers", "balances": "fanin-balances", "loyalty": "fanin-loyalty"}
MERGED = ("CREATE TABLE {name} (customer_id int PRIMARY KEY, name varchar(40), country char(2), "
          "balance numeric(10,2), points int)")


def merged(engine, table):
    return [(r["customer_id"], r["name"], r["country"], None if r["balance"] is None else float(r["balance"]),
             r["points"]) for r in rows(engine, table, ["customer_id"])]


def fan_in(make_target, policies):
    dest = make_target("postgresql")
    dest.execute(MERGED.format(name="customer_360"), MERGED.format(name="fresh"))
    dest_db = dest.model("warehouse")
    sources = {}
    for table, (kind, ddl) in FANIN_DDL.items():
        target = make_target(kind)
        target.execute(ddl)
        sources[table] = (target, watch(target, table, name=f"{table}-db"))
    for table, (_, st) in sources.items():
        Reflection.objects.create(source=st, destination=dest_db, destination_table="customer_360",
                                  mapping=example(EXAMPLE[table]), delete_policy=policies[table])
    return dest, dest_db, {t: target for t, (target, _) in sources.items()}, sources


def fresh_load(dest_db, sources, policies):
    """What a fresh full load of all sources gives: new reflections into an empty table."""
    Reflection.objects.filter(destination_table="fresh").delete()
    created = [Reflection.objects.create(source=st, destination=dest_db, destination_table="fresh",
                                         mapping=example(EXAMPLE[table]), delete_policy=policies[table])
               for table, (_, st) in sources.items()]
    worker.run_round(ids=[r.pk for r in created])


def test_fan_in_three_engines_equals_a_fresh_full_load(make_target):
    policies = {"customers": "delete", "balances": "delete", "loyalty": "delete"}
    dest, dest_db, src, sources = fan_in(make_target, policies)
    src["customers"].execute("INSERT INTO customers VALUES (1, 'Ann', 'FR'), (2, 'Bob', 'DE'), (3, 'Cy', 'EG')")
    src["balances"].execute("INSERT INTO balances VALUES (1, 10.5), (2, 0), (4, 99)")
    src["loyalty"].execute("INSERT INTO loyalty VALUES (1, 100), (3, 7), (5, 1)")
    worker.run_round()
    assert merged(dest.engine, "customer_360") == [
        (1, "Ann", "FR", 10.5, 100), (2, "Bob", "DE", 0.0, None), (3, "Cy", "EG", None, 7),
        (4, None, None, 99.0, None), (5, None, None, None, 1)]
    # updates and deletes in every source
    src["customers"].execute("UPDATE customers SET name = 'Anne' WHERE id = 1", "DELETE FROM customers WHERE id = 2",
                             "DELETE FROM customers WHERE id = 3")
    src["balances"].execute("UPDATE balances SET balance = 11 WHERE customer_no = 1",
                            "DELETE FROM balances WHERE customer_no = 4", "INSERT INTO balances VALUES (6, 6)")
    src["loyalty"].execute("DELETE FROM loyalty WHERE cust = 3", "UPDATE loyalty SET points = 2 WHERE cust = 5")
    worker.run_round()
    live = merged(dest.engine, "customer_360")
    assert live == [(1, "Anne", "FR", 11.0, 100), (2, None, None, 0.0, None), (5, None, None, None, 2),
                    (6, None, None, 6.0, None)]
    fresh_load(dest_db, sources, policies)
    assert merged(dest.engine, "fresh") == live


def test_fan_in_nullify_and_ignore_policies(make_target):
    policies = {"customers": "delete", "balances": "nullify", "loyalty": "ignore"}
    dest, dest_db, src, sources = fan_in(make_target, policies)
    src["customers"].execute("INSERT INTO customers VALUES (1, 'Ann', 'FR'), (2, 'Bob', 'DE')")
    src["balances"].execute("INSERT INTO balances VALUES (1, 10), (2, 20)")
    src["loyalty"].execute("INSERT INTO loyalty VALUES (1, 100), (2, 200)")
    worker.run_round()
    src["balances"].execute("DELETE FROM balances WHERE customer_no = 1")  # nullify: balance cleared
    src["loyalty"].execute("DELETE FROM loyalty WHERE cust = 2")  # ignore: points stay
    src["customers"].execute("DELETE FROM customers WHERE id = 2")  # delete, but balances still has 2
    worker.run_round()
    assert merged(dest.engine, "customer_360") == [(1, "Ann", "FR", None, 100), (2, None, None, 20.0, 200)]
    # compared with a fresh full load, the only difference is the ignored delete
    fresh_load(dest_db, sources, policies)
    assert merged(dest.engine, "fresh") == [(1, "Ann", "FR", None, 100), (2, None, None, 20.0, None)]


#: Firebird: no COLUMN keyword in ALTER TABLE, no unbounded text; DDL takes effect at commit
_ADD_DDL = {"firebird": ("ALTER TABLE items ADD price numeric(8,2)", "ALTER TABLE items DROP name",
                         "varchar(20)")}


@pytest.mark.parametrize("source_kind,dest_kind", [("postgresql", "sqlite"), ("firebird", "postgresql"),
                                                   ("postgresql", "firebird")])
def test_source_column_added_while_replicating_then_removed(make_target, source_kind, dest_kind):
    source, dest = make_target(source_kind), make_target(dest_kind)
    add, drop, text = _ADD_DDL.get(source_kind, ("ALTER TABLE items ADD COLUMN price numeric(8,2)",
                                                 "ALTER TABLE items DROP COLUMN name", "text"))
    source.execute(f"CREATE TABLE items (id int NOT NULL PRIMARY KEY, name {text})")
    source.execute("INSERT INTO items VALUES (1, 'a')")
    st = watch(source, "items")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="items")
    worker.run_round()
    source.execute(add)
    source.execute("INSERT INTO items VALUES (2, 'b', 5)", "UPDATE items SET price = 1.5 WHERE id = 1")
    result = worker.run_round()
    # the new column is not replicated until it is added: an error, never a "running" that drops it
    [(failed, message)] = result.failed
    assert failed.pk == reflection.pk
    where = "'public.items'" if source_kind == "postgresql" else "'items'"
    assert f"Source column(s) price of {where} are not in destination table 'items'" in message
    assert "pdr-sync-schema" in message and "explicit mapping" in message
    reflection.refresh_from_db()
    assert reflection.status == "error" and reflection.last_error == message
    st.refresh_from_db()
    assert capture.status(st) == capture.OUTDATED
    assert rows(dest.engine, "items", ["id"]) == [{"id": 1, "name": "a"}]  # nothing applied without price
    call_command("pdr-sync-schema", verbosity=0)
    st.refresh_from_db()
    assert capture.status(st) == capture.INSTALLED
    worker.run_round()  # the resync requested by pdr-sync-schema fills the new column
    source.execute("INSERT INTO items VALUES (3, 'c', 2.25)")
    worker.run_round()
    got = [(r["id"], r["name"], None if r["price"] is None else float(r["price"]))
           for r in rows(dest.engine, "items", ["id"])]
    assert got == [(1, "a", 1.5), (2, "b", 5.0), (3, "c", 2.25)]

    source.execute(drop)
    with pytest.raises(CommandError) as info:
        call_command("pdr-reflect", verbosity=0)
    assert "Column(s) name were removed from source table" in str(info.value)
    reflection.refresh_from_db()
    assert "name were removed" in reflection.last_error
