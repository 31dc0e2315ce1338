"""A new user's first configuration in code (issue 17): ``Database.from_url``, SQLite
files opened without being created, ``SourceTable.add`` all or nothing, ``install()``
saying what it did, and the W006 check of a weak credential key."""
import os
import sqlite3
import threading

import pytest
import sqlalchemy as sa
from django.core.checks import run_checks
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import override_settings

from django_pdr import capture
from django_pdr.connections import check_connection
from django_pdr.errors import CaptureError, ConnectionFailed
from django_pdr.models import Database, SourceTable
from django_pdr.schema import create_table
from tests.targets import require, server_params

pytestmark = pytest.mark.django_db


def sqlite_file(path, *statements):
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return path


# -- Database.from_url ------------------------------------------------------------
def test_from_url_fills_every_field_and_encrypts_the_credentials():
    db = Database.from_url("shop", "postgresql+psycopg2://pdr:s3cret%2Fpw@db1.example:6432/shop"
                                   "?sslmode=require&application_name=pdr")
    db.refresh_from_db()
    assert (db.kind, db.host, db.port, db.database) == ("postgresql", "db1.example", 6432, "shop")
    assert (db.username, db.password) == ("pdr", "s3cret/pw")  # URL-decoded
    assert db.options == {"sslmode": "require", "application_name": "pdr"}
    with connection.cursor() as cursor:  # stored encrypted, not as typed
        cursor.execute("SELECT username, password FROM django_pdr_database WHERE id = %s", [db.pk])
        stored = cursor.fetchone()
    assert "s3cret" not in str(stored) and "pdr" != stored[0]


@pytest.mark.parametrize("url,kind", [("mysql://u@h/d", "mysql"), ("mariadb+pymysql://u@h/d", "mysql"),
                                      ("postgresql://h/d", "postgresql"), ("sqlite:///rel/x.db", "sqlite")])
def test_from_url_kinds(url, kind, tmp_path):
    db = Database.from_url("x", url, create_file=kind == "sqlite")
    assert db.kind == kind
    if kind == "sqlite":
        assert db.database == "rel/x.db"


@pytest.mark.parametrize("url,message", [
    ("oracle://u@h/d", "No supported database kind"),
    ("not a url", "Not a database URL"),
    ("postgresql://h", "Give the name of the database on the server"),
])
def test_from_url_refuses_bad_urls_and_saves_nothing(url, message):
    with pytest.raises(ValidationError) as info:
        Database.from_url("bad", url)
    assert message in str(info.value)
    assert not Database.objects.exists()


def test_from_url_refuses_a_taken_name(tmp_path):
    Database.from_url("shop", f"sqlite:///{tmp_path}/a.db", create_file=True)
    with pytest.raises(ValidationError) as info:
        Database.from_url("shop", f"sqlite:///{tmp_path}/b.db", create_file=True)
    assert "name" in info.value.message_dict
    assert Database.objects.count() == 1


@pytest.mark.live
def test_from_url_connects_to_a_live_server():
    require("postgresql")
    p = server_params("postgresql")
    url = sa.engine.URL.create("postgresql", username=p["username"], password=p["password"], host=p["host"],
                               port=p["port"], database=p["database"])
    db = Database.from_url("live", url.render_as_string(hide_password=False))
    assert check_connection(db).startswith("Connected")


# -- SQLite files are opened, not created ----------------------------------------------
def test_a_mistyped_sqlite_path_is_an_error_and_creates_nothing(tmp_path):
    sqlite_file(tmp_path / "shop.db", "CREATE TABLE t (id int PRIMARY KEY)")
    typo = tmp_path / "shpo.db"
    db = Database.from_url("typo", f"sqlite:///{typo}")
    with pytest.raises(ConnectionFailed) as info:
        check_connection(db)
    assert "Cannot connect to typo" in str(info.value) and "Create the file if it does not exist" in str(info.value)
    assert not typo.exists()
    with pytest.raises(ValidationError):
        SourceTable.add(db, "t")
    assert not typo.exists() and not SourceTable.objects.exists()


def test_an_existing_sqlite_file_opens_even_with_odd_characters(tmp_path):
    path = sqlite_file(tmp_path / "my shop?#%.db", "CREATE TABLE t (id int PRIMARY KEY)")
    db = Database.objects.create(name="odd", kind="sqlite", database=str(path))  # a URL would need escapes
    assert check_connection(db).startswith("Connected")
    assert SourceTable.add(db, "t").capture_status == capture.INSTALLED


def test_create_file_is_the_explicit_choice_for_a_new_file(tmp_path):
    path = tmp_path / "new.db"
    db = Database.from_url("new", f"sqlite:///{path}", create_file=True)
    check_connection(db)
    assert path.exists()


def test_create_file_is_refused_for_a_server_database():
    with pytest.raises(ValidationError) as info:
        Database.from_url("pg", "postgresql://h/d", create_file=True)
    assert "create_file" in info.value.message_dict


# -- SourceTable.add and install() -------------------------------------------------------
def test_add_installs_and_saves_and_install_says_what_it_did(tmp_path):
    path = sqlite_file(tmp_path / "shop.db", "CREATE TABLE orders (id int PRIMARY KEY, v text)")
    shop = Database.from_url("shop", f"sqlite:///{path}")
    orders = SourceTable.add(shop, "orders")
    assert orders.pk and orders.key_columns == ["id"]
    assert orders.capture_status == capture.INSTALLED
    assert orders.install() == capture.UNCHANGED
    assert orders.install(force=True) == capture.REPLACED
    with sqlite3.connect(path) as conn:  # a dropped trigger: install mends it
        trigger = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name").fetchone()[0]
        conn.execute(f'DROP TRIGGER "{trigger}"')
    assert orders.capture_status == capture.PARTIAL
    assert orders.install() == capture.REPLACED
    assert orders.capture_status == capture.INSTALLED


def test_add_refuses_a_table_without_a_key_and_installs_nothing(tmp_path):
    path = sqlite_file(tmp_path / "shop.db", "CREATE TABLE log (v text)")
    with pytest.raises(ValidationError) as info:
        SourceTable.add(Database.from_url("shop", f"sqlite:///{path}"), "log")
    assert "primary key" in str(info.value)
    assert not SourceTable.objects.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []


def test_add_saves_nothing_when_the_install_fails(tmp_path, monkeypatch):
    path = sqlite_file(tmp_path / "shop.db", "CREATE TABLE orders (id int PRIMARY KEY)")
    shop = Database.from_url("shop", f"sqlite:///{path}")

    def refused(source_table, force=False):
        raise CaptureError("Could not install capture: refused. Nothing was left installed.")

    monkeypatch.setattr(capture, "install", refused)
    with pytest.raises(CaptureError):
        SourceTable.add(shop, "orders")
    assert not SourceTable.objects.exists()


def test_add_removes_the_capture_it_installed_when_the_save_fails(tmp_path, monkeypatch):
    path = sqlite_file(tmp_path / "shop.db", "CREATE TABLE orders (id int PRIMARY KEY)")
    shop = Database.from_url("shop", f"sqlite:///{path}")

    def broken_save(self, *args, **kwargs):
        raise RuntimeError("the Django database went away")

    monkeypatch.setattr(SourceTable, "save", broken_save)
    with pytest.raises(RuntimeError):
        SourceTable.add(shop, "orders")
    monkeypatch.undo()
    assert not SourceTable.objects.exists()
    with sqlite3.connect(path) as conn:
        left = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'pdr%'").fetchall()
    assert left == []


# -- W006: the credential key ---------------------------------------------------------
@pytest.mark.parametrize("key,why", [
    ("a long random string, kept apart from SECRET_KEY", "placeholder"),
    ("short-key", "9 characters"),
])
def test_w006_weak_credential_key(key, why):
    with override_settings(PGCRYPTO_DEFAULT_KEY=key):
        found = [m for m in run_checks() if m.id == "django_pdr.W006"]
    assert len(found) == 1 and why in found[0].msg and "token_urlsafe" in found[0].hint


def test_w006_silent_for_a_generated_key():
    with override_settings(PGCRYPTO_DEFAULT_KEY=os.urandom(24).hex()):
        assert [m for m in run_checks() if m.id.startswith("django_pdr.W00")] == []


# -- two creators of one table ---------------------------------------------------------
def test_create_table_tolerates_a_concurrent_creator(tmp_path, monkeypatch):
    """The worker and pdr-verify (or two workers) create the checkpoint table at once:
    the one that loses the race must not fail (the demo showed this error)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    table = sa.Table("pdr_checkpoint", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    original = sa.Table.create
    other = threading.Thread(target=lambda: original(table, engine))

    def racing_create(self, bind, checkfirst=False):
        other.start()  # the other creator wins between our check and our CREATE
        other.join()
        return original(self, bind, checkfirst=False)

    monkeypatch.setattr(sa.Table, "create", racing_create)
    with engine.connect() as conn:
        create_table(conn, table)
        assert sa.inspect(conn).has_table("pdr_checkpoint")
    monkeypatch.undo()
    with engine.connect() as conn:  # a real error still raises
        with pytest.raises(sa.exc.DBAPIError):
            create_table(conn, sa.Table("bad", sa.MetaData(), sa.Column("x", sa.Integer),
                                        sa.Column("x ", sa.Integer), sa.CheckConstraint("nope(")))
