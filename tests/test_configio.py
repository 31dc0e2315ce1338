"""``pdr-export`` / ``pdr-import``: round trip, no secret by default, clear errors, all or nothing."""
import io
import json
import os
import stat
import uuid

import pytest
from django.core.management import CommandError, call_command

from django_pdr.configio import export_config, reflection_fields
from django_pdr.models import Database, Reflection, SourceTable

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Zq7-export-secret"
USERNAME = "replicator-user-x"
MAPPING = json.dumps({"columns": {"id": "id", "title": "name"}})


@pytest.fixture
def config():
    """A small configuration, made through the ORM (no live database is needed)."""
    shop = Database.objects.create(name="shop", kind="postgresql", host="db1", port=5432, database="shop",
                                   username=USERNAME, password=PASSWORD,
                                   options={"sslmode": "require", "sslpassword": "key-pass-9"})
    reporting = Database.objects.create(name="reporting", kind="sqlite", database="/srv/rep.sqlite3")
    orders = SourceTable.objects.create(database=shop, schema="sales", table="orders",
                                        key_columns=["id"], installed_fingerprint="abc")
    items = SourceTable.objects.create(database=shop, table="items")
    r1 = Reflection.objects.create(source=orders, destination=reporting, destination_table="orders",
                                   delete_policy="ignore", batch_size=100, status="running",
                                   events_applied=42)
    r2 = Reflection.objects.create(source=items, destination=reporting, destination_schema="main",
                                   destination_table="items copy", mapping=MAPPING, active=False,
                                   **{f: f"-- {f} SQL" for f in ("statement", "delete_statement")
                                      if f in reflection_fields()})
    return shop, reporting, orders, items, r1, r2


def export(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("pdr-export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def import_file(path, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("pdr-import", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def wipe():
    Reflection.objects.all().delete()
    SourceTable.objects.all().delete()
    Database.objects.all().delete()


def snapshot():
    """Every configuration field of every object, by natural key."""
    return {
        "databases": sorted((d.name, d.kind, d.host, d.port, d.database,
                             json.dumps(d.options, sort_keys=True), d.username, d.password)
                            for d in Database.objects.all()),
        "source_tables": sorted((s.database.name, s.schema, s.table) for s in SourceTable.objects.all()),
        "reflections": sorted((str(r.uid), r.source.database.name, r.source.schema, r.source.table,
                               r.destination.name, *[getattr(r, f) for f in reflection_fields()])
                              for r in Reflection.objects.all()),
    }


def test_every_configuration_field_is_exported_and_no_state():
    assert {"destination_schema", "destination_table", "active", "mapping", "delete_policy",
            "batch_size"} <= set(reflection_fields())
    state = {"status", "position", "events_applied", "last_error", "lease_owner", "resync_requested", "uid"}
    assert not state & set(reflection_fields())


def test_export_holds_no_secret_by_default(config):
    text, err = export()
    assert PASSWORD not in text and USERNAME not in text and "key-pass-9" not in text
    data = json.loads(text)
    assert data["includes_secrets"] is False
    shop = next(d for d in data["databases"] if d["name"] == "shop")
    assert "password" not in shop and "username" not in shop
    assert shop["options"] == {"sslmode": "require"}
    assert err == ""
    # state is not configuration
    assert "events_applied" not in text and "installed_fingerprint" not in text and "status" not in text


def test_export_with_secrets_warns_on_stderr_and_protects_the_file(config, tmp_path):
    path = tmp_path / "config.json"
    out, err = export("--include-secrets", "--output", str(path))
    assert out == ""
    assert "Warning" in err and "passwords in clear text" in err
    data = json.loads(path.read_text(encoding="utf-8"))
    shop = next(d for d in data["databases"] if d["name"] == "shop")
    assert shop["password"] == PASSWORD and shop["username"] == USERNAME
    assert shop["options"]["sslpassword"] == "key-pass-9"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_round_trip_with_secrets(config, tmp_path):
    path = tmp_path / "config.json"
    export("--include-secrets", "-o", str(path))
    before = snapshot()
    wipe()
    out, err = import_file(path)
    assert "database(s): 2 created" in out and "reflection(s): 2 created" in out
    assert snapshot() == before
    # a second import changes nothing
    out, _ = import_file(path)
    assert "2 created" not in out and "database(s): 0 created, 0 updated, 2 unchanged" in out
    assert snapshot() == before


def test_round_trip_keeps_the_uid_so_the_destination_checkpoint_is_found(config, tmp_path):
    r1 = config[4]
    path = tmp_path / "config.json"
    export("-o", str(path))
    wipe()
    import_file(path)
    imported = Reflection.objects.get(uid=r1.uid)
    assert imported.destination_table == "orders" and imported.batch_size == 100
    assert imported.status == "new" and imported.events_applied == 0  # state does not travel


def test_import_without_secrets_keeps_stored_credentials(config, tmp_path):
    path = tmp_path / "config.json"
    export("-o", str(path))
    data = json.loads(path.read_text())
    next(d for d in data["databases"] if d["name"] == "shop")["host"] = "db2"
    path.write_text(json.dumps(data))
    out, _ = import_file(path)
    assert "database(s): 0 created, 1 updated, 1 unchanged" in out
    shop = Database.objects.get(name="shop")
    assert shop.host == "db2"
    assert shop.password == PASSWORD and shop.username == USERNAME
    assert shop.options == {"sslmode": "require", "sslpassword": "key-pass-9"}


def test_import_without_secrets_into_an_empty_site_says_what_to_complete(config, tmp_path):
    path = tmp_path / "config.json"
    export("-o", str(path))
    wipe()
    _, err = import_file(path)
    assert "'shop' was created without a password" in err
    assert "'reporting'" not in err  # SQLite needs none
    assert Database.objects.get(name="shop").password == ""


def test_import_updates_by_natural_keys(config, tmp_path):
    shop, reporting, orders, items, r1, r2 = config
    path = tmp_path / "config.json"
    export("-o", str(path))
    data = json.loads(path.read_text())
    entry = next(r for r in data["reflections"] if r["uid"] == str(r1.uid))
    entry.update(destination_table="orders_v2", active=False, delete_policy="nullify")
    data["source_tables"].append({"database": "reporting", "schema": "", "table": "extra"})
    path.write_text(json.dumps(data))
    import_file(path)
    r1.refresh_from_db()
    assert (r1.destination_table, r1.active, r1.delete_policy) == ("orders_v2", False, "nullify")
    assert r1.events_applied == 42 and r1.status == "running"  # state untouched
    assert Reflection.objects.count() == 2 and Database.objects.count() == 2
    assert SourceTable.objects.filter(database=reporting, table="extra").exists()
    orders.refresh_from_db()
    assert orders.installed_fingerprint == "abc"


def test_import_from_stdin_and_dry_run(config, tmp_path, monkeypatch):
    text, _ = export()
    wipe()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out, _ = import_file("-", "--dry-run")
    assert out.startswith("Dry run, rolled back") and "2 created" in out
    assert Database.objects.count() == 0


# -- user mistakes: CommandError with a clear message, nothing changed -------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CommandError, match=r"No such file: .*nope\.json"):
        import_file(tmp_path / "nope.json")


def test_bad_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON.*Nothing was imported"):
        import_file(path)


@pytest.mark.parametrize("content", ["[]", '{"databases": []}', '{"format": "something-else"}'])
def test_not_a_config_file(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(CommandError, match="not a django-pdr configuration"):
        import_file(path)


def test_newer_format_version(tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"format": "django-pdr-config", "format_version": 99}))
    with pytest.raises(CommandError, match="Unsupported format_version 99"):
        import_file(path)


def write_config(tmp_path, **sections):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"format": "django-pdr-config", "format_version": 1, **sections}))
    return path


def test_unknown_database_name_is_refused_and_nothing_is_imported(tmp_path):
    path = write_config(
        tmp_path,
        databases=[{"name": "reporting", "kind": "sqlite", "database": "/srv/r.sqlite3"}],
        source_tables=[{"database": "shop", "schema": "", "table": "orders"}])
    with pytest.raises(CommandError, match=r"source_tables\[0\]: unknown database 'shop'"):
        import_file(path)
    assert Database.objects.count() == 0  # the first section was rolled back too


def test_unknown_destination_and_source(tmp_path):
    Database.objects.create(name="reporting", kind="sqlite", database="/srv/r.sqlite3")
    path = write_config(tmp_path, reflections=[{
        "uid": str(uuid.uuid4()), "source": {"database": "reporting", "schema": "", "table": "t"},
        "destination": "reporting", "destination_table": "t"}])
    with pytest.raises(CommandError,
                       match=r"reflections\[0\]: unknown source table 't' of database 'reporting'"):
        import_file(path)
    SourceTable.objects.create(database=Database.objects.get(), table="t")
    path = write_config(tmp_path, reflections=[{
        "source": {"database": "reporting", "schema": "", "table": "t"},
        "destination": "elsewhere", "destination_table": "t"}])
    with pytest.raises(CommandError, match=r"unknown database 'elsewhere' in 'destination'"):
        import_file(path)


@pytest.mark.parametrize("entry,message", [
    ({"name": "x", "kind": "oracle", "database": "x"}, r"databases\[0\] \('x'\): kind:"),
    ({"name": "x", "kind": "sqlite"}, "path of the SQLite database file"),
    ({"name": "x", "kind": "postgresql", "database": "x", "port": "5432"},
     "'port' must be a non-negative integer or null, not '5432'"),
    ({"name": "x", "kind": "postgresql", "database": "x", "host": 5}, "'host' must be a string, not 5"),
    ({"name": "", "kind": "sqlite"}, "'name' must be a non-empty string"),
    ({"name": "x", "database": "x"}, "'kind' must be a non-empty string"),
    ({"name": "x", "kind": "sqlite", "database": "x", "options": []}, "'options' must be an object"),
])
def test_bad_database_entries(tmp_path, entry, message):
    with pytest.raises(CommandError, match=message):
        import_file(write_config(tmp_path, databases=[entry]))
    assert Database.objects.count() == 0


@pytest.mark.parametrize("change,message", [
    ({"uid": "not-a-uuid"}, "'uid' 'not-a-uuid' is not a UUID"),
    ({"mapping": "{oops"}, "'mapping' is not valid JSON"),
    ({"mapping": "[1]"}, "'mapping' must be a JSON object"),
    ({"delete_policy": "explode"}, "delete_policy"),
    ({"batch_size": "10"}, "'batch_size' must be a non-negative integer or null, not '10'"),
    ({"batch_size": -1}, "'batch_size' must be a non-negative integer or null, not -1"),
    ({"active": "yes"}, "'active' must be true or false, not 'yes'"),
    ({"active": None}, "'active' must not be null"),
    ({"destination_table": "x" * 300}, "destination_table: Ensure this value has at most 255"),
    ({"destination_table": ""}, "'destination_table' must be a non-empty string"),
])
def test_bad_reflection_entries(tmp_path, change, message):
    db = Database.objects.create(name="d", kind="sqlite", database="/srv/d.sqlite3")
    SourceTable.objects.create(database=db, table="t")
    entry = {"uid": str(uuid.uuid4()), "source": {"database": "d", "schema": "", "table": "t"},
             "destination": "d", "destination_table": "t2", **change}
    with pytest.raises(CommandError, match=message):
        import_file(write_config(tmp_path, reflections=[entry]))
    assert Reflection.objects.count() == 0


def test_duplicate_destination_under_another_uid_is_refused(config, tmp_path):
    r1 = config[4]
    data = export_config()
    clone = dict(next(r for r in data["reflections"] if r["uid"] == str(r1.uid)), uid=str(uuid.uuid4()))
    data["reflections"].append(clone)
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError, match=r"reflections\[2\].*already exists"):
        import_file(path)
    assert Reflection.objects.count() == 2


def test_unknown_keys_are_refused(tmp_path):
    path = write_config(tmp_path, databases=[{"name": "x", "kind": "sqlite", "database": "x", "hots": "h"}])
    with pytest.raises(CommandError, match=r"databases\[0\]: unknown key\(s\) 'hots'; known: .*host"):
        import_file(path)


def test_sections_must_be_lists_of_objects(tmp_path):
    with pytest.raises(CommandError, match='"databases" must be a list'):
        import_file(write_config(tmp_path, databases={}))
    with pytest.raises(CommandError, match=r"reflections\[0\] must be an object"):
        import_file(write_config(tmp_path, reflections=[1]))


def test_export_to_an_unwritable_place(config, tmp_path):
    with pytest.raises(CommandError, match="Cannot write"):
        export("-o", str(tmp_path / "no-such-dir" / "x.json"))
