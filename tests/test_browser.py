"""The admin in headless Chromium (Debian's package, never a downloaded browser).

Logs in, adds two SQLite databases through the form, picks a source table,
installs its triggers, creates a reflection typing its mapping into the ACE
editor, inserts rows into the source, runs ``pdr-reflect`` and sees the rows
arrive and the lag drop to zero.  Screenshots of the main pages go to
``docs/images/``.
"""
import json
import os
import pathlib
import shutil

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from django_pdr.models import Reflection, SourceTable
from tests.targets import rows

# Playwright's sync API runs an event loop in this thread; the ORM calls the
# test makes between page actions are ordinary synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
IMAGES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "images"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
MAPPING = '{\n  "columns": {\n    "id": "id",\n    "name": "name",\n    "price": "price"\n  }\n}'


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    external = []

    def watch(request):
        local = (live_server.url, "data:", f"blob:{live_server.url}")
        if not request.url.startswith(local):
            external.append(request.url)

    context.on("request", watch)
    page = context.new_page()
    yield page
    context.close()
    assert external == [], f"the admin made external requests: {external}"


def shot(page, name):
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"{name}.png"), full_page=True)


def go(page, selector):
    """Click something that loads a new page, and wait for it."""
    with page.expect_navigation():
        page.click(selector)


def messages_text(page):
    return page.locator("ul.messagelist").inner_text() if page.locator("ul.messagelist").count() else ""


def add_database(page, name, path):
    page.goto("/admin/django_pdr/database/add/")
    page.fill("#id_name", name)
    page.select_option("#id_kind", "postgresql")
    assert page.locator(".field-host").is_visible()
    page.select_option("#id_kind", "sqlite")
    assert not page.locator(".field-host").is_visible()  # a file needs no host, port, user or password
    assert not page.locator(".field-password").is_visible()
    page.fill("#id_database", path)


def test_configure_and_watch_replication(page, make_target):
    source, mirror = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric(10,2))",
                   "CREATE TABLE notes (body text)",
                   "INSERT INTO items VALUES (1, 'tea', 1.50)", "INSERT INTO items VALUES (2, 'cake', 3.25)")
    User.objects.create_superuser("admin", "admin@example.com", "secret-admin-pw")

    page.goto("/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-admin-pw")
    go(page, "input[type=submit]")
    page.wait_for_selector("#site-name")

    # two SQLite databases through the form
    add_database(page, "shop", source.fields["database"])
    shot(page, "database-form")
    go(page, "input[name=_continue]")
    go(page, "#pdr-test-connection")
    assert "shop: connected" in messages_text(page).lower()
    add_database(page, "mirror", mirror.fields["database"])
    go(page, "input[name=_save]")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list").inner_text().count("SQLite") == 2

    # the source table, picked from the live list (filled by the admin's JSON endpoint)
    page.goto("/admin/django_pdr/sourcetable/add/")
    page.select_option("#id_database", label="shop")
    page.wait_for_selector("#id_pick option:text('main.items')", state="attached")
    assert "main.notes" in page.locator("#id_pick").inner_text()
    page.select_option("#id_pick", label="main.items")
    assert page.input_value("#id_table") == "items"
    go(page, "input[name=_save]")
    page.wait_for_selector("#result_list")
    assert "was added successfully" in messages_text(page)
    st = SourceTable.objects.get()
    assert st.key_columns == ["id"]

    # install (idempotent: saving installed it) through the action
    page.check(f"input[name=_selected_action][value='{st.pk}']")
    page.select_option("select[name=action]", "install")
    go(page, "button[name=index]")
    assert "capture installed" in messages_text(page)
    assert page.locator(".pdr-status-installed").count() == 1
    shot(page, "source-tables")

    # the reflection, its mapping typed into the ACE editor
    page.goto("/admin/django_pdr/reflection/add/")
    page.select_option("#id_source", label=str(st))
    page.select_option("#id_destination", label="mirror")
    page.fill("#id_destination_table", "items_mirror")
    editor = page.locator(".django-ace-widget .ace_text-input").first
    editor.focus()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(MAPPING)
    shot(page, "reflection-form")
    go(page, "input[name=_continue]")
    assert "was added successfully" in messages_text(page), page.content()
    reflection = Reflection.objects.get()
    assert json.loads(reflection.mapping) == json.loads(MAPPING)

    # preview: the rows as they would land, nothing written
    go(page, "text=Preview")
    page.wait_for_selector("#pdr-preview")
    assert "cake" in page.locator("#pdr-preview").inner_text()
    shot(page, "preview")
    assert "items_mirror" not in mirror.engine.dialect.get_table_names(mirror.engine.connect())

    # the worker: initial load, then new rows captured by the triggers
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO items VALUES (3, 'pie', 2.00)", "UPDATE items SET price = 1.75 WHERE id = 1",
                   "INSERT INTO items VALUES (4, 'scone', 0.90)")
    page.goto(f"/admin/django_pdr/reflection/{reflection.pk}/change/")
    assert page.locator(".field-pending .readonly").inner_text() == "3"
    call_command("pdr-reflect", verbosity=0)

    page.reload()
    assert "replicating" in page.locator(".field-state .readonly").inner_text()
    assert page.locator(".field-pending .readonly").inner_text() == "0"
    assert page.locator(".field-lag .readonly").inner_text() == "0 s"
    shot(page, "reflection-state")
    assert [r["name"] for r in rows(mirror.engine, "items_mirror", ["id"])] == ["tea", "cake", "pie", "scone"]

    go(page, "text=Dashboard")
    page.wait_for_selector("#pdr-dashboard")
    row = page.locator("#pdr-dashboard tr.pdr-reflection").first
    assert "replicating" in row.inner_text()
    assert row.locator(".pdr-pending").inner_text() == "0"
    assert row.locator(".pdr-lag").inner_text() == "0 s"
    assert page.locator("svg.pdr-chart").count() == 2
    shot(page, "dashboard")

    page.goto("/admin/django_pdr/reflection/")
    assert "replicating" in page.locator("#result_list").inner_text()
    shot(page, "reflections")
