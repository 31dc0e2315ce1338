"""Changes the capture triggers never see: MySQL/MariaDB foreign-key cascades.  The
dialect names them, a system check and the admin show them, pdr-verify finds what they
leave behind."""
import pytest
from django.urls import reverse

from django_pdr import worker
from django_pdr.connections import connect
from django_pdr.dialects import get_dialect
from django_pdr.models import Database, Reflection, SourceTable
from django_pdr.schema import reflect_table
from django_pdr.verify import EXTRA, verify
from tests.targets import rows, watch

pytestmark = pytest.mark.django_db

PARENT = "CREATE TABLE parent (id int PRIMARY KEY) ENGINE=InnoDB"
CHILD = ("CREATE TABLE child (id int PRIMARY KEY, parent_id int, v varchar(10), CONSTRAINT child_parent "
         "FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE) ENGINE=InnoDB")


def blind_spots(database, table):
    with connect(database) as conn:
        source = reflect_table(conn, None, table, database.describe())
        found = get_dialect(conn).capture_blind_spots(conn, source)
        conn.rollback()
    return found


@pytest.mark.live
def test_cascade_blind_spots_mariadb(make_target):
    target = make_target("mysql")
    target.execute(PARENT, CHILD,
                   "CREATE TABLE nulled (id int PRIMARY KEY, parent_id int, CONSTRAINT nulled_parent "
                   "FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE RESTRICT ON UPDATE SET NULL)",
                   "CREATE TABLE strict (id int PRIMARY KEY, parent_id int, CONSTRAINT strict_parent "
                   "FOREIGN KEY (parent_id) REFERENCES parent (id))")
    database = target.model("shop")
    [message] = blind_spots(database, "child")
    assert "'child_parent'" in message and "'child'" in message and "'parent'" in message
    assert "ON DELETE CASCADE" in message and "not captured" in message
    assert "pdr-verify --repair" in message
    [message] = blind_spots(database, "nulled")
    assert "ON UPDATE SET NULL" in message and "ON DELETE" not in message
    assert blind_spots(database, "strict") == []
    assert blind_spots(database, "parent") == []  # the parent's own deletes fire its triggers


@pytest.mark.live
def test_verify_finds_what_a_cascade_delete_leaves_mariadb_to_postgresql(make_target):
    source, dest = make_target("mysql"), make_target("postgresql")
    source.execute(PARENT, CHILD, "INSERT INTO parent VALUES (1), (2)",
                   "INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (20, 2, 'c')")
    reflection = Reflection.objects.create(source=watch(source.model("shop"), "child"),
                                           destination=dest.model("warehouse"), destination_table="child")
    worker.run_round()
    assert len(rows(dest.engine, "child", ["id"])) == 3
    source.execute("DELETE FROM parent WHERE id = 1")  # deletes child rows 10 and 11: no trigger fires
    worker.run_round()
    assert [r["id"] for r in rows(dest.engine, "child", ["id"])] == [10, 11, 20]  # the blind spot
    report = verify(reflection)
    assert sorted((d.kind, d.key) for d in report.unresolved) == [(EXTRA, (10,)), (EXTRA, (11,))]
    report = verify(reflection, repair=True)
    assert report.repaired == 2
    assert rows(dest.engine, "child", ["id"]) == [{"id": 20, "parent_id": 2, "v": "c"}]
    assert verify(reflection).differences == []


def test_capture_warnings_shown_in_the_admin(admin_client, tmp_path):
    database = Database.objects.create(name="shop", kind="sqlite", database=str(tmp_path / "shop.sqlite3"))
    warning = "Foreign key 'child_parent' <cascade> not captured."
    warned = SourceTable.objects.create(database=database, table="child", capture_warnings=[warning])
    quiet = SourceTable.objects.create(database=database, table="parent")
    page = admin_client.get(reverse("admin:django_pdr_sourcetable_change", args=[warned.pk])).content.decode()
    assert 'class="pdr-warn pdr-capture-warnings"' in page
    assert "Foreign key &#x27;child_parent&#x27; &lt;cascade&gt; not captured." in page  # escaped
    page = admin_client.get(reverse("admin:django_pdr_sourcetable_change", args=[quiet.pk])).content.decode()
    assert "pdr-capture-warnings" not in page and "none known" in page
    listing = admin_client.get(reverse("admin:django_pdr_sourcetable_changelist")).content.decode()
    assert listing.count('<span class="pdr-warn"') == 1 and "⚠ 1" in listing
