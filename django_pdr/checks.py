"""Django system checks.  Every id is documented in docs/checks.md.

=================  ======================================================================
django_pdr.E001    ``django_ace`` is not installed
django_pdr.E002    ``settings.PDR`` is invalid (not a dict, unknown key, bad value)
django_pdr.W001    no dedicated ``PGCRYPTO_DEFAULT_KEY`` (credentials tied to SECRET_KEY)
django_pdr.W002    ``django.contrib.admin`` is not installed
django_pdr.W003    a configured Database's driver cannot be imported (database check)
django_pdr.W004    a configured Database has a kind this version does not support (database check)
django_pdr.W005    a source table has changes its capture cannot see (database check)
django_pdr.W006    ``PGCRYPTO_DEFAULT_KEY`` is weak (short, or a documentation placeholder)
=================  ======================================================================

W003, W004 and W005 read django-pdr's tables, so, like Django's own database checks,
they run only when databases are given: ``manage.py check --database default``,
``manage.py migrate`` and the test runner.  Before ``migrate`` (no table yet) or
with the database unreachable they report nothing.
"""
from __future__ import annotations

import numbers

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError, router, transaction



#: W006: shorter keys are guessable; token_urlsafe(32) gives 43 characters
MIN_KEY_LENGTH = 32
#: W006: values django-pdr's documentation has shown as placeholders
PLACEHOLDER_KEYS = {
    "a long random string, kept apart from secret_key",
    "change me", "changeme", "secret", "your-key-here",
}


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    """E001, W001, W006, W002, E002: settings django-pdr depends on."""
    messages = []
    if not apps.is_installed("django_ace"):
        messages.append(Error(
            "django_ace is not in INSTALLED_APPS.",
            hint="Add 'django_ace' to INSTALLED_APPS: the admin edits mappings in ACE editors.",
            id="django_pdr.E001",
        ))
    key = getattr(settings, "PGCRYPTO_DEFAULT_KEY", None)
    if not key:
        messages.append(Warning(
            "PGCRYPTO_DEFAULT_KEY is not set: database credentials are encrypted with SECRET_KEY.",
            hint="Set a dedicated PGCRYPTO_DEFAULT_KEY; otherwise rotating SECRET_KEY makes every "
                 "stored password unreadable.",
            id="django_pdr.W001",
        ))
    elif key == getattr(settings, "SECRET_KEY", None):
        messages.append(Warning(
            "PGCRYPTO_DEFAULT_KEY equals SECRET_KEY: database credentials are tied to SECRET_KEY.",
            hint="Use a different, dedicated value; otherwise rotating SECRET_KEY makes every "
                 "stored password unreadable.",
            id="django_pdr.W001",
        ))
    elif isinstance(key, str) and (key.strip().lower() in PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH):
        why = ("is the placeholder from django-pdr's documentation"
               if key.strip().lower() in PLACEHOLDER_KEYS else
               f"has {len(key)} characters (fewer than {MIN_KEY_LENGTH})")
        messages.append(Warning(
            f"PGCRYPTO_DEFAULT_KEY {why}: it does not protect the stored database credentials.",
            hint='Set it to a random value of its own, e.g. the output of python -c "import secrets; '
                 'print(secrets.token_urlsafe(32))", read from the environment, before saving the first '
                 "Database (changing it later makes stored passwords unreadable: re-enter them).",
            id="django_pdr.W006",
        ))
    if not apps.is_installed("django.contrib.admin"):
        messages.append(Warning(
            "django.contrib.admin is not in INSTALLED_APPS: django-pdr is configured and monitored "
            "in the admin.",
            hint="Add 'django.contrib.admin' (and include admin.site.urls in your URLconf), or "
                 "configure django-pdr through the ORM or 'manage.py pdr-import'.",
            id="django_pdr.W002",
        ))
    messages.extend(_check_pdr_dict())
    return messages


def _check_pdr_dict():
    """E002: one Error per problem of ``settings.PDR`` (types follow the defaults)."""
    from .conf import CHOICES, DEFAULTS

    def error(message, hint="Fix the PDR dict in settings; docs/settings.md lists every key."):
        return Error(message, hint=hint, id="django_pdr.E002")

    user = getattr(settings, "PDR", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [error(f"settings.PDR must be a dict, not {type(user).__name__}.")]
    messages = []
    unknown = sorted(set(user) - set(DEFAULTS), key=str)
    if unknown:
        messages.append(error(
            f"Unknown key(s) in settings.PDR: {', '.join(map(str, unknown))}.",
            hint=f"Known keys: {', '.join(sorted(DEFAULTS))} (see docs/settings.md).",
        ))
    for name, value in user.items():
        if name not in DEFAULTS:
            continue
        default = DEFAULTS[name]
        if isinstance(default, bool):
            ok, wanted = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            wanted = "a positive integer"
        elif isinstance(default, float):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0
            wanted = "a positive number"
        elif isinstance(default, str):
            ok, wanted = isinstance(value, str) and bool(value.strip()), "a non-empty string"
        else:
            continue
        if ok and name in CHOICES and value not in CHOICES[name]:
            ok, wanted = False, " or ".join(repr(c) for c in CHOICES[name])
        if not ok:
            messages.append(error(f"settings.PDR[{name!r}] must be {wanted}, not {value!r}."))
    backoff = user.get("RETRY_BACKOFF", DEFAULTS.get("RETRY_BACKOFF"))
    backoff_max = user.get("RETRY_BACKOFF_MAX", DEFAULTS.get("RETRY_BACKOFF_MAX"))
    if (isinstance(backoff, numbers.Real) and isinstance(backoff_max, numbers.Real)
            and 0 < backoff_max < backoff):
        messages.append(error(
            f"settings.PDR['RETRY_BACKOFF_MAX'] ({backoff_max!r}) is smaller than "
            f"settings.PDR['RETRY_BACKOFF'] ({backoff!r})."))
    return messages


def _configured_rows(app_configs, databases, model, *fields, order_by=()):
    """``fields`` of every ``model`` row, for a database check; None when the check does
    not run (no databases given, another app's check) or the table cannot be read."""
    if not databases:
        return None
    if app_configs is not None and not any(config.name == "django_pdr" for config in app_configs):
        return None  # `manage.py check other_app --database ...`
    alias = router.db_for_read(model)
    if alias not in databases:
        return None
    try:
        with transaction.atomic(using=alias):  # a savepoint, when called inside a transaction
            return list(model.objects.using(alias).order_by(*order_by).values_list(*fields))
    except DatabaseError:
        # Not migrated yet (no table) or unreachable: nothing configured that we can check.
        return None


@register(Tags.database)
def check_database_drivers(app_configs=None, databases=None, **kwargs):
    """W003, W004: every kind of configured Database can be used by this installation."""
    from .models import Database

    rows = _configured_rows(app_configs, databases, Database, "name", "kind", order_by=["name"])
    if not rows:
        return []
    by_kind: dict[str, list[str]] = {}
    for name, kind in rows:
        by_kind.setdefault(kind, []).append(name)

    messages = []
    for kind, names in sorted(by_kind.items()):
        listed = ", ".join(repr(n) for n in names)
        try:
            problem = driver_import_error(kind)
        except NotImplementedError:
            from .dialects import KINDS

            messages.append(Warning(
                f"Database(s) {listed} have kind {kind!r}, which this version of django-pdr "
                f"does not support: they cannot be replicated.",
                hint=f"Change their kind to one of {', '.join(sorted(KINDS))}, or delete them.",
                id="django_pdr.W004",
            ))
            continue
        if problem is not None:
            messages.append(Warning(
                f"Database(s) {listed} need the {kind} driver (Python module "
                f"{problem.name or '?'!r}), which cannot be imported: {problem}.",
                hint=install_hint(kind),
                id="django_pdr.W003",
            ))
    return messages


@register(Tags.database)
def check_capture_warnings(app_configs=None, databases=None, **kwargs):
    """W005: source tables whose capture cannot see every change (found at install, e.g.
    foreign-key cascades on MySQL/MariaDB)."""
    from .models import SourceTable

    rows = _configured_rows(app_configs, databases, SourceTable, "database__name", "schema", "table",
                            "capture_warnings", order_by=["database__name", "schema", "table"])
    messages = []
    for database, schema, table, found in rows or ():
        if not found:
            continue
        name = f"{schema}.{table}" if schema else table
        messages.append(Warning(
            f"Source table {name!r} of database {database!r} has changes its capture triggers never see: "
            + " ".join(str(w) for w in found),
            hint="Those changes are not replicated. Run 'manage.py pdr-verify --repair' after them (or make "
                 "them through statements the triggers see), and reinstall capture once the table changed; "
                 "see docs/checks.md.",
            id="django_pdr.W005",
        ))
    return messages


def driver_import_error(kind: str) -> ImportError | None:
    """The ImportError raised by importing the driver of ``kind``, or None when it imports.

    Raises NotImplementedError for an unknown kind."""
    import sqlalchemy as sa

    from .dialects import dialect_for_kind

    cls = dialect_for_kind(kind)
    try:
        sa.engine.URL.create(cls.driver).get_dialect().import_dbapi()
    except ImportError as exc:
        return exc
    except sa.exc.NoSuchModuleError as exc:  # the SQLAlchemy dialect is a package of its own
        return ImportError(str(exc), name=cls.driver.partition("+")[0])
    return None


def install_hint(kind: str) -> str:
    from .dialects import dialect_for_kind

    return dialect_for_kind(kind).install_hint
