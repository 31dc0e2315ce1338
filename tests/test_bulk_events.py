"""Statements that change many rows on a PostgreSQL source write key arrays, and every
destination still ends equal to the source: whatever the batch size, through both read
paths (text rows to PostgreSQL, Python rows to SQLite), and after an upgrade from an
event table without arrays."""
import pytest
from django.core.management import call_command
import sqlalchemy as sa

from django_pdr import worker
from django_pdr.models import Reflection, SourceTable
from django_pdr.engine.runner import pending_events
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]

KEY = ["id", "code"]


def _event_rows(source, st):
    """(row events, [keys per array row]) now in the event table."""
    with source.engine.connect() as conn:
        single = conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}" WHERE pdr_a0 IS NULL').scalar()
        arrays = [r[0] for r in conn.exec_driver_sql(
            f'SELECT cardinality(pdr_a0) FROM "{st.event_table}" WHERE pdr_a0 IS NOT NULL ORDER BY pdr_id')]
    return single, arrays


def _same(source, *dests, key=KEY):
    expected = rows(source.engine, "t", key)
    for dest in dests:
        assert rows(dest.engine, "t", key) == expected


def _one_mirror(make_target, dest_kind, *ddl, both=()):
    """A PostgreSQL table t made by ``ddl`` (after ``both`` on source and destination),
    captured and mirrored to a ``dest_kind`` destination, loaded:
    (source, destination, SourceTable, Reflection)."""
    source, dest = make_target("postgresql"), make_target(dest_kind)
    for target in (source, dest):
        if both:
            target.execute(*both)
    source.execute(*ddl)
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model(), destination_table="t")
    worker.run_round()
    return source, dest, st, reflection


@pytest.fixture
def mirrored(make_target):
    """Table t (two-column key) of a PostgreSQL source, mirrored to PostgreSQL (text rows)
    and SQLite (Python rows: deletes come from the keys read) with batches of 1,500 events
    (reads end inside key arrays), to SQLite with batches of 10 (fewer than the 1,000 keys
    an event row may carry), and to PostgreSQL and MariaDB (row literals) with the default."""
    source = make_target("postgresql")
    source.execute("CREATE TABLE t (id int, code varchar(20), v text, PRIMARY KEY (id, code))")
    st = watch(source.model("src"), "t")
    dests = []
    for kind, batch in (("postgresql", 1500), ("sqlite", 1500), ("sqlite", 10), ("postgresql", None),
                        ("mysql", None)):
        dest = make_target(kind)
        Reflection.objects.create(source=st, destination=dest.model(), destination_table="t", batch_size=batch)
        dests.append(dest)
    worker.run_round()
    return source, st, dests


def test_bulk_insert_update_delete_write_arrays_and_replicate(mirrored):
    source, st, dests = mirrored
    source.execute("INSERT INTO t SELECT g, 'c' || mod(g, 7), 'v' || g FROM generate_series(1, 2500) g")
    assert _event_rows(source, st) == (1000, [1000, 500])  # the first 1,000 keys one per row
    for reflection in Reflection.objects.all():
        assert pending_events(reflection) == 2500
    worker.run_round()
    _same(source, *dests)

    # every row changes, 1,200 of them move to another key: the old keys as row events
    source.execute("UPDATE t SET v = v || '!', id = CASE WHEN id <= 1200 THEN id + 10000 ELSE id END")
    assert _event_rows(source, st) == (1200 + 1000, [1000, 500])
    source.execute("INSERT INTO t VALUES (1, 'c1', 'back'), (20000, 'x', 'small')")  # row events
    source.execute("DELETE FROM t WHERE mod(id, 3) = 0")
    worker.run_round()
    _same(source, *dests)
    assert len(rows(dests[0].engine, "t", KEY)) == 2502 - 400 - 433  # multiples of 3 gone

    source.execute("DELETE FROM t")
    assert _event_rows(source, st) == (1000, [669])
    worker.run_round()
    _same(source, *dests)
    assert all(rows(dest.engine, "t", KEY) == [] for dest in dests)


def test_arrays_within_one_transaction_and_beside_row_events(mirrored):
    source, st, dests = mirrored
    with source.engine.begin() as conn:  # several statements, several sizes, one commit
        conn.exec_driver_sql("INSERT INTO t SELECT g, 'a', 'one' FROM generate_series(1, 999) g")
        conn.exec_driver_sql("INSERT INTO t SELECT g, 'b', 'two' FROM generate_series(1, 1000) g")
        conn.exec_driver_sql("INSERT INTO t SELECT g, 'c', 'three' FROM generate_series(1, 1001) g")
        conn.exec_driver_sql("UPDATE t SET v = 'four' WHERE code = 'b'")
        conn.exec_driver_sql("DELETE FROM t WHERE code = 'c' AND id > 500")
    assert _event_rows(source, st) == (999 + 1000 + 1000 + 1000 + 501, [1])
    worker.run_round()
    _same(source, *dests)


def test_an_event_table_without_arrays_is_upgraded_and_read_meanwhile(make_target):
    source, dest, st, reflection = _one_mirror(
        make_target, "postgresql", "CREATE TABLE t (id int, code text, v text, PRIMARY KEY (id, code))")
    # as an earlier version installed it: no array columns, triggers that write none
    source.execute(f'ALTER TABLE "{st.event_table}" DROP COLUMN pdr_a0, DROP COLUMN pdr_a1',
                   f"""CREATE OR REPLACE FUNCTION "{st.event_table[:-3]}_fn"() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                     IF TG_OP = 'DELETE' THEN
                       INSERT INTO "{st.event_table}" (pdr_op, pdr_k0, pdr_k1) SELECT 'D', id, code FROM pdr_old;
                     ELSE
                       INSERT INTO "{st.event_table}" (pdr_op, pdr_k0, pdr_k1) SELECT 'U', id, code FROM pdr_new;
                     END IF;
                     RETURN NULL;
                   END $$""")
    SourceTable.objects.filter(pk=st.pk).update(installed_fingerprint="an earlier version")
    source.execute("UPDATE pdr_capture SET fingerprint = 'an earlier version'")
    source.execute("INSERT INTO t SELECT g, 'old', 'x' FROM generate_series(1, 1500) g")
    assert pending_events(reflection) == 1500  # read without the arrays it does not have yet

    assert worker.run_round().failed  # the worker changes no schema: it says what to run
    call_command("pdr-install", verbosity=0)  # upgrades capture in place
    Reflection.objects.update(next_attempt_at=None)  # (no waiting for the back-off)
    worker.run_round()  # the columns were added, nothing pending is lost
    st.refresh_from_db()
    assert st.installed_fingerprint != "an earlier version"
    source.execute("INSERT INTO t SELECT g, 'new', 'y' FROM generate_series(1, 1500) g")
    assert _event_rows(source, st) == (1000, [500])
    worker.run_round()
    _same(source, dest)
    assert len(rows(dest.engine, "t", KEY)) == 3000


def test_keys_of_every_kind_survive_the_arrays(make_target):
    source, dest, st, _ = _one_mirror(
        make_target, "sqlite", "CREATE TYPE mood AS ENUM ('low', 'high')",
        "CREATE TABLE t (u uuid, ts timestamptz, n numeric(10, 3), m mood, s varchar(8), v int, "
        "PRIMARY KEY (u, ts, n, m, s))")
    source.execute("INSERT INTO t SELECT md5(g::text)::uuid, timestamptz '2026-01-01 00:00:00.123456+00' "
                   "+ g * interval '1 second', g / 1000.0, CASE WHEN mod(g, 2) = 0 THEN 'low' ELSE 'high' END::mood, "
                   "'s' || mod(g, 5), g FROM generate_series(1, 2300) g")
    assert _event_rows(source, st) == (1000, [1000, 300])
    worker.run_round()
    with dest.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*), sum(v) FROM t")).one() == (2300, 2300 * 2301 // 2)
    assert len(rows(dest.engine, "t", ["u", "ts", "n", "m", "s"])) == 2300


def test_a_not_null_domain_key_keeps_one_key_per_event_row(make_target):
    # an array row leaves the key column empty, which a NOT NULL domain refuses: the
    # writer's statement would fail
    # (a destination table of the same types needs the domain too)
    source, dest, st, _ = _one_mirror(make_target, "postgresql", "CREATE TABLE t (id ident PRIMARY KEY, v text)",
                                      both=["CREATE DOMAIN ident AS bigint NOT NULL CHECK (VALUE > 0)"])
    source.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 2500) g")
    with source.engine.connect() as conn:
        assert conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}"').scalar() == 2500
    worker.run_round()
    _same(source, dest, key=["id"])


def test_source_columns_named_like_the_trigger_variables(make_target):
    source, dest, st, _ = _one_mirror(make_target, "postgresql",
                                      'CREATE TABLE t (pdr_txid int, pdr_g text, pdr_rows text, "pdr_k0" int, '
                                      "PRIMARY KEY (pdr_txid, pdr_g))")
    source.execute("INSERT INTO t SELECT g, 'g' || mod(g, 3), 'r', g FROM generate_series(1, 1500) g",
                   "INSERT INTO t VALUES (-1, 'one', 'row', 0)")
    assert _event_rows(source, st) == (1001, [500])
    source.execute("UPDATE t SET pdr_txid = pdr_txid + 5000 WHERE pdr_txid > 1400",  # keys move
                   "DELETE FROM t WHERE pdr_txid < 100")
    worker.run_round()
    _same(source, dest, key=["pdr_txid", "pdr_g"])
