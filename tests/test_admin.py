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

from django_pdr import capture, deadletters
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


def test_mistyped_sqlite_path_fails_the_connection_test_and_creates_nothing(admin_client, tmp_path):
    typo = tmp_path / "shpo.sqlite3"
    response = admin_client.post(url("database_add"), {"name": "typo", "kind": "sqlite", "database": str(typo),
                                                       "options": "{}"})
    assert response.status_code == 302, page(response)
    db = Database.objects.get(name="typo")
    assert db.create_file is False
    response = admin_client.post(url("database_test_connection", db.pk), follow=True)
    errors = [m for m in shown_messages(response) if m.startswith("Cannot connect to typo")]
    assert errors and "Create the file" in errors[0], shown_messages(response)
    assert not typo.exists()

    # creating a new destination file is the explicit, labelled choice
    assert "Create the file if it does not exist" in page(admin_client.get(url("database_change", db.pk)))
    response = admin_client.post(url("database_change", db.pk), {
        "name": "typo", "kind": "sqlite", "database": str(typo), "create_file": "on", "options": "{}"})
    assert response.status_code == 302, page(response)
    db.refresh_from_db()
    assert db.create_file is True
    response = admin_client.post(url("database_test_connection", db.pk), follow=True)
    assert any("Connected" in m for m in shown_messages(response)), shown_messages(response)
    assert typo.exists()


def test_create_file_is_ignored_for_a_server(admin_client):
    response = admin_client.post(url("database_add"), {
        "name": "pg", "kind": "postgresql", "database": "shop", "host": "db1", "create_file": "on",
        "options": "{}"})
    assert response.status_code == 302, page(response)
    assert Database.objects.get(name="pg").create_file is False


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
    assert any(m.startswith("Database src: Connected") for m in shown_messages(response)), \
        shown_messages(response)
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
    assert "Choose a database first" in text


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
    """Deleting a source table a reflection reads says why not and what to do (not Django's
    generic "protected related objects" page), and deletes nothing."""
    items = reflection.source
    reflection_link = url("reflection_change", reflection.pk)
    for response in (admin_client.get(url("sourcetable_delete", items.pk)),
                     admin_client.post(url("sourcetable_delete", items.pk), {"post": "yes"}),
                     admin_client.post(url("sourcetable_changelist"), {
                         "action": "delete_selected", "_selected_action": [items.pk], "post": "yes"})):
        assert response.status_code == 200
        text = page(response)
        assert "protected related objects" not in text
        assert "cannot be deleted" in text and 'id="pdr-delete-protected"' in text
        assert "First delete the reflections listed (or change each to read another source table)" in text
        assert reflection_link in text and "Yes, I’m sure" not in text
    assert SourceTable.objects.filter(pk=items.pk).exists()
    assert items.event_table in tables_of(source)
    assert capture.status(items) == capture.INSTALLED


def test_database_delete_refused_when_used(admin_client, reflection, source, dest):
    """A database still read by a source table, or written by a reflection, cannot be deleted:
    the page says which objects use it and what to do."""
    for database, used_by in ((source.db, url("sourcetable_change", reflection.source_id)),
                              (dest.db, url("reflection_change", reflection.pk))):
        for response in (admin_client.get(url("database_delete", database.pk)),
                         admin_client.post(url("database_changelist"), {
                             "action": "delete_selected", "_selected_action": [database.pk], "post": "yes"})):
            text = page(response)
            assert "protected related objects" not in text
            assert "cannot be deleted" in text and used_by in text
            assert "A database cannot be deleted while source tables are read from it" in text
        assert Database.objects.filter(pk=database.pk).exists()
    # unused, it is deleted as usual
    idle = Database.objects.create(name="idle", kind="sqlite", database="/nonexistent/idle.sqlite3")
    text = page(admin_client.get(url("database_delete", idle.pk)))
    assert "Are you sure" in text and "cannot be deleted" not in text
    admin_client.post(url("database_delete", idle.pk), {"post": "yes"})
    assert not Database.objects.filter(pk=idle.pk).exists()


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
            "batch_size": "", **fields}


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


def dead_letter_rows(text):
    """The rows of the reflection page's dead-letter table."""
    table = re.search(r'<table class="pdr-dead-letters">(.*?)</table>', text, re.S)
    return re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[1:] if table else []


def test_dead_letters_summary_and_retry(admin_client, reflection, items, dest):
    """The reflection page shows a count, the latest few and a link to the filtered list
    (not every dead letter inline); the list has search, filters and the bulk retry."""
    other = Reflection.objects.create(source=items, destination=dest.db, destination_table="other_copy")
    for i in range(12):
        deadletters.record(reflection, (i,), f"value too long for column name (row {i})")
    deadletters.record(other, (99,), "another reflection's rejected row")
    change = url("reflection_change", reflection.pk)
    text = page(admin_client.get(change))
    assert "12 dead-lettered rows." in text and "The latest 5:" in text
    shown = dead_letter_rows(text)
    assert len(shown) == 5 and "(row 11)" in shown[0] and "(row 7)" in shown[4]  # the latest first
    assert "(row 6)" not in text and "another reflection" not in text
    assert 'dead_letters-TOTAL_FORMS' not in text  # no inline of every row
    assert "Retry dead-lettered rows" in text
    listing = url("deadletter_changelist") + f"?reflection__id__exact={reflection.pk}"
    assert f'href="{listing}"' in text

    # the filtered list: this reflection's rows only, searchable, with filters
    response = admin_client.get(listing)
    assert response.status_code == 200  # a lookup the list does not allow redirects to ?e=1
    listed = page(response)
    assert "12 dead-lettered rows" in listed and "another reflection" not in listed
    assert 'id="changelist-search"' in listed and 'id="changelist-filter"' in listed
    assert "By retry requested" in listed and "By reflection" in listed
    found = page(admin_client.get(listing + "&q=row+3"))
    assert "(row 3)" in found and "(row 4)" not in found

    # bulk retry from the list: the rows the worker retries next (deadletters.requested)
    picked = list(DeadLetter.objects.filter(reflection=reflection).order_by("pk")[:3])
    response = admin_client.post(listing, {"action": "retry", "_selected_action": [d.pk for d in picked]},
                                 follow=True)
    assert "3 dead-lettered row(s) will be retried by pdr-reflect." in shown_messages(response)
    assert {d.pk for d in deadletters.requested(reflection)} == {d.pk for d in picked}

    # the reflection's button and action request every row of that reflection (and no other)
    DeadLetter.objects.update(retry_requested=False)
    response = admin_client.post(url("reflection_retry", reflection.pk), follow=True)
    assert "12 dead-lettered row(s)" in shown_messages(response)[0]
    assert len(deadletters.requested(reflection)) == 12 and not deadletters.requested(other)
    DeadLetter.objects.update(retry_requested=False)
    admin_client.post(url("reflection_changelist"), {"action": "retry_dead_letters",
                                                     "_selected_action": [reflection.pk]})
    assert len(deadletters.requested(reflection)) == 12 and not deadletters.requested(other)


def test_dead_letter_key_shown_as_in_the_source(admin_client, reflection):
    deadletters.record(reflection, ("Ab-7",), "rejected")
    text = page(admin_client.get(url("reflection_change", reflection.pk)))
    assert '<td class="pdr-key">Ab-7</td>' in text
    assert "Ab-7" in page(admin_client.get(url("deadletter_changelist")))


def test_dead_letter_page_is_read_only_without_save_buttons(admin_client, reflection):
    letter = deadletters.record(reflection, ("Ab-7",), "rejected")
    text = page(admin_client.get(url("deadletter_change", letter.pk)))
    assert "rejected" in text
    assert 'name="_save"' not in text and 'name="_continue"' not in text and 'name="_addanother"' not in text


def test_no_dead_letters(admin_client, reflection):
    text = page(admin_client.get(url("reflection_change", reflection.pk)))
    assert "None: the destination has accepted every row." in text
    assert "Retry dead-lettered rows" not in text


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


@pytest.mark.live
def test_firebird_source_through_the_admin(admin_client, make_target, dest):
    fb = make_target("firebird")
    fb.execute('CREATE TABLE "Orders" (id integer NOT NULL PRIMARY KEY, total numeric(10,2))',
               "CREATE TABLE notes (id integer NOT NULL PRIMARY KEY, body BLOB SUB_TYPE TEXT)")
    fb.execute("""INSERT INTO "Orders" VALUES (1, 9.99)""")
    fields = fb.fields
    # the form's fields for a Firebird server: host, port, the database file's path, user, password
    response = admin_client.post(url("database_add"), {
        "name": "pos", "kind": "firebird", "database": fields["database"], "host": fields["host"],
        "port": str(fields["port"]), "username": fields["username"], "password": fields["password"],
        "options": "{}"})
    assert response.status_code == 302, page(response)
    db = Database.objects.get(name="pos")
    assert (db.kind, db.database, db.port) == ("firebird", fields["database"], fields["port"])
    assert "Database file path on the server" in page(admin_client.get(url("database_change", db.pk)))
    response = admin_client.post(url("database_test_connection", db.pk), follow=True)
    assert "Connected (server version 3.0" in shown_messages(response)[0]
    labels = [t["label"] for t in admin_client.get(url("database_tables", database=db.pk)).json()["tables"]]
    assert labels == ["Orders", "notes"]  # names as SQLAlchemy gives them: unquoted ones in lower case
    response = admin_client.post(url("sourcetable_add"), {"database": db.pk, "pick": pick("Orders"),
                                                          "schema": "", "table": ""})
    assert response.status_code == 302, page(response)
    st = SourceTable.objects.get()
    assert (st.table, st.key_columns) == ("Orders", ["id"])
    assert "pdr-status-installed" in page(admin_client.get(url("sourcetable_changelist")))
    assert all(not t["label"].startswith("pdr_")
               for t in admin_client.get(url("database_tables", database=db.pk)).json()["tables"])
    response = admin_client.post(url("reflection_add"), reflection_form(st, dest, destination_table="orders"))
    assert response.status_code == 302, page(response)
    assert "9.99" in page(admin_client.get(url("reflection_preview", Reflection.objects.get().pk)))


# -- Wording: labels, names, help ------------------------------------------------------
def labels_of(text):
    main = text.split('id="content-main"', 1)[1]
    return [re.sub(r"\s+", " ", label).strip()
            for label in re.findall(r"<label[^>]*>([^<]+)</label>", main) if label.strip()]


def test_labels_are_sentence_case(admin_client, reflection, source):
    """Every label of the admin's forms starts with a capital ("Password:", not "password:")."""
    pages = [url("database_add"), url("database_change", source.db.pk), url("sourcetable_add"),
             url("sourcetable_add", database=source.db.pk), url("sourcetable_change", reflection.source_id),
             url("reflection_add"), url("reflection_change", reflection.pk)]
    seen = set()
    for address in pages:
        for label in labels_of(page(admin_client.get(address))):
            seen.add(label)
            assert label[0].isupper(), f"{address}: label {label!r}"
    assert {"Password:", "Clear the stored password", "Database name or SQLite file path:", "Table:",
            "Table name:"} <= seen, seen


def test_messages_show_names_as_typed(admin_client, make_target):
    """The admin capitalises the first letter of each message: no message may start with a
    name the user typed ("gui_src" must not become "Gui_src")."""
    target = make_target("sqlite")
    target.execute(ITEMS)
    database = target.model("gui_src")
    response = admin_client.post(url("database_test_connection", database.pk), follow=True)
    shown = page(response).split('class="messagelist"', 1)[1].split("</ul>", 1)[0]
    assert "gui_src" in shown and "Gui_src" not in shown
    response = admin_client.post(url("database_changelist"), {
        "action": "test_connection", "_selected_action": [database.pk]}, follow=True)
    shown = page(response).split('class="messagelist"', 1)[1].split("</ul>", 1)[0]
    assert "gui_src" in shown and "Gui_src" not in shown
    st = watch(database, "items")
    for action in ("install", "reinstall", "uninstall"):
        response = admin_client.post(url("sourcetable_changelist"), {
            "action": action, "_selected_action": [st.pk]}, follow=True)
        shown = page(response).split('class="messagelist"', 1)[1].split("</ul>", 1)[0]
        assert "gui_src: items" in shown and "Gui_src" not in shown, shown


def test_read_only_pages_show_no_input_help(admin_client, client, reflection):
    """The source table's change page (every field read-only) and a view-only reflection
    show what is configured, without the add form's instructions."""
    text = page(admin_client.get(url("sourcetable_change", reflection.source_id)))
    main = text.split('id="content-main"', 1)[1]
    for instruction in ("Or type", "or type", "Leave blank", "Filled in when", "Tables of the chosen"):
        assert instruction not in main, instruction
    assert {"Schema:", "Table:"} <= set(labels_of(text))
    # the add page keeps its help
    add = page(admin_client.get(url("sourcetable_add")))
    assert "Leave blank for the connection" in add and "Filled in when you pick a table" in add

    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_reflection"))
    client.force_login(user)
    main = page(client.get(url("reflection_change", reflection.pk))).split('id="content-main"', 1)[1]
    assert "Destination pick" not in main and "Pick an existing table" not in main


def test_mapping_messages_and_help_are_plain(admin_client, items, dest, reflection):
    """A mapping error on the reflection form says "The mapping …", never "The mapping of
    reflection (new) names …"; the help says what the mapping is."""
    response = admin_client.post(url("reflection_add"), reflection_form(
        items, dest, destination_table="new_copy", mapping='{"columns": {"id": "id", "x": "nope"}}'))
    text = page(response).replace("&quot;", '"')
    assert "The mapping names source columns that do not exist: nope." in text
    assert "(new)" not in text and "of reflection" not in text
    response = admin_client.post(url("reflection_change", reflection.pk), reflection_form(
        items, dest, mapping='{"columns": {"name": "name"}}'))
    text = page(response).replace("&quot;", '"')
    assert "The mapping must map every source primary-key column by name (missing: id)" in text
    assert "of reflection" not in text
    assert "Which source column fills each destination column" in text
