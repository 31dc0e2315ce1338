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
from django.core.management import CommandError, call_command

from django_pdr.models import DeadLetter, Reflection, SourceTable
from tests.targets import rows, watch

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
    assert page.locator("label[for=id_database]").inner_text() == "Database name:"
    page.select_option("#id_kind", "firebird")  # a server: host, port, user, password; a file path on it
    assert page.locator(".field-host").is_visible() and page.locator(".field-password").is_visible()
    assert page.locator("label[for=id_database]").inner_text() == "Database file path on the server (or its alias):"
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
    assert "Database shop: Connected" in messages_text(page)
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
    assert f"Source table {st}: capture installed." in messages_text(page)
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
    assert_editors_fit(page)
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


# -- Layout: ACE editors, dead letters, preview headers -------------------------------
def login(page):
    page.goto("/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-admin-pw")
    go(page, "input[type=submit]")
    page.wait_for_selector("#site-name")


# each ACE editor, its form row and its vertical scrollbar, as the browser lays them out
EDITOR_BOXES = """() => Array.from(document.querySelectorAll('.django-ace-widget'))
    .filter(w => w.checkVisibility()).map(w => {
  const row = w.closest('.form-row');
  const rowBox = row.getBoundingClientRect();
  const box = w.getBoundingClientRect();
  const bar = w.querySelector('.ace_scrollbar-v');
  const barBox = bar.getBoundingClientRect();
  const label = w.closest('.flex-container').querySelector('label').getBoundingClientRect();
  return {name: w.nextElementSibling.name, left: box.left, right: box.right, width: box.width,
          rowRight: rowBox.right - parseFloat(getComputedStyle(row).paddingRight),
          labelRight: label.right, viewport: document.documentElement.clientWidth,
          barLeft: barBox.left, barRight: barBox.right, barWidth: barBox.width,
          barShown: getComputedStyle(bar).display !== 'none' && barBox.width > 0,
          aceWidth: w.editor ? w.editor.renderer.$size.width : null};
})"""

# every shown editor has been sized to its row (after a window resize the script does it on
# the next frame) and laid out by ACE at that width (editor.resize() ran)
EDITORS_SETTLED = """() => Array.from(document.querySelectorAll('.django-ace-widget'))
    .filter(w => w.checkVisibility()).every(w => {
  const row = w.closest('.form-row');
  const rowRight = row.getBoundingClientRect().right - parseFloat(getComputedStyle(row).paddingRight);
  return w.editor && Math.abs(w.editor.renderer.$size.width - w.clientWidth) < 1
         && w.getBoundingClientRect().right >= rowRight - 2;
})"""


def assert_editors_fit(page, expect=None, scrollbars=False):
    """Every shown ACE editor fills its form row beside the label, inside the row and the
    window (with ``scrollbars``: its content overflows, and its vertical scrollbar shows at
    its visible right edge); returns {field name: width}."""
    page.wait_for_function(EDITORS_SETTLED)
    boxes = page.evaluate(EDITOR_BOXES)
    assert boxes and (expect is None or len(boxes) == expect), boxes
    for b in boxes:
        assert b["right"] <= b["rowRight"] + 0.5, b  # not clipped by the form row...
        assert b["right"] <= b["viewport"], b  # ...nor by the window
        assert b["right"] >= b["rowRight"] - 2, b  # and it fills the row
        assert b["left"] >= b["labelRight"], b
        assert abs(b["aceWidth"] - b["width"]) < 1.5, b  # ACE drew itself at this width
        if scrollbars:
            assert b["barShown"] and b["barWidth"] > 0, b
            assert b["left"] < b["barLeft"] and b["barRight"] <= b["right"] + 0.5, b
            assert b["barRight"] <= b["viewport"] and b["barRight"] <= b["rowRight"] + 0.5, b
    return {b["name"]: b["width"] for b in boxes}


@pytest.fixture
def configured(make_target):
    """A source table, a destination and a reflection with long mapping and statements."""
    source, mirror = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric(10,2))",
                   "INSERT INTO items VALUES (1, 'tea', 1.50)")
    User.objects.create_superuser("admin", "admin@example.com", "secret-admin-pw")
    st = watch(source.model("shop"), "items")
    columns = {"id": "id", "name": "name", "price": "price"}
    columns.update({f"copy_{i}_of_the_name_with_a_long_destination_column_name_{'x' * 40}": "name"
                    for i in range(30)})
    comments = [f"  -- line {i}: {'a long comment that runs past the right edge ' * 4}" for i in range(12)]
    statement = "\n".join(["INSERT INTO audit (id, name, price, note)", *comments,
                           "VALUES (:id, :name, :price, 'x')"])
    reflection = Reflection.objects.create(
        source=st, destination=mirror.model("mirror"), destination_table="items_mirror",
        mapping=json.dumps({"columns": columns}, indent=2), statement=statement,
        delete_statement="\n".join(["DELETE FROM audit", *(f"  -- {i}" for i in range(8)), "WHERE id = :id"]))
    return source, mirror, reflection


@pytest.mark.parametrize("width", [1024, 1280, 1920])
def test_ace_editors_fit_their_rows(browser, live_server, configured, width):
    """At 1024, 1280 and 1920 px every ACE editor and its scrollbar lie inside their form row
    and the window; the editors are wider in a wider window and follow the window's size."""
    reflection = configured[2]
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    try:
        login(page)
        page.goto(f"/admin/django_pdr/reflection/{reflection.pk}/change/")
        page.wait_for_selector(".django-ace-widget:not(.loading)")
        widths = assert_editors_fit(page, expect=3, scrollbars=True)
        assert widths["mapping"] > 900 if width == 1920 else widths["mapping"] < 900
        shot(page, f"reflection-editors-{width}")

        # the window changes size: the editors follow (narrower, then wider than at first)
        page.set_viewport_size({"width": width - 200, "height": 900})
        narrower = assert_editors_fit(page, expect=3, scrollbars=True)
        assert all(narrower[name] <= widths[name] - 150 for name in widths), (narrower, widths)
        page.set_viewport_size({"width": width + 300, "height": 900})
        wider = assert_editors_fit(page, expect=3, scrollbars=True)
        assert all(wider[name] >= widths[name] + 250 for name in widths), (wider, widths)

        # the add page: the custom statements are in a closed fieldset; opened, they fit too
        page.set_viewport_size({"width": width, "height": 900})
        page.goto("/admin/django_pdr/reflection/add/")
        page.wait_for_selector(".django-ace-widget:not(.loading)")
        assert_editors_fit(page, expect=1)
        page.click("fieldset.collapse summary")
        assert_editors_fit(page, expect=3)
    finally:
        context.close()


def test_reflection_page_short_with_many_dead_letters(page, configured):
    """1,000 rows refused by the destination: the reflection page shows a count, the latest
    five and a link to the dead-letter list (filtered, paginated, with search and retry)."""
    from django_pdr import deadletters

    source, mirror, reflection = configured
    Reflection.objects.filter(pk=reflection.pk).update(mapping="", statement="", delete_statement="")
    mirror.execute("CREATE TABLE items_mirror (id integer PRIMARY KEY, name text NOT NULL, price numeric)")
    call_command("pdr-reflect", verbosity=0)
    source.execute("WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 1001) "
                   "INSERT INTO items SELECT i, NULL, 1.00 FROM n")  # NULL names: the mirror refuses them
    with pytest.raises(CommandError, match="1000 row"):
        call_command("pdr-reflect", verbosity=0)
    assert DeadLetter.objects.filter(reflection=reflection).count() == 1000

    login(page)
    page.goto(f"/admin/django_pdr/reflection/{reflection.pk}/change/")
    section = page.locator("#pdr-dead-letters")
    assert "1000 dead-lettered rows." in section.inner_text()
    assert section.locator("tbody tr").count() == 5
    assert section.bounding_box()["height"] < 600, section.bounding_box()
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 3000, height  # was 86 px per dead letter
    shot(page, "reflection-dead-letters")

    go(page, "#pdr-dead-letter-list")
    assert "1000 dead-lettered rows" in page.locator("#changelist").inner_text()
    assert page.locator("#result_list tbody tr").count() == 50  # paginated
    assert page.locator("#changelist-search").count() == 1 and page.locator("#changelist-filter").count() == 1
    shot(page, "dead-letters")
    assert page.evaluate("document.documentElement.scrollHeight") < 4000
    page.check("#result_list tbody tr:first-child input[name=_selected_action]")
    page.select_option("select[name=action]", "retry")
    go(page, "button[name=index]")
    assert "1 dead-lettered row(s) will be retried by pdr-reflect." in messages_text(page)
    assert len(deadletters.requested(reflection)) == 1


def test_preview_shows_column_names_as_spelled(page, configured):
    """Column names are case-sensitive: the preview's headers are not upper-cased by CSS."""
    reflection = configured[2]
    Reflection.objects.filter(pk=reflection.pk).update(
        mapping=json.dumps({"columns": {"id": "id", "ItemName": "name", "price_EUR": "price"}}),
        statement="", delete_statement="")
    login(page)
    page.goto(f"/admin/django_pdr/reflection/{reflection.pk}/preview/")
    page.wait_for_selector("#pdr-preview")
    headers = page.locator("#pdr-preview thead th")
    assert headers.count() == 3
    for index, name in enumerate(["id", "ItemName", "price_EUR"]):
        th = headers.nth(index)
        assert th.evaluate("e => getComputedStyle(e).textTransform") == "none"
        assert th.inner_text().split()[0] == name  # innerText is the text as rendered
