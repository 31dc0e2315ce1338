"""System checks (docs/checks.md): each id fires when it should, and only then."""
import re
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import Error, Warning, run_checks
from django.test.utils import override_settings

from django_pdr import checks
from django_pdr.models import Database

DOCS = Path(__file__).resolve().parent.parent / "docs" / "checks.md"
WITHOUT_ACE = [app for app in settings.INSTALLED_APPS if app != "django_ace"]
WITHOUT_ADMIN = [app for app in settings.INSTALLED_APPS if app != "django.contrib.admin"]


def pdr_ids(messages):
    return sorted(m.id for m in messages if m.id and m.id.startswith("django_pdr."))


def by_id(messages, wanted):
    found = [m for m in messages if m.id == wanted]
    assert found, f"{wanted} not in {[m.id for m in messages]}"
    return found


def test_the_test_settings_pass_every_check():
    assert pdr_ids(run_checks()) == []


@pytest.mark.django_db
def test_the_test_settings_pass_the_database_checks_too():
    Database.objects.create(name="local", kind="sqlite", database="/tmp/x.sqlite3")
    assert pdr_ids(run_checks(databases=["default"], include_deployment_checks=False)) == []


# -- E001 ---------------------------------------------------------------------
def test_e001_django_ace_missing():
    with override_settings(INSTALLED_APPS=WITHOUT_ACE):
        [message] = by_id(run_checks(), "django_pdr.E001")
    assert isinstance(message, Error)
    assert "django_ace" in message.msg and "INSTALLED_APPS" in message.hint


# -- E002 ---------------------------------------------------------------------
@pytest.mark.parametrize("value,fragment", [
    (["BATCH_SIZE"], "must be a dict, not list"),
    ({"BATCH_SIZ": 10}, "Unknown key(s) in settings.PDR: BATCH_SIZ"),
    ({"BATCH_SIZE": 0}, "'BATCH_SIZE'] must be a positive integer, not 0"),
    ({"BATCH_SIZE": "100"}, "'BATCH_SIZE'] must be a positive integer, not '100'"),
    ({"BATCH_SIZE": True}, "'BATCH_SIZE'] must be a positive integer, not True"),
    ({"RETRY_BACKOFF": -1}, "'RETRY_BACKOFF'] must be a positive number, not -1"),
    ({"CHECKPOINT_TABLE": " "}, "'CHECKPOINT_TABLE'] must be a non-empty string"),
    ({"RETRY_BACKOFF": 10, "RETRY_BACKOFF_MAX": 5}, "'RETRY_BACKOFF_MAX'] (5) is smaller than"),
])
def test_e002_bad_pdr_dict(value, fragment):
    with override_settings(PDR=value):
        messages = by_id(run_checks(), "django_pdr.E002")
    assert all(isinstance(m, Error) and m.hint for m in messages)
    assert any(fragment in m.msg for m in messages), [m.msg for m in messages]


def test_e002_accepts_good_values():
    with override_settings(PDR={"BATCH_SIZE": 100, "RETRY_BACKOFF": 2, "RETRY_BACKOFF_MAX": 30.5,
                                "CHECKPOINT_TABLE": "my_checkpoints"}):
        assert pdr_ids(run_checks()) == []


def test_e002_unknown_key_hint_lists_known_keys():
    with override_settings(PDR={"NOPE": 1}):
        [message] = by_id(run_checks(), "django_pdr.E002")
    assert "BATCH_SIZE" in message.hint


# -- W001 ---------------------------------------------------------------------
def test_w001_no_pgcrypto_key():
    with override_settings(PGCRYPTO_DEFAULT_KEY=None):
        [message] = by_id(run_checks(), "django_pdr.W001")
    assert isinstance(message, Warning)
    assert "SECRET_KEY" in message.hint


def test_w001_pgcrypto_key_equal_to_secret_key():
    with override_settings(PGCRYPTO_DEFAULT_KEY=settings.SECRET_KEY):
        [message] = by_id(run_checks(), "django_pdr.W001")
    assert "equals SECRET_KEY" in message.msg


# -- W002 ---------------------------------------------------------------------
def test_w002_admin_missing():
    with override_settings(INSTALLED_APPS=WITHOUT_ADMIN):
        [message] = by_id(checks.check_settings(), "django_pdr.W002")
    assert isinstance(message, Warning)
    assert "django.contrib.admin" in message.hint and "pdr-import" in message.hint


def test_w002_accepts_an_admin_app_config_path():
    apps = [("django.contrib.admin.apps.SimpleAdminConfig" if a == "django.contrib.admin" else a)
            for a in settings.INSTALLED_APPS]
    with override_settings(INSTALLED_APPS=apps):
        assert "django_pdr.W002" not in pdr_ids(checks.check_settings())


# -- W003 / W004 (database checks) --------------------------------------------
@pytest.mark.django_db
def test_w003_driver_missing(monkeypatch):
    Database.objects.create(name="shop", kind="mysql", host="db", database="shop")
    Database.objects.create(name="crm", kind="mysql", host="db", database="crm")
    Database.objects.create(name="local", kind="sqlite", database="/tmp/x.sqlite3")
    monkeypatch.setitem(sys.modules, "pymysql", None)  # "not installed"
    [message] = by_id(run_checks(databases=["default"]), "django_pdr.W003")
    assert isinstance(message, Warning)
    assert "'crm', 'shop'" in message.msg and "pymysql" in message.msg
    assert "pip install 'django-pdr[mysql]'" in message.hint


@pytest.mark.django_db
@pytest.mark.parametrize("missing", ["firebird.driver", "sqlalchemy_firebird"])
def test_w003_firebird_driver_or_dialect_missing(monkeypatch, missing):
    from sqlalchemy.dialects import registry

    Database.objects.create(name="pos", kind="firebird", host="db", database="/data/pos.fdb")
    # imported again, without the missing package ("not installed")
    for name in [n for n in sys.modules if n.startswith("sqlalchemy_firebird")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    if missing == "sqlalchemy_firebird":
        monkeypatch.setattr(registry, "impls", {k: v for k, v in registry.impls.items() if "firebird" not in k})
        for name in [n for n in sys.modules if n.startswith("sqlalchemy_firebird")]:
            monkeypatch.setitem(sys.modules, name, None)
    [message] = by_id(run_checks(databases=["default"]), "django_pdr.W003")
    assert "'pos'" in message.msg and "firebird" in message.msg
    assert "pip install 'django-pdr[firebird]'" in message.hint


@pytest.mark.django_db
def test_w003_silent_when_the_driver_imports():
    Database.objects.create(name="shop", kind="mysql", host="db", database="shop")
    assert "django_pdr.W003" not in pdr_ids(run_checks(databases=["default"]))


@pytest.mark.django_db
def test_w003_only_runs_with_databases(monkeypatch):
    """Like Django's own database checks: plain `manage.py check` does not query."""
    Database.objects.create(name="shop", kind="mysql", host="db", database="shop")
    monkeypatch.setitem(sys.modules, "pymysql", None)
    assert "django_pdr.W003" not in pdr_ids(run_checks())
    assert checks.check_database_drivers(databases=None) == []


@pytest.mark.django_db
def test_w003_respects_the_app_labels_given(monkeypatch):
    from django.apps import apps

    Database.objects.create(name="shop", kind="mysql", host="db", database="shop")
    monkeypatch.setitem(sys.modules, "pymysql", None)
    auth = [apps.get_app_config("auth")]
    assert checks.check_database_drivers(app_configs=auth, databases=["default"]) == []
    pdr = [apps.get_app_config("django_pdr")]
    messages = checks.check_database_drivers(app_configs=pdr, databases=["default"])
    assert pdr_ids(messages) == ["django_pdr.W003"]


@pytest.mark.django_db
def test_w004_unknown_kind():
    Database.objects.bulk_create([Database(name="legacy", kind="oracle", database="x")])
    [message] = by_id(checks.check_database_drivers(databases=["default"]), "django_pdr.W004")
    assert "'legacy'" in message.msg and "'oracle'" in message.msg
    assert "mysql" in message.hint


# -- W005 (database check) ---------------------------------------------------------
@pytest.mark.django_db
def test_w005_capture_warnings():
    from django_pdr.models import SourceTable

    shop = Database.objects.create(name="shop", kind="mysql", host="db", database="shop")
    SourceTable.objects.create(database=shop, table="child", capture_warnings=[
        "Foreign key 'child_parent' of 'child' (referencing 'parent') has ON DELETE CASCADE: not captured."])
    SourceTable.objects.create(database=shop, schema="sales", table="parent")
    [message] = by_id(run_checks(databases=["default"]), "django_pdr.W005")
    assert isinstance(message, Warning)
    assert "'child' of database 'shop'" in message.msg and "ON DELETE CASCADE" in message.msg
    assert "pdr-verify --repair" in message.hint
    assert "django_pdr.W005" not in pdr_ids(run_checks())  # a database check: only with databases
    SourceTable.objects.filter(table="child").update(capture_warnings=[])
    assert "django_pdr.W005" not in pdr_ids(run_checks(databases=["default"]))


@pytest.mark.django_db
def test_database_checks_do_not_crash_before_migrate(monkeypatch):
    """No Database table yet (before `migrate`): nothing to report, no crash, and the
    surrounding transaction stays usable (PostgreSQL aborts it on an error)."""
    monkeypatch.setattr(Database._meta, "db_table", "django_pdr_database_not_migrated")
    assert checks.check_database_drivers(databases=["default"]) == []
    assert checks.check_capture_warnings(databases=["default"]) == []
    monkeypatch.undo()
    assert Database.objects.count() == 0


# -- docs ---------------------------------------------------------------------
def test_every_id_is_documented():
    source = Path(checks.__file__).read_text()
    ids = set(re.findall(r'id="(django_pdr\.[EW]\d{3})"', source))
    assert ids >= {"django_pdr.E001", "django_pdr.E002", "django_pdr.W001", "django_pdr.W002",
                   "django_pdr.W003", "django_pdr.W004", "django_pdr.W005"}
    documented = set(re.findall(r"^## `?(django_pdr\.[EW]\d{3})", DOCS.read_text(), re.M))
    assert ids == documented
