"""Configuration and state of replication.

``Database``: a connection.  ``SourceTable``: a table whose changes are captured
by triggers.  ``Reflection``: a source table mirrored into a destination table.
The models hold configuration and a *copy* of the progress for display; the
authoritative checkpoint lives in the destination database, written in the same
transaction as the rows it covers.
"""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from django.core.exceptions import ValidationError
from django.db import models, router
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from pgcrypto import fields as encrypted

from .dialects import KINDS


class Database(models.Model):
    KIND_CHOICES = [(kind, cls.kind_label) for kind, cls in KINDS.items()]

    name = models.CharField(_("name"), max_length=100, unique=True,
                            help_text=_("A unique handle for this connection."))
    kind = models.CharField(_("kind"), max_length=20, choices=KIND_CHOICES)
    host = models.CharField(_("host"), max_length=255, blank=True)
    port = models.PositiveIntegerField(_("port"), null=True, blank=True)
    database = models.CharField(
        _("database"), max_length=1024, blank=True,
        help_text=_("Database name; for SQLite, the path of the database file."))
    username = encrypted.EncryptedCharField(_("user"), max_length=255, blank=True)
    password = encrypted.EncryptedTextField(_("password"), blank=True)
    options = models.JSONField(
        _("driver options"), default=dict, blank=True,
        help_text=_('Extra driver options added to the connection URL, e.g. {"sslmode": "require"}.'))
    create_file = models.BooleanField(
        _("create the file if it does not exist"), default=False,
        help_text=_("SQLite only. Leave this off for an existing database: a path that does not exist "
                    "is then an error, not a new empty file. Turn it on for a new destination file."))
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_check_ok = models.BooleanField(null=True, blank=True, editable=False)
    last_check_message = models.TextField(blank=True, editable=False)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("database")

    def __str__(self):
        return self.name

    @classmethod
    def from_url(cls, name: str, url: str, **fields) -> "Database":
        """A validated, saved ``Database`` from a SQLAlchemy URL, e.g.
        ``Database.from_url("shop", "postgresql://pdr:secret@db1:5432/shop")`` or
        ``Database.from_url("reporting", "sqlite:////srv/reporting.sqlite3", create_file=True)``.

        The user and password go into the encrypted fields, query arguments into ``options``;
        ``fields`` sets any other field.  Raises ValidationError (nothing saved) on a bad URL
        or a name already taken."""
        from .dialects import kind_for_url

        try:
            parsed = sa.engine.make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise ValidationError({"url": _("Not a database URL (%(error)s).") % {"error": exc}}) from None
        kind = kind_for_url(parsed)
        if kind is None:
            raise ValidationError({"kind": _("No supported database kind for a %(scheme)r URL: use one of "
                                             "%(kinds)s.") % {"scheme": parsed.drivername,
                                                              "kinds": ", ".join(KINDS)}})
        database = cls(name=name, kind=kind, host=parsed.host or "", port=parsed.port,
                       database=parsed.database or "", username=parsed.username or "",
                       password=parsed.password or "",
                       options={k: v if isinstance(v, str) else list(v) for k, v in parsed.query.items()})
        for field, value in fields.items():
            setattr(database, field, value)
        database.full_clean()
        database.save()
        return database

    def clean(self):
        if self.kind not in KINDS:
            raise ValidationError({"kind": _("Choose a supported kind.")})
        if self.file_based:
            if not self.database:
                raise ValidationError({"database": _("Give the path of the %(kind)s database file.")
                                       % {"kind": self.get_kind_display()}})
        else:
            if not self.database:
                raise ValidationError({"database": _("Give the name of the database on the server.")})
            if self.create_file:
                raise ValidationError({"create_file": _("Only a database file (SQLite) can be created "
                                                        "by django-pdr: create the database on the server.")})

    def describe(self) -> str:
        """Where this database is, without any credential (safe for logs and errors)."""
        if self.file_based:
            return f"{self.name} ({self.get_kind_display()} file {self.database})"
        where = self.host or "localhost"
        if self.port:
            where = f"{where}:{self.port}"
        return f"{self.name} ({self.get_kind_display()} {self.database} at {where})"

    @property
    def file_based(self) -> bool:
        """A local file (SQLite): no host, port or credentials."""
        return self.kind in KINDS and KINDS[self.kind].file_based

    def url(self):
        from .connections import database_url

        return database_url(self)


class SourceTable(models.Model):
    database = models.ForeignKey(Database, on_delete=models.PROTECT, related_name="source_tables")
    schema = models.CharField(_("schema"), max_length=255, blank=True,
                              help_text=_("Leave blank for the connection's default schema."))
    table = models.CharField(_("table"), max_length=255)
    key_columns = models.JSONField(default=list, blank=True, editable=False,
                                   help_text=_("Primary-key columns, discovered from the live table."))
    columns = models.JSONField(default=list, blank=True, editable=False)
    event_table = models.CharField(max_length=255, blank=True, editable=False)
    installed_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    installed_at = models.DateTimeField(null=True, blank=True, editable=False)
    purged_through = models.BigIntegerField(
        default=0, editable=False, help_text=_("Every event id at or below this has been purged."))
    incarnation = models.CharField(
        max_length=32, blank=True, editable=False,
        help_text=_("Identity of the installed event table (a copy of the source database's registry): "
                    "a new one after the capture was removed and installed again."))
    capture_warnings = models.JSONField(
        default=list, blank=True, editable=False,
        help_text=_("Changes the capture cannot see on this table (found at install), e.g. foreign-key "
                    "cascades on MySQL/MariaDB."))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["database__name", "schema", "table"]
        constraints = [
            models.UniqueConstraint(fields=["database", "schema", "table"], name="pdr_unique_source_table"),
        ]
        verbose_name = _("source table")

    def __str__(self):
        return f"{self.database.name}: {self.qualified_name}"

    @property
    def qualified_name(self):
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def clean(self):
        """Discover the primary key from the live table; refuse a table without one."""
        if not self.database_id or not self.table:
            return
        from .errors import PdrError
        from .schema import discover_source

        try:
            info = discover_source(self.database, self.schema or None, self.table)
        except PdrError as exc:
            raise ValidationError(str(exc))
        self.key_columns = info.key_columns
        self.columns = info.column_summary

    @classmethod
    def add(cls, database, table: str, schema: str = "") -> "SourceTable":
        """Validate, install capture and save, all or nothing: ``SourceTable.add(shop, "orders")``.

        The primary key is discovered from the live table (ValidationError without one, or
        for a table already added); capture is installed before the row is saved, and removed
        again if the save fails, so a failure leaves neither a row nor triggers behind."""
        from django.db import transaction

        source = cls(database=database, schema=schema, table=table)
        source.full_clean()
        outcome = source.install()
        try:
            with transaction.atomic(using=router.db_for_write(cls)):
                source.save()
        except BaseException:
            if outcome == "created":  # capture that was there before stays
                source.uninstall()
            raise
        return source

    def install(self, force: bool = False) -> str:
        """Install (or mend, or upgrade) capture on this table: the event table, its triggers
        and the registry row in the source database.  Returns what it did: "created",
        "replaced" or "unchanged" (current already; ``force=True`` replaces it anyway).
        Raises CaptureError, with nothing left behind, when the engine refuses."""
        from .capture import install

        return install(self, force=force)

    @property
    def capture_status(self) -> str:
        """The capture as installed in the source database now: "installed", "outdated",
        "partial" or "missing" (one query to the source database per read)."""
        from .capture import status

        return status(self)

    def uninstall(self):
        from .capture import uninstall

        return uninstall(self)


class Reflection(models.Model):
    DELETE_POLICIES = [
        ("delete", _("delete the destination row")),
        ("nullify", _("set this reflection's columns to NULL")),
        ("ignore", _("ignore deletes (keep the row)")),
    ]
    STATUS_CHOICES = [
        ("new", _("new: initial load pending")),
        ("loading", _("initial load running")),
        ("running", _("replicating")),
        ("error", _("error")),
    ]

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False,
                           help_text=_("Identifies this reflection's checkpoint in the destination."))
    source = models.ForeignKey(SourceTable, on_delete=models.PROTECT, related_name="reflections")
    destination = models.ForeignKey(Database, on_delete=models.PROTECT, related_name="reflections")
    destination_schema = models.CharField(max_length=255, blank=True)
    destination_table = models.CharField(max_length=255)
    active = models.BooleanField(default=True)
    mapping = models.TextField(
        blank=True,
        help_text=_("JSON mapping of destination columns; empty means an exact mirror of all columns."))
    statement = models.TextField(
        blank=True,
        help_text=_("Optional SQL run on the destination for each changed row instead of the upsert, "
                    "with the row's values as named parameters (:column). See docs/transforms.md."))
    delete_statement = models.TextField(
        blank=True,
        help_text=_("Optional SQL run on the destination for each deleted key (:key_column parameters)."))
    delete_policy = models.CharField(max_length=10, choices=DELETE_POLICIES, default="delete")
    batch_size = models.PositiveIntegerField(null=True, blank=True,
                                             help_text=_("Events per batch; empty uses PDR['BATCH_SIZE']."))

    # State (written by the worker; a copy of the destination checkpoint for display).
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default="new", editable=False)
    resync_requested = models.BooleanField(default=False)
    position = models.JSONField(default=dict, blank=True, editable=False)
    load_progress = models.JSONField(default=dict, blank=True, editable=False)
    events_applied = models.BigIntegerField(default=0, editable=False)
    rows_applied = models.BigIntegerField(default=0, editable=False)
    last_applied_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    failures = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(null=True, blank=True, editable=False)
    pending_events = models.BigIntegerField(null=True, blank=True, editable=False)
    lag_seconds = models.FloatField(null=True, blank=True, editable=False,
                                    help_text=_("Age of the oldest pending event."))
    lease_owner = models.CharField(max_length=200, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "destination", "destination_schema", "destination_table"],
                name="pdr_unique_reflection"),
        ]
        verbose_name = _("reflection")

    def __str__(self):
        dest = f"{self.destination_schema}.{self.destination_table}" if self.destination_schema \
            else self.destination_table
        return f"{self.source} → {self.destination.name}: {dest}"

    def record_error(self, message: str, backoff: float):
        self.status = "error"
        self.last_error = message
        self.last_error_at = timezone.now()
        self.failures += 1
        self.next_attempt_at = timezone.now() + timezone.timedelta(seconds=backoff)
        self.save(update_fields=["status", "last_error", "last_error_at", "failures", "next_attempt_at"])


class DeadLetter(models.Model):
    """A source row the destination rejected.  Later events for the same key wait
    behind it (per-key order); a retry re-applies the current source row."""

    reflection = models.ForeignKey(Reflection, on_delete=models.CASCADE, related_name="dead_letters")
    key = models.JSONField(help_text=_("Source primary-key values (JSON-encoded)."))
    key_hash = models.CharField(max_length=64, editable=False)
    error = models.TextField()
    attempts = models.PositiveIntegerField(default=1)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(auto_now=True)
    retry_requested = models.BooleanField(default=False)

    class Meta:
        ordering = ["first_seen"]
        constraints = [
            models.UniqueConstraint(fields=["reflection", "key_hash"], name="pdr_unique_dead_letter"),
        ]
        verbose_name = _("dead-lettered row")

    def __str__(self):
        return f"{self.reflection_id}: {self.key}"


class Sample(models.Model):
    """Lag and throughput of a reflection at one moment (for the dashboard plot)."""

    reflection = models.ForeignKey(Reflection, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True)
    pending_events = models.BigIntegerField(null=True)
    lag_seconds = models.FloatField(null=True)
    events = models.BigIntegerField(default=0, help_text=_("Events applied since the previous sample."))
    rows = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["at"]
        indexes = [models.Index(fields=["reflection", "at"], name="pdr_sample_reflection_at")]
