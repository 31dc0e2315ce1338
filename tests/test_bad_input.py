"""Bad input: clear errors, nothing half-installed; hostile identifiers replicate."""
import pytest
import sqlalchemy as sa
from django.core.exceptions import ValidationError
from django.core.management import call_command

from django_pdr import capture
from django_pdr.errors import CaptureError
from django_pdr.models import Database, Reflection, SourceTable
from tests.targets import KINDS, PAIRS, rows, server_params, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

QUOTE = {"postgresql": '"', "mysql": "`", "sqlite": '"', "firebird": '"'}


def pdr_tables(target):
    with target.engine.connect() as conn:
        return [t for t in sa.inspect(conn).get_table_names() if t.startswith("pdr_")]


def pdr_triggers(target):
    query = {
        "postgresql": "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal",
        "mysql": "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'trigger'",
        "firebird": "SELECT TRIM(RDB$TRIGGER_NAME) FROM RDB$TRIGGERS WHERE COALESCE(RDB$SYSTEM_FLAG, 0) = 0",
    }[target.kind]
    with target.engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(query)]


@pytest.mark.parametrize("kind", KINDS)
def test_table_without_primary_key_is_refused(make_target, kind):
    target = make_target(kind)
    target.execute("CREATE TABLE nokey (a int, b varchar(10))")
    st = SourceTable(database=target.model(), table="nokey")
    with pytest.raises(ValidationError) as info:
        st.full_clean()
    assert "has no primary key" in str(info.value) and "nokey" in str(info.value)
    with pytest.raises(Exception):
        capture.install(st)
    assert pdr_tables(target) == [] and pdr_triggers(target) == []


@pytest.mark.parametrize("kind", KINDS)
def test_missing_table_names_it(make_target, kind):
    target = make_target(kind)
    st = SourceTable(database=target.model(), table="no_such_table")
    with pytest.raises(ValidationError) as info:
        st.full_clean()
    assert "'no_such_table' does not exist" in str(info.value)
    assert "check the schema and table name" in str(info.value)


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "firebird"])
def test_unreachable_or_wrong_password_never_leaks_the_password(make_target, kind):
    target = make_target(kind)  # ensures the server is up, so only our settings are wrong
    params = server_params(kind)
    wrong_password = Database.objects.create(
        name="wrong-password", kind=kind, host=params["host"], port=params["port"], username=params["username"],
        password="s3cret-Pa55word", database=target.name)
    wrong_port = Database.objects.create(
        name="wrong-port", kind=kind, host="127.0.0.1", port=1, username="u", password="s3cret-Pa55word",
        database="x")
    for database in (wrong_password, wrong_port):
        st = SourceTable(database=database, table="t")
        with pytest.raises(ValidationError) as info:
            st.full_clean()
        message = str(info.value)
        assert message.count("Cannot connect to") == 1 and database.name in message
        assert "check host, port, database name, user and password" in message
        assert "s3cret-Pa55word" not in message


def test_missing_sqlite_file(tmp_path, make_target):
    database = Database.objects.create(name="nofile", kind="sqlite", database=str(tmp_path / "no" / "x.db"))
    st = SourceTable(database=database, table="t")
    with pytest.raises(ValidationError) as info:
        st.full_clean()
    assert "Cannot connect to nofile" in str(info.value) and "file exists" in str(info.value)


def test_failed_install_leaves_nothing(make_target, monkeypatch):
    """A trigger the engine refuses: the event table created just before is removed again."""
    target = make_target("mysql")
    target.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    st = SourceTable(database=target.model(), table="t")
    st.full_clean()
    st.save()
    real_plan = capture.plan

    def broken_plan(conn, source_table):
        result = real_plan(conn, source_table)
        result.create_triggers[-1] = result.create_triggers[-1].replace("FOR EACH ROW", "FOR EACH ROW BOGUS")
        return result

    monkeypatch.setattr(capture, "plan", broken_plan)
    with pytest.raises(CaptureError) as info:
        capture.install(st)
    assert "Nothing was left installed" in str(info.value)
    assert pdr_tables(target) == [] and pdr_triggers(target) == []
    st.refresh_from_db()
    assert st.installed_fingerprint == ""


def test_install_is_idempotent_and_uninstall_removes_everything(make_target):
    for kind in KINDS:
        target = make_target(kind)
        target.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        st = SourceTable(database=target.model(), table="t")
        st.full_clean()
        st.save()
        assert capture.status(st) == capture.MISSING
        capture.install(st)
        capture.install(st)
        assert capture.status(st) == capture.INSTALLED
        # PostgreSQL captures TRUNCATE too, Firebird's one trigger captures the three
        # operations; the registry (pdr_capture) beside the event table
        assert len(pdr_triggers(target)) == {"postgresql": 4, "firebird": 1}.get(kind, 3)
        assert sorted(pdr_tables(target)) == sorted([st.event_table, "pdr_capture"])
        capture.uninstall(st)
        assert pdr_triggers(target) == [] and pdr_tables(target) == []
        assert capture.status(st) == capture.MISSING
        st.delete()


TABLE = 'Weird "Tab\'le"; select'
COLUMNS = ["Straße", "order", "Mixed Case", "semi;colon", "pct%:val"]


@pytest.mark.parametrize("source_kind,dest_kind", PAIRS)
def test_hostile_identifiers_replicate(make_target, source_kind, dest_kind):
    source, dest = make_target(source_kind), make_target(dest_kind)
    with source.engine.begin() as conn:
        table = sa.Table(TABLE, sa.MetaData(),
                         sa.Column("Straße", sa.Integer, primary_key=True, autoincrement=False),
                         sa.Column("order", sa.String(20), primary_key=True),
                         sa.Column("Mixed Case", sa.String(50)), sa.Column("semi;colon", sa.Integer),
                         sa.Column("pct%:val", sa.String(20)))
        table.create(conn)
        conn.execute(table.insert(), [{"Straße": 1, "order": "a", "Mixed Case": "x", "semi;colon": 1,
                                       "pct%:val": "100%"}])
    st = watch(source.model("src"), TABLE)
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table=TABLE)
    call_command("pdr-reflect", verbosity=0)
    with source.engine.begin() as conn:
        conn.execute(table.insert(), [{"Straße": i, "order": "b", "Mixed Case": "ü", "semi;colon": None,
                                       "pct%:val": "%(x)s :y"} for i in range(2, 6)])
        conn.execute(table.update().where(table.c["Straße"] == 1).values({"order": "z"}))
        conn.execute(table.delete().where(table.c["Straße"] == 3))
    call_command("pdr-reflect", verbosity=0)
    key = ["Straße", "order"]
    assert rows(dest.engine, TABLE, key) == rows(source.engine, TABLE, key)
    assert len(rows(dest.engine, TABLE, key)) == 4
