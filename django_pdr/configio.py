"""Export and import of the configuration (Databases, SourceTables, Reflections) as JSON.

Only configuration travels, never state: progress, checkpoints, errors, leases
and discovered columns stay where they are (the checkpoint of a reflection lives
in its destination database under the reflection's ``uid``, so a reflection
imported with the same ``uid`` on another site resumes where it was).

Natural keys: a Database by ``name``; a SourceTable by (database name, schema,
table); a Reflection by ``uid``.  Credentials (user name, password, and driver
options that look secret) are left out unless asked for; on import, a secret the
file does not carry keeps its stored value.

``export_config()`` and ``import_config()`` are what ``manage.py pdr-export`` and
``manage.py pdr-import`` call.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import IntegrityError, router, transaction

from . import __version__
from .errors import ConfigurationError

FORMAT = "django-pdr-config"
FORMAT_VERSION = 1

#: A driver option whose name contains one of these words is a secret.
SECRET_OPTION_WORDS = ("password", "passwd", "passphrase", "secret", "token")

SECRET_FIELDS = ("username", "password")
#: Editable fields that are state, not configuration.
STATE_FIELDS = ("resync_requested",)


def config_fields(model, *, exclude=()) -> list[str]:
    """The configuration fields of ``model``: editable, concrete, not relations, not state.

    Derived from the model so that a configuration field added later travels too."""
    return [f.name for f in model._meta.concrete_fields
            if f.editable and not f.is_relation and not f.primary_key
            and f.name not in STATE_FIELDS and f.name not in exclude]


def database_fields() -> list[str]:
    from .models import Database

    return config_fields(Database, exclude=("name", *SECRET_FIELDS))


def reflection_fields() -> list[str]:
    from .models import Reflection

    return config_fields(Reflection)


class ConfigFileError(ConfigurationError):
    """A configuration file cannot be imported as written (nothing was changed)."""


def is_secret_option(name) -> bool:
    lowered = str(name).lower()
    return any(word in lowered for word in SECRET_OPTION_WORDS)


# -- export -----------------------------------------------------------------
def export_config(*, include_secrets: bool = False) -> dict:
    """The configuration as a JSON-serialisable dict (secrets only if ``include_secrets``)."""
    from .models import Database, Reflection, SourceTable

    databases = Database.objects.order_by("name")
    if not include_secrets:
        databases = databases.defer(*SECRET_FIELDS)  # not even decrypted
    exported = []
    for db in databases:
        entry = {"name": db.name, **{name: getattr(db, name) for name in database_fields()}}
        if include_secrets:
            entry["username"] = db.username or ""
            entry["password"] = db.password or ""
        elif isinstance(entry.get("options"), dict):
            entry["options"] = {k: v for k, v in entry["options"].items() if not is_secret_option(k)}
        exported.append(entry)

    source_tables = [
        {"database": st.database.name, "schema": st.schema, "table": st.table}
        for st in SourceTable.objects.select_related("database").only(
            "schema", "table", "database__name").order_by("database__name", "schema", "table")
    ]
    reflections = [
        {
            "uid": str(r.uid),
            "source": {"database": r.source.database.name, "schema": r.source.schema,
                       "table": r.source.table},
            "destination": r.destination.name,
            **{name: getattr(r, name) for name in reflection_fields()},
        }
        for r in Reflection.objects.select_related("source__database", "destination").only(
            "uid", "source__schema", "source__table", "source__database__name", "destination__name",
            *reflection_fields()).order_by("id")
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "django_pdr_version": __version__,
        "includes_secrets": include_secrets,
        "databases": exported,
        "source_tables": source_tables,
        "reflections": reflections,
    }


def dumps(config: dict) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


# -- import -----------------------------------------------------------------
@dataclass
class ImportResult:
    created: dict = field(default_factory=lambda: {"databases": 0, "source_tables": 0, "reflections": 0})
    updated: dict = field(default_factory=lambda: {"databases": 0, "source_tables": 0, "reflections": 0})
    unchanged: dict = field(default_factory=lambda: {"databases": 0, "source_tables": 0, "reflections": 0})
    #: Names of databases created without a password (to be completed in the admin).
    without_credentials: list = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for section, label in (("databases", "database(s)"), ("source_tables", "source table(s)"),
                               ("reflections", "reflection(s)")):
            parts.append(f"{label}: {self.created[section]} created, {self.updated[section]} updated, "
                         f"{self.unchanged[section]} unchanged")
        return "; ".join(parts)


def loads(text: str) -> dict:
    """Parse a configuration file's text; ConfigFileError for anything but a config object."""
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigFileError(f"The file is not valid JSON: {exc}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ConfigFileError(
            f"The file is not a django-pdr configuration (expected a JSON object with "
            f'"format": "{FORMAT}", as written by manage.py pdr-export).')
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigFileError(
            f"Unsupported format_version {version!r}: this django-pdr ({__version__}) reads "
            f"version {FORMAT_VERSION}.")
    return config


def import_config(config: dict, *, dry_run: bool = False) -> ImportResult:
    """Create or update every object of ``config`` (as returned by :func:`loads`) in one
    transaction: on any error nothing is changed.  ``dry_run`` rolls back at the end."""
    from .models import Database

    result = ImportResult()
    with transaction.atomic(using=router.db_for_write(Database)):
        _Importer(result).run(config)
        if dry_run:
            transaction.set_rollback(True, using=router.db_for_write(Database))
    return result


def _section(config, name) -> list:
    value = config.get(name, [])
    if not isinstance(value, list):
        raise ConfigFileError(f'"{name}" must be a list.')
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ConfigFileError(f"{name}[{index}] must be an object.")
    return value


def _text(entry, key, where, *, required=False, default=""):
    value = entry.get(key, default)
    if value is None and not required:
        value = default
    if not isinstance(value, str) or (required and not value):
        raise ConfigFileError(f"{where}: {key!r} must be a {'non-empty ' if required else ''}string.")
    return value


def _validation_message(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {' '.join(str(m) for m in messages)}"
                         for name, messages in exc.message_dict.items())
    return " ".join(exc.messages)


def _assign(obj, name, value, where):
    """Set field ``name`` from a JSON value, checking its JSON type (the field's own
    validation, choices and lengths included, follows in ``clean_fields``)."""
    from django.db import models

    field = obj._meta.get_field(name)
    if value is None and not field.null:
        if isinstance(field, (models.CharField, models.TextField)):
            value = ""
        elif not isinstance(field, models.JSONField):
            raise ConfigFileError(f"{where}: {name!r} must not be null.")
    if value is not None:
        if isinstance(field, models.BooleanField):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(field, (models.IntegerField, models.FloatField)):
            ok = isinstance(value, (int, float) if isinstance(field, models.FloatField) else int) \
                and not isinstance(value, bool)
            wanted = "a number" if isinstance(field, models.FloatField) else "an integer"
            positive = (models.PositiveIntegerField, models.PositiveSmallIntegerField,
                        models.PositiveBigIntegerField)
            if isinstance(field, positive):  # Django 4.2 on SQLite leaves it to a CHECK constraint
                ok = ok and value >= 0
                wanted = "a non-negative integer"
            wanted += " or null" if field.null else ""
        elif isinstance(field, (models.CharField, models.TextField)):
            ok, wanted = isinstance(value, str), "a string"
        else:
            ok, wanted = True, ""
        if not ok:
            raise ConfigFileError(f"{where}: {name!r} must be {wanted}, not {value!r}.")
    setattr(obj, name, value)


def _save(obj, where):
    """Save; a constraint the validation did not foresee still names the entry."""
    try:
        with transaction.atomic(using=router.db_for_write(type(obj))):
            obj.save()
    except IntegrityError as exc:
        raise ConfigFileError(f"{where}: the database refused it: {exc}.") from None


class _Importer:
    def __init__(self, result: ImportResult):
        self.result = result

    def run(self, config):
        databases = _section(config, "databases")
        source_tables = _section(config, "source_tables")
        reflections = _section(config, "reflections")
        known = {
            "databases": {"name", *database_fields(), *SECRET_FIELDS},
            "source_tables": {"database", "schema", "table"},
            "reflections": {"uid", "source", "destination", *reflection_fields()},
        }
        for name, entries in (("databases", databases), ("source_tables", source_tables),
                              ("reflections", reflections)):
            for index, entry in enumerate(entries):
                unknown = sorted(set(entry) - known[name])
                if unknown:  # a typo, or a field of a newer django-pdr: refuse rather than drop it
                    raise ConfigFileError(
                        f"{name}[{index}]: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(sorted(known[name]))}.")
        for index, entry in enumerate(databases):
            self.database(entry, f"databases[{index}]")
        for index, entry in enumerate(source_tables):
            self.source_table(entry, f"source_tables[{index}]")
        for index, entry in enumerate(reflections):
            self.reflection(entry, f"reflections[{index}]")

    # helpers
    def _count(self, section, created, changed):
        bucket = self.result.created if created else self.result.updated if changed else self.result.unchanged
        bucket[section] += 1

    def _validate(self, obj, where, *, exclude=()):
        """Field and uniqueness validation, without ``Model.clean`` (no live database is contacted)."""
        try:
            obj.clean_fields(exclude=list(exclude))
            obj.validate_unique(exclude=list(exclude))
            if hasattr(obj, "validate_constraints"):
                obj.validate_constraints(exclude=list(exclude))
        except ValidationError as exc:
            raise ConfigFileError(f"{where}: {_validation_message(exc)}") from None

    def _lookup_database(self, name, where, key):
        from .models import Database

        if not isinstance(name, str) or not name:
            raise ConfigFileError(f"{where}: {key!r} must be the name of a database.")
        try:
            return Database.objects.defer(*SECRET_FIELDS).get(name=name)
        except Database.DoesNotExist:
            raise ConfigFileError(
                f"{where}: unknown database {name!r} in {key!r}: it is neither in the file's "
                f'"databases" nor configured on this site.') from None

    def _lookup_source(self, ref, where):
        from .models import SourceTable

        if not isinstance(ref, dict):
            raise ConfigFileError(
                f'{where}: "source" must be an object with "database", "schema" and "table".')
        database = self._lookup_database(ref.get("database"), where, "source.database")
        schema = _text(ref, "schema", where)
        table = _text(ref, "table", where, required=True)
        try:
            return SourceTable.objects.get(database=database, schema=schema, table=table)
        except SourceTable.DoesNotExist:
            qualified = f"{schema}.{table}" if schema else table
            raise ConfigFileError(
                f"{where}: unknown source table {qualified!r} of database {database.name!r}: it is neither "
                f'in the file\'s "source_tables" nor configured on this site.') from None

    # sections
    def database(self, entry, where):
        from .models import Database

        name = _text(entry, "name", where, required=True)
        where = f"{where} ({name!r})"
        obj = Database.objects.defer(*SECRET_FIELDS).filter(name=name).first()
        created = obj is None
        if created:
            obj = Database(name=name)
        fields = database_fields()
        before = {f: getattr(obj, f) for f in fields}
        for key in fields:
            if key not in entry:
                continue
            if key == "options":
                options = entry["options"] if entry["options"] is not None else {}
                if not isinstance(options, dict):
                    raise ConfigFileError(f"{where}: 'options' must be an object.")
                kept = {k: v for k, v in (obj.options or {}).items()
                        if is_secret_option(k) and k not in options}
                obj.options = {**options, **kept}
            else:
                _assign(obj, key, entry[key], where)
        if not obj.kind:
            raise ConfigFileError(f"{where}: 'kind' must be a non-empty string.")
        secrets_changed = False
        for key in SECRET_FIELDS:
            if key in entry:
                value = _text(entry, key, where)
                if created or (getattr(obj, key) or "") != value:  # reading decrypts the stored value
                    setattr(obj, key, value)
                    secrets_changed = True
            elif created:
                setattr(obj, key, "")
        self._validate(obj, where, exclude=obj.get_deferred_fields())
        try:
            obj.clean()
        except ValidationError as exc:
            raise ConfigFileError(f"{where}: {_validation_message(exc)}") from None
        changed = secrets_changed or before != {f: getattr(obj, f) for f in fields}
        if created or changed:
            _save(obj, where)
        if created and not entry.get("password") and not obj.file_based:
            self.result.without_credentials.append(name)
        self._count("databases", created, changed)

    def source_table(self, entry, where):
        from .models import SourceTable

        database = self._lookup_database(entry.get("database"), where, "database")
        schema = _text(entry, "schema", where)
        table = _text(entry, "table", where, required=True)
        obj = SourceTable.objects.filter(database=database, schema=schema, table=table).first()
        created = obj is None
        if created:  # everything else about a source table is discovered from the live table
            obj = SourceTable(database=database, schema=schema, table=table)
            self._validate(obj, f"{where} ({table!r})")
            _save(obj, where)
        self._count("source_tables", created, False)

    def reflection(self, entry, where):
        from .models import Reflection

        raw_uid = entry.get("uid")
        try:
            uid = uuid.UUID(str(raw_uid)) if raw_uid not in (None, "") else None
        except ValueError:
            raise ConfigFileError(f"{where}: 'uid' {raw_uid!r} is not a UUID.") from None
        source = self._lookup_source(entry.get("source"), where)
        destination = self._lookup_database(entry.get("destination"), where, "destination")
        obj = Reflection.objects.filter(uid=uid).first() if uid else None
        created = obj is None
        if created:
            obj = Reflection(uid=uid) if uid else Reflection()
        fields = ("source_id", "destination_id", *reflection_fields())
        before = {f: getattr(obj, f, None) for f in fields}
        obj.source, obj.destination = source, destination
        for key in reflection_fields():
            if key in entry:
                _assign(obj, key, entry[key], where)
        if not obj.destination_table:
            raise ConfigFileError(f"{where}: 'destination_table' must be a non-empty string.")
        if (obj.mapping or "").strip():
            try:
                spec = json.loads(obj.mapping)
            except ValueError as exc:
                raise ConfigFileError(f"{where}: 'mapping' is not valid JSON: {exc}.") from None
            if not isinstance(spec, dict) or not isinstance(spec.get("columns", {}), dict):
                raise ConfigFileError(
                    f"{where}: 'mapping' must be a JSON object like "
                    '{"columns": {"destination_column": "source_column"}}.')
        self._validate(obj, where)
        changed = before != {f: getattr(obj, f, None) for f in fields}
        if created or changed:
            _save(obj, where)
        self._count("reflections", created, changed)
