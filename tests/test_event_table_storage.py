"""Storage parameters of the event tables (autovacuum of a queue table; issue 18, item 7).

Rendered SQL without a server, then live on PostgreSQL: install sets the parameters on a
new event table and on one installed without them, keeps a value set by hand, and a
reinstall changes nothing.  The figures behind the values: docs/performance.md,
"Event-table growth" (bench/growth.py).
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from django_pdr import capture
from django_pdr.dialects import MySQLDialect, PostgreSQLDialect, SQLiteDialect
from django_pdr.dialects.base import Dialect

PG_OPTIONS = {"autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "1000"}


def event_table(schema="public", name="pdr_t_0123456789_ev"):
    return sa.Table(name, sa.MetaData(), sa.Column("pdr_id", sa.BigInteger, primary_key=True), schema=schema)


# -- rendered, no database ------------------------------------------------------------

def test_postgresql_sets_autovacuum_parameters_on_the_event_table():
    pg = PostgreSQLDialect(postgresql.dialect())
    assert pg.event_table_options == PG_OPTIONS
    assert pg.set_event_table_options(event_table(), pg.event_table_options) == [
        "ALTER TABLE public.pdr_t_0123456789_ev SET (autovacuum_vacuum_scale_factor = 0, "
        "autovacuum_vacuum_threshold = 1000)"]
    # identifiers quoted by the preparer; only the options asked for
    odd = event_table('My "Schema"', "pdr_Ev")
    assert pg.set_event_table_options(odd, {"autovacuum_vacuum_threshold": "1000"}) == [
        'ALTER TABLE "My ""Schema"""."pdr_Ev" SET (autovacuum_vacuum_threshold = 1000)']
    assert pg.set_event_table_options(event_table(), {}) == []


@pytest.mark.parametrize("name, value", [("autovacuum_vacuum_threshold", "1000); DROP TABLE x; --"),
                                         ("autovacuum_vacuum_threshold; x", "1"), ("fillfactor", "'90'")])
def test_postgresql_refuses_anything_but_a_word_and_a_number(name, value):
    with pytest.raises(ValueError, match="not a storage parameter"):
        PostgreSQLDialect(postgresql.dialect()).set_event_table_options(event_table(), {name: value})


def test_postgresql_reads_the_parameters_from_pg_class():
    query = PostgreSQLDialect(postgresql.dialect()).event_table_options_query("public", "pdr_t_ev")
    text = str(query.compile(dialect=postgresql.dialect()))
    assert "pg_class" in text and "reloptions" in text and "nspname" in text
    assert query.compile().params == {"schema": "public", "name": "pdr_t_ev"}


@pytest.mark.parametrize("cls, sa_dialect", [(MySQLDialect, mysql.dialect()),
                                             (SQLiteDialect, sqlite.dialect())])
def test_other_engines_set_none(cls, sa_dialect):
    dialect = cls(sa_dialect)
    assert dialect.event_table_options == {}
    assert dialect.event_table_options_query(None, "pdr_t_ev") is None
    assert dialect.set_event_table_options(event_table(None), {}) == []


def test_a_dialect_without_them_refuses_loudly():
    with pytest.raises(NotImplementedError, match="storage parameters"):
        Dialect(sqlite.dialect()).set_event_table_options(event_table(None), {"x": "1"})


def test_parameters_are_not_part_of_the_fingerprint():
    """A release that changes them must not make the capture outdated (the worker would stop)."""
    pg = PostgreSQLDialect(postgresql.dialect())

    def plan(options):
        return capture.CapturePlan(
            dialect=pg, schema="public", source=event_table(name="t"), event=event_table(), registry=None,
            names=None, key_names=["id"], create_event_table="CREATE TABLE e", upgrade_event_table=[],
            create_triggers=["CREATE TRIGGER g"], drop_triggers=[], options=options)

    with_options, without = plan(dict(PG_OPTIONS)), plan({})
    assert with_options.fingerprint == without.fingerprint
    # shown with the install statements (pdr-install --dry-run), after the table, before the triggers
    statements = with_options.statements()
    assert statements[0] == "CREATE TABLE e" and statements[-1] == "CREATE TRIGGER g"
    assert statements[1].startswith("ALTER TABLE public.pdr_t_0123456789_ev SET (autovacuum_vacuum_scale")


# -- live PostgreSQL ---------------------------------------------------------------------

def reloptions(target, event_table_name):
    with target.engine.connect() as conn:
        value = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = :n"),
                             {"n": event_table_name}).scalar_one()
    return dict(option.split("=", 1) for option in value or [])


@pytest.mark.django_db
@pytest.mark.live
def test_install_sets_them_keeps_them_and_mends_them(make_target):
    from django.core.management import call_command

    from django_pdr.models import Reflection, SourceTable
    from tests.targets import rows

    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    st = SourceTable.add(source.model("src"), "t")
    assert reloptions(source, st.event_table) == PG_OPTIONS
    incarnation = st.incarnation

    # installing again changes nothing, forced or not (a forced reinstall keeps them)
    assert st.install() == capture.UNCHANGED
    assert st.install(force=True) == capture.REPLACED
    assert reloptions(source, st.event_table) == PG_OPTIONS
    assert capture.needed(st) is None and st.capture_status == capture.INSTALLED

    # an event table without them (installed by an earlier release, or RESET by hand): the
    # worker goes on (they are not a capture change), pdr-install says so and sets them
    source.execute(f'ALTER TABLE "{st.event_table}" RESET (autovacuum_vacuum_scale_factor, '
                   f'autovacuum_vacuum_threshold)')
    assert capture.needed(st) == ("outdated: event table storage parameters not set "
                                  "(autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold)")
    assert st.capture_status == capture.INSTALLED
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == [{"id": 1, "v": "a"}]
    assert st.install() == capture.REPLACED
    assert reloptions(source, st.event_table) == PG_OPTIONS
    assert st.incarnation == incarnation  # the capture itself was not touched: no resync
    assert st.install() == capture.UNCHANGED

    # a value a DBA chose is kept
    source.execute(f'ALTER TABLE "{st.event_table}" SET (autovacuum_vacuum_threshold = 5000)')
    assert capture.needed(st) is None
    assert st.install() == capture.UNCHANGED
    assert reloptions(source, st.event_table)["autovacuum_vacuum_threshold"] == "5000"

    # events keep flowing and being purged through all of it
    source.execute("INSERT INTO t VALUES (2, 'b')")
    call_command("pdr-reflect", verbosity=0)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 2]
    assert Reflection.objects.get().source.incarnation == incarnation
