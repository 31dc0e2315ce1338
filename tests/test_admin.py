"""The admin through Django's test client: every form, action and view, good and bad input.

Bad input must give a readable message on the page (or a redirect with a
message), never a 500, and the stored password must never appear in any page.
"""
import json
import re

import pytest
import sqlalchemy as sa
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from django_pdr import capture
from django_pdr.dialects import get_dialect
from tests.targets import watch
from django_pdr.models import Database, DeadLetter, Reflection, Sample, SourceTable

pytestmark = pytest.mark.django_db

SECRET = "pw-Zq7-never-shown"
ITEMS = "CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric(10,2))"


def url(name, *args, **query):
    address = reverse(f"admin:django_pdr_{name}", args=args)
    if query:
        address += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return address


def page(response):
    """The page's text; checks it is no server error and shows no credential."""
    assert response.status_code < 500
    text = response.content.decode()
    assert SECRET not in text
    return text


def shown_messages(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def source(make_target):
    target = make_target("sqlite")
    target.execute(ITEMS, "CREATE TABLE no_key (a integer, b text)",
                   "INSERT INTO items VALUES (1, 'tea', 1.50)", "INSERT INTO items VALUES (2, 'cake', 3.25)",
                   "INSERT INTO items VALUES (3, NULL, NULL)")
    target.db = target.model("src")
    return target


@pytest.fixture
def dest(make_target):
    target = make_target("sqlite")
    target.db = target.model("dst")
    return target


@pytest.fixture
def unreachable():
    return Database.objects.create(name="down", kind="postgresql", host="127.0.0.1", port=1,
                                   database="nothing", username="someone", password=SECRET)


@pytest.fixture
def items(source):
    st = watch(source.db, "items")
    return st


@pytest.fixture
def reflection(items, dest):
    return Reflection.objects.create(source=items, destination=dest.db, destination_table="items_copy")


def tables_of(target):
    return set(sa.inspect(target.engine).get_table_names())


# -- Database ------------------------------------------------------------------
def test_database_add_sqlite_drops_server_fields(admin_client, tmp_path):
    path = str(tmp_path / "new.sqlite3")
    response = admin_client.post(url("database_add"), {
        "name": "file", "kind": "sqlite", "database": path, "host": "ignored", "port": "5432",
        "username": "nobody", "password": SECRET, "options": "{}"})
    assert response.status_code == 302, page(response)
    db = Database.objects.get(name="file")
    assert (db.database, db.host, db.port, db.username, db.password) == (path, "", None, "", "")


def test_database_form_requires_path_for_sqlite(admin_client):
    response = admin_client.post(url("database_add"), {"name": "f", "kind": "sqlite", "database": "",
                                                       "options": "{}"})
    assert response.status_code == 200
    assert "Give the path of the SQLite database file" in page(response)


def test_database_form_has_kind_script(admin_client):
    text = page(admin_client.get(url("database_add")))
    assert "django_pdr/admin.js" in text and "data-pdr-kind" in text


def test_password_is_write_only(admin_client):
    response = admin_client.post(url("database_add"), {
        "name": "pg", "kind": "postgresql", "host": "127.0.0.1", "port": "1", "database": "app",
        "username": "app", "password": SECRET, "options": "{}"})
    assert response.status_code == 302, page(response)
    db = Database.objects.get(name="pg")
    assert db.password == SECRET
    change = url("database_change", db.pk)
    text = page(admin_client.get(change))
    assert 'name="password"' in text and "A password is stored" in text

    # a blank password keeps the stored one
    form = {"name": "pg", "kind": "postgresql", "host": "127.0.0.1", "port": "2", "database": "app",
            "username": "app", "password": "", "options": "{}"}
    assert admin_client.post(change, form).status_code == 302
    db.refresh_from_db()
    assert (db.port, db.password) == (2, SECRET)
    for address in (url("database_changelist"), url("database_history", db.pk), change):
        page(admin_client.get(address))

    # a new one replaces it; "clear" removes it
    assert admin_client.post(change, {**form, "password": "other-pw"}).status_code == 302
    db.refresh_from_db()
    assert db.password == "other-pw"
    assert admin_client.post(change, {**form, "clear_password": "on"}).status_code == 302
    db.refresh_from_db()
    assert db.password == ""


def test_view_only_user_never_sees_password(client, unreachable):
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_database"))
    client.force_login(user)
    text = page(client.get(url("database_change", unreachable.pk)))
    assert "password" not in text.lower().split("<div id=\"content-main\">")[1]


def test_connection_action_success(admin_client, source):
    response = admin_client.post(url("database_changelist"), {
        "action": "test_connection", "_selected_action": [source.db.pk]}, follow=True)
    assert any(m.startswith("src: Connected") for m in shown_messages(response)), shown_messages(response)
    source.db.refresh_from_db()
    assert source.db.last_check_ok is True and source.db.last_checked_at is not None
    text = page(admin_client.get(url("database_changelist")))
    assert "pdr-ok" in text and "SQLite" in text


def test_connection_button_unreachable(admin_client, unreachable):
    change = url("database_change", unreachable.pk)
    assert "pdr-test-connection" in page(admin_client.get(change))
    response = admin_client.post(url("database_test_connection", unreachable.pk), follow=True)
    assert response.redirect_chain[-1][0] == change
    errors = shown_messages(response)
    assert errors and errors[0].startswith("Cannot connect to down (PostgreSQL nothing at 127.0.0.1:1)")
    assert "check host, port" in page(response)
    unreachable.refresh_from_db()
    assert unreachable.last_check_ok is False and "Cannot connect" in unreachable.last_check_message
    assert "pdr-bad" in page(admin_client.get(url("database_changelist")))


def test_connection_button_is_post_only(admin_client, unreachable):
    assert admin_client.get(url("database_test_connection", unreachable.pk)).status_code == 405


def test_tables_endpoint(admin_client, source, items, unreachable):
    data = admin_client.get(url("database_tables", database=source.db.pk)).json()
    labels = [t["label"] for t in data["tables"]]
    assert labels == ["main.items", "main.no_key"]  # the event table of items is hidden
    assert any(name.startswith("pdr_") for name in tables_of(source))
    assert json.loads(data["tables"][0]["value"]) == ["", "items"]
    error = admin_client.get(url("database_tables", database=unreachable.pk)).json()["error"]
    assert error.startswith("Cannot connect") and SECRET not in error
    assert admin_client.get(url("database_tables", database="x")).status_code == 404


# -- SourceTable ----------------------------------------------------------------
def pick(table, schema=""):
    return json.dumps([schema, table])


def test_source_add_form_lists_live_tables(admin_client, source):
    text = page(admin_client.get(url("sourcetable_add", database=source.db.pk)))
    assert "main.items" in text and "main.no_key" in text
    text = page(admin_client.get(url("sourcetable_add")))
    assert "choose a database first" in text


def test_source_add_installs_capture(admin_client, source):
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": pick("items"),
                                                          "schema": "", "table": ""})
    assert response.status_code == 302, page(response)
    st = SourceTable.objects.get()
    assert (st.table, st.key_columns) == ("items", ["id"])
    assert capture.status(st) == capture.INSTALLED
    text = page(admin_client.get(url("sourcetable_changelist")))
    assert "pdr-status-installed" in text
    text = page(admin_client.get(url("sourcetable_change", st.pk)))
    assert "id" in text and st.event_table in text


def test_source_add_typed_name(admin_client, source):
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": "",
                                                          "schema": "", "table": "items"})
    assert response.status_code == 302, page(response)


def test_source_without_primary_key_is_refused(admin_client, source):
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": pick("no_key"),
                                                          "schema": "", "table": ""})
    assert response.status_code == 200
    assert "has no primary key" in page(response)
    assert not SourceTable.objects.exists()
    assert not any(name.startswith("pdr_") for name in tables_of(source))


def test_source_missing_table(admin_client, source):
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": "",
                                                          "schema": "", "table": "nope"})
    assert response.status_code == 200
    assert "does not exist" in page(response)
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": "",
                                                          "schema": "", "table": ""})
    assert "Choose a table" in page(response)


def test_source_unreachable_database(admin_client, unreachable):
    text = page(admin_client.get(url("sourcetable_add", database=unreachable.pk)))
    assert "Cannot connect to down" in text
    response = admin_client.post(url("sourcetable_add"), {"database": unreachable.pk, "pick": "",
                                                          "schema": "", "table": "items"})
    assert response.status_code == 200
    assert "Cannot connect to down" in page(response)


def test_source_install_failure_leaves_nothing(admin_client, source):
    # a table whose generated trigger names collide with an existing object: the
    # engine refuses, the form says why, and nothing stays installed
    names = get_dialect(source.engine).capture_names("main", "items")
    source.execute(f"CREATE TRIGGER {names.insert_trigger} AFTER INSERT ON no_key BEGIN SELECT 1; END")
    response = admin_client.post(url("sourcetable_add"), {"database": source.db.pk, "pick": pick("items"),
                                                          "schema": "", "table": ""})
    assert response.status_code == 200, response
    assert "Could not install capture" in page(response)
    assert not SourceTable.objects.exists()
    assert names.event_table not in tables_of(source)


def test_source_actions(admin_client, items):
    changelist = url("sourcetable_changelist")
    response = admin_client.post(changelist, {"action": "uninstall", "_selected_action": [items.pk]},
                                 follow=True)
    assert "capture removed" in " ".join(shown_messages(response))
    assert "pdr-status-missing" in page(response)
    response = admin_client.post(changelist, {"action": "install", "_selected_action": [items.pk]},
                                 follow=True)
    assert "capture installed" in " ".join(shown_messages(response))
    assert "pdr-status-installed" in page(response)
    response = admin_client.post(changelist, {"action": "reinstall", "_selected_action": [items.pk]},
                                 follow=True)
    assert "capture reinstalled" in " ".join(shown_messages(response))


def test_source_status_outdated_and_unreachable(admin_client, items):
    SourceTable.objects.filter(pk=items.pk).update(installed_fingerprint="old")
    with sa.create_engine(f"sqlite:///{items.database.database}").begin() as conn:
        conn.exec_driver_sql("UPDATE pdr_capture SET fingerprint = 'old'")  # what the source says counts
    assert "pdr-status-outdated" in page(admin_client.get(url("sourcetable_changelist")))
    Database.objects.filter(pk=items.database_id).update(kind="postgresql", host="127.0.0.1", port=1,
                                                         modified_at=timezone.now())
    text = page(admin_client.get(url("sourcetable_changelist")))
    assert "pdr-status-unreachable" in text
    response = admin_client.post(url("sourcetable_changelist"), {"action": "install",
                                                                 "_selected_action": [items.pk]}, follow=True)
    assert shown_messages(response)[0].startswith("Cannot connect")


def test_source_delete_removes_capture(admin_client, source, items):
    event_table = items.event_table
    assert event_table in tables_of(source)
    response = admin_client.post(url("sourcetable_delete", items.pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert not SourceTable.objects.exists()
    assert event_table not in tables_of(source)


def test_source_bulk_delete_removes_capture(admin_client, source, items):
    other = SourceTable(database=source.db, table="items", schema="main")
    other.full_clean()
    other.save()
    response = admin_client.post(url("sourcetable_changelist"), {
        "action": "delete_selected", "_selected_action": [items.pk, other.pk]})
    assert "Are you sure" in page(response)
    response = admin_client.post(url("sourcetable_changelist"), {
        "action": "delete_selected", "_selected_action": [items.pk, other.pk], "post": "yes"}, follow=True)
    assert page(response) and not SourceTable.objects.exists()
    assert not any(name.startswith("pdr_") for name in tables_of(source))


def test_source_delete_refused_when_used(admin_client, reflection, source):
    items = reflection.source
    response = admin_client.post(url("sourcetable_delete", items.pk), {"post": "yes"})
    assert response.status_code == 200
    assert "protected" in page(response)
    assert SourceTable.objects.filter(pk=items.pk).exists()
    assert items.event_table in tables_of(source)
    response = admin_client.post(url("sourcetable_changelist"), {
        "action": "delete_selected", "_selected_action": [items.pk], "post": "yes"})
    assert "protected" in page(response)
    assert capture.status(items) == capture.INSTALLED


def test_source_delete_refused_when_unreachable(admin_client, items):
    Database.objects.filter(pk=items.database_id).update(kind="postgresql", host="127.0.0.1", port=1,
                                                         database="x", modified_at=timezone.now())
    response = admin_client.post(url("sourcetable_delete", items.pk), {"post": "yes"}, follow=True)
    assert "was not deleted" in shown_messages(response)[0]
    assert SourceTable.objects.filter(pk=items.pk).exists()
    response = admin_client.post(url("sourcetable_changelist"), {
        "action": "delete_selected", "_selected_action": [items.pk], "post": "yes"}, follow=True)
    assert "was not deleted" in " ".join(shown_messages(response))
    assert SourceTable.objects.filter(pk=items.pk).exists()


# -- Reflection -------------------------------------------------------------------
def reflection_form(items, dest, **fields):
    return {"source": items.pk, "destination": dest.db.pk, "destination_pick": "", "destination_schema": "",
            "destination_table": "items_copy", "active": "on", "mapping": "", "delete_policy": "delete",
            "batch_size": "", "dead_letters-TOTAL_FORMS": "0", "dead_letters-INITIAL_FORMS": "0",
            "dead_letters-MIN_NUM_FORMS": "0", "dead_letters-MAX_NUM_FORMS": "1000", **fields}


def test_reflection_add_form_prefills_mirror(admin_client, items, dest):
    text = page(admin_client.get(url("reflection_add", source=items.pk, destination=dest.db.pk)))
    assert "ace" in text.lower() and "mode-json" in text or 'data-mode="json"' in text
    textarea = re.search(r'<textarea[^>]*name="mapping"[^>]*>(.*?)</textarea>', text, re.S).group(1)
    assert json.loads(textarea.replace("&quot;", '"')) == {"columns": {"id": "id", "name": "name",
                                                                      "price": "price"}}


def test_reflection_add_and_run(admin_client, items, dest, source):
    response = admin_client.post(url("reflection_add"), reflection_form(items, dest))
    assert response.status_code == 302, page(response)
    reflection = Reflection.objects.get()
    change = url("reflection_change", reflection.pk)
    text = page(admin_client.get(change))
    assert "new: initial load pending" in text and "Preview" in text
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO items VALUES (4, 'pie', 2.00)")
    text = page(admin_client.get(change))
    assert "pdr-status-running" in text
    assert re.search(r"Pending events:</label>\s*<div class=\"readonly\">1</div>", text), text
    call_command("pdr-reflect", verbosity=0)
    text = page(admin_client.get(url("reflection_changelist")))
    assert "replicating" in text
    text = page(admin_client.get(change))
    assert re.search(r"Pending events:</label>\s*<div class=\"readonly\">0</div>", text)
    assert re.search(r"Lag:</label>\s*<div class=\"readonly\">0 s</div>", text)
    with dest.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM items_copy").scalar() == 4


def test_reflection_pick_existing_destination(admin_client, items, dest):
    dest.execute("CREATE TABLE existing (id integer PRIMARY KEY, name text, price numeric)")
    text = page(admin_client.get(url("reflection_add", destination=dest.db.pk)))
    assert "main.existing" in text
    response = admin_client.post(url("reflection_add"), reflection_form(
        items, dest, destination_pick=pick("existing"), destination_table=""))
    assert response.status_code == 302, page(response)
    assert Reflection.objects.get().destination_table == "existing"


@pytest.mark.parametrize("mapping,message", [
    ("{not json", "The mapping is not valid JSON"),
    ('{"columns": {"id": "id", "x": "nope"}}', "names source columns that do not exist: nope"),
    ('{"columns": {"name": "name"}}', "must map every source primary-key column by name (missing: id)"),
    ('["id"]', "must be a JSON object"),
])
def test_reflection_invalid_mapping(admin_client, items, dest, mapping, message):
    response = admin_client.post(url("reflection_add"), reflection_form(items, dest, mapping=mapping))
    assert response.status_code == 200
    assert message in page(response).replace("&quot;", '"').replace("&#x27;", "'")
    assert not Reflection.objects.exists()


@pytest.mark.parametrize("fields,message", [
    ({"mapping": '{"columns": {"id": "id", "w": {"expr": "no_such_function(price)", "type": "int"}}}'},
     "The source database rejects the mapping"),
    ({"statement": "INSERT INTO nowhere VALUES (:id)"}, "The destination database rejects the statement"),
    ({"statement": "INSERT INTO audit VALUES (:id, :unknown)"}, "uses parameter(s) :unknown"),
    ({"statement": "DROP TABLE audit"}, "must be one INSERT, UPDATE, DELETE or MERGE statement"),
])
def test_reflection_invalid_sql_is_refused(admin_client, items, dest, fields, message):
    dest.execute("CREATE TABLE audit (id integer PRIMARY KEY, other text)")
    response = admin_client.post(url("reflection_add"), reflection_form(items, dest, **fields))
    assert response.status_code == 200
    assert message in page(response).replace("&quot;", '"').replace("&#x27;", "'")
    assert not Reflection.objects.exists()
    with dest.engine.connect() as conn:  # validation wrote nothing
        assert conn.exec_driver_sql("SELECT count(*) FROM audit").scalar() == 0


def test_reflection_with_valid_statement_is_saved(admin_client, items, dest):
    dest.execute("CREATE TABLE audit (id integer PRIMARY KEY, other text)")
    response = admin_client.post(url("reflection_add"), reflection_form(
        items, dest, destination_table="audit",
        statement="INSERT INTO audit VALUES (:id, :name) ON CONFLICT (id) DO UPDATE SET other = excluded.other"))
    assert response.status_code == 302, page(response)
    with dest.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit").scalar() == 0


def test_reflection_mapping_unknown_destination_column(admin_client, items, dest):
    dest.execute("CREATE TABLE existing (id integer PRIMARY KEY, name text)")
    response = admin_client.post(url("reflection_add"),
                                 reflection_form(items, dest, destination_table="existing"))
    assert response.status_code == 200
    assert "has no column(s) price" in page(response)


def test_reflection_into_itself_refused(admin_client, items, source):
    response = admin_client.post(url("reflection_add"), {
        **reflection_form(items, source), "destination": source.db.pk, "destination_table": "items"})
    assert "cannot be the source table itself" in page(response)


def test_reflection_unreachable_destination(admin_client, items, dest, unreachable):
    response = admin_client.post(url("reflection_add"), {
        **reflection_form(items, dest), "destination": unreachable.pk})
    assert response.status_code == 200
    assert "Cannot connect to down" in page(response)


def test_preview_writes_nothing(admin_client, reflection, dest):
    reflection.mapping = json.dumps({"columns": {"id": "id", "label": "name", "price": "price"}})
    reflection.save()
    text = page(admin_client.get(url("reflection_preview", reflection.pk, n=2)))
    assert "tea" in text and "cake" in text and "label" in text
    assert "does not exist yet" in text
    assert "items_copy" not in tables_of(dest)
    text = page(admin_client.get(url("reflection_preview", reflection.pk)))
    assert "pdr-null" in text  # row 3: NULLs shown as NULL


def test_preview_bad_mapping_and_unreachable(admin_client, reflection):
    Reflection.objects.filter(pk=reflection.pk).update(mapping='{"columns": {"id": "id", "z": "zz"}}')
    text = page(admin_client.get(url("reflection_preview", reflection.pk)))
    assert "pdr-preview-error" in text and "do not exist: zz" in text
    Database.objects.filter(pk=reflection.destination_id).update(
        kind="postgresql", host="127.0.0.1", port=1, database="x", password=SECRET,
        modified_at=timezone.now())
    Reflection.objects.filter(pk=reflection.pk).update(mapping="")
    text = page(admin_client.get(url("reflection_preview", reflection.pk)))
    assert "Cannot connect to dst" in text
    page(admin_client.get(url("reflection_change", reflection.pk)))
    page(admin_client.get(url("reflection_changelist")))
    page(admin_client.get(url("reflection_dashboard")))


def test_resync_action_and_button(admin_client, reflection):
    response = admin_client.post(url("reflection_resync", reflection.pk), follow=True)
    assert "requested" in shown_messages(response)[0]
    reflection.refresh_from_db()
    assert reflection.resync_requested
    assert "resync requested" in page(response)
    Reflection.objects.update(resync_requested=False)
    response = admin_client.post(url("reflection_changelist"), {
        "action": "resync", "_selected_action": [reflection.pk]}, follow=True)
    assert "Resync requested for 1" in shown_messages(response)[0]
    reflection.refresh_from_db()
    assert reflection.resync_requested
    assert admin_client.get(url("reflection_resync", reflection.pk)).status_code == 405


def test_dead_letters_inline_and_retry(admin_client, reflection):
    DeadLetter.objects.create(reflection=reflection, key=["7"], key_hash="h", error="value too long")
    change = url("reflection_change", reflection.pk)
    text = page(admin_client.get(change))
    assert "value too long" in text and "Retry dead-lettered rows" in text
    response = admin_client.post(url("reflection_retry", reflection.pk), follow=True)
    assert "1 dead-lettered row(s)" in shown_messages(response)[0]
    assert DeadLetter.objects.get().retry_requested
    DeadLetter.objects.update(retry_requested=False)
    admin_client.post(url("reflection_changelist"), {"action": "retry_dead_letters",
                                                     "_selected_action": [reflection.pk]})
    assert DeadLetter.objects.get().retry_requested
    DeadLetter.objects.update(retry_requested=False)
    admin_client.post(url("deadletter_changelist"), {"action": "retry",
                                                     "_selected_action": [DeadLetter.objects.get().pk]})
    assert DeadLetter.objects.get().retry_requested


def test_dashboard(admin_client, reflection):
    assert url("reflection_dashboard") in page(admin_client.get(url("reflection_changelist")))
    text = page(admin_client.get(url("reflection_dashboard")))
    assert "pdr-dashboard" in text and "<svg" in text and "no samples in this period" in text
    now = timezone.now()
    for minutes, lag, events in [(50, 4.0, 0), (40, 2.5, 120), (20, 0.0, 300), (1, 0.0, 30)]:
        Sample.objects.create(reflection=reflection, at=now - timezone.timedelta(minutes=minutes),
                              pending_events=int(lag), lag_seconds=lag, events=events, rows=events)
    text = page(admin_client.get(url("reflection_dashboard")))
    assert text.count("<polyline") == 2 and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "<script src=\"http" not in text
    for window in ("24h", "7d", "bogus"):
        assert "<svg" in page(admin_client.get(url("reflection_dashboard", window=window)))


def test_mapping_read_only_without_change_permission(client, reflection):
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_reflection"))
    client.force_login(user)
    text = page(client.get(url("reflection_change", reflection.pk)))
    assert 'name="mapping"' not in text and "Initial load / resync" not in text
    assert client.post(url("reflection_resync", reflection.pk)).status_code == 403
    assert client.get(url("reflection_preview", reflection.pk)).status_code == 200
    # add permission without change permission: the mapping is not editable either
    user.user_permissions.add(Permission.objects.get(codename="add_reflection"))
    client.force_login(User.objects.get(pk=user.pk))
    assert 'name="mapping"' not in page(client.get(url("reflection_add")))


@pytest.mark.live
def test_postgresql_source_through_the_admin(admin_client, make_target, dest):
    pg = make_target("postgresql")
    pg.execute("CREATE SCHEMA shop", "CREATE TABLE shop.orders (id integer PRIMARY KEY, total numeric(10,2))",
               "CREATE TABLE public.notes (id integer PRIMARY KEY, body text)",
               "INSERT INTO shop.orders VALUES (1, 9.99)")
    db = pg.model("pg")
    labels = [t["label"] for t in admin_client.get(url("database_tables", database=db.pk)).json()["tables"]]
    assert labels == ["public.notes", "shop.orders"]
    response = admin_client.post(url("sourcetable_add"), {"database": db.pk, "pick": pick("orders", "shop"),
                                                          "schema": "", "table": ""})
    assert response.status_code == 302, page(response)
    st = SourceTable.objects.get()
    assert (st.schema, st.table, st.key_columns) == ("shop", "orders", ["id"])
    assert "pdr-status-installed" in page(admin_client.get(url("sourcetable_changelist")))
    # the event table lives beside the source but is not offered
    assert all(not t["label"].startswith("shop.pdr_")
               for t in admin_client.get(url("database_tables", database=db.pk)).json()["tables"])
    response = admin_client.post(url("reflection_add"), reflection_form(st, dest, destination_table="orders"))
    assert response.status_code == 302, page(response)
    text = page(admin_client.get(url("reflection_preview", Reflection.objects.get().pk)))
    assert "9.99" in text
    response = admin_client.post(url("database_test_connection", db.pk), follow=True)
    assert "Connected (server version" in shown_messages(response)[0]
