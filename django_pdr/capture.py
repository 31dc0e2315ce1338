"""Install, remove and inspect capture objects (event table + triggers).

SQL comes from the dialect; this module executes it.  Install is idempotent
and all-or-nothing: on any failure every object it created is removed again.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from django.utils import timezone

from . import conf
from .connections import begin, connect
from .dialects import CAPTURE_VERSION, get_dialect
from .errors import CaptureError, ConfigurationError
from .schema import drift, reflect_table

logger = logging.getLogger("django_pdr.capture")

INSTALLED, OUTDATED, MISSING, PARTIAL = "installed", "outdated", "missing", "partial"


@dataclass
class CapturePlan:
    """Everything install needs, rendered without executing anything."""

    dialect: object
    schema: str | None
    source: sa.Table
    event: sa.Table
    names: object
    key_names: list[str]
    create_event_table: str
    upgrade_event_table: list[str]
    create_triggers: list[str]
    drop_triggers: list[str]

    @property
    def fingerprint(self) -> str:
        text = "\n".join([f"v{CAPTURE_VERSION}", *self.statements()])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def statements(self):
        """Every install statement, in order (for display and offline mode)."""
        return [self.create_event_table, *self.upgrade_event_table, *self.create_triggers]




def plan(conn, source_table) -> CapturePlan:
    """Render the capture objects for ``source_table`` against a live connection."""
    dialect = get_dialect(conn)
    schema = source_table.schema or sa.inspect(conn).default_schema_name
    source = reflect_table(conn, schema, source_table.table, source_table.database.describe())
    key_names = [c.name for c in source.primary_key.columns]
    if not key_names:
        from .errors import NoPrimaryKey

        raise NoPrimaryKey(f"Table {source.fullname!r} has no primary key: add one before installing capture.")
    names = dialect.capture_names(schema, source_table.table)
    for name in (names.event_table, *names.triggers, names.function):
        if name and not dialect.identifier_fits(name):
            raise ConfigurationError(f"Generated name {name!r} is too long for {dialect.label}.")
    key_columns = [source.c[n] for n in key_names]
    event = dialect.event_table(sa.MetaData(), schema, names, key_columns)
    create_event = str(sa.schema.CreateTable(event, if_not_exists=True).compile(dialect=conn.dialect)).strip()
    return CapturePlan(
        dialect=dialect, schema=schema, source=source, event=event, names=names, key_names=key_names,
        create_event_table=create_event,
        upgrade_event_table=dialect.event_table_upgrades(source, event),
        create_triggers=dialect.create_trigger_statements(source, event, names, key_names,
                                                          notify=bool(conf.get("NOTIFY"))),
        drop_triggers=dialect.drop_trigger_statements(source, names),
    )


def _existing_triggers(conn, capture: CapturePlan) -> set[str]:
    query = capture.dialect.existing_triggers_query(capture.schema, capture.source.name, capture.names)
    return {row[0] for row in conn.execute(query)} & set(capture.names.triggers)


def _event_table_exists(conn, capture: CapturePlan) -> bool:
    return sa.inspect(conn).has_table(capture.event.name, schema=capture.schema)


def _event_columns_missing(conn, capture: CapturePlan) -> bool:
    columns = sa.inspect(conn).get_columns(capture.event.name, schema=capture.schema)
    return not {c["name"] for c in columns} >= {c.name for c in capture.event.columns}


def has_key_arrays(conn, capture: CapturePlan) -> bool:
    """Whether the installed event table has the key-array columns of ``capture.event``
    (False before the first install of a version that writes them)."""
    return capture.dialect.has_bulk_events(capture.event) and not _event_columns_missing(conn, capture)


def status(source_table) -> str:
    """INSTALLED, OUTDATED (installed SQL differs from what would be installed now),
    PARTIAL (some objects missing) or MISSING."""
    with connect(source_table.database) as conn:
        capture = plan(conn, source_table)
        triggers = _existing_triggers(conn, capture)
        has_events = _event_table_exists(conn, capture)
    if not triggers and not has_events:
        return MISSING
    if len(triggers) < 3 or not has_events:
        return PARTIAL
    if source_table.installed_fingerprint != capture.fingerprint:
        return OUTDATED
    added, removed = drift(source_table, capture.source)
    if added or removed:
        return OUTDATED  # the table's structure changed: see pdr-sync-schema
    return INSTALLED


def install(source_table, *, force: bool = False) -> str:
    """Create the event table and triggers; return INSTALLED.  Idempotent.

    Raises CaptureError (nothing left behind) when the engine refuses."""
    database = source_table.database
    with connect(database) as conn:
        capture = plan(conn, source_table)
        triggers = _existing_triggers(conn, capture)
        had_events = _event_table_exists(conn, capture)
        # an upgrade locks the event table: only when a column is missing
        upgrade = had_events and bool(capture.upgrade_event_table) and _event_columns_missing(conn, capture)
        conn.rollback()
        up_to_date = (source_table.installed_fingerprint == capture.fingerprint and had_events
                      and len(triggers) == 3)
        if not up_to_date or force:
            try:
                with begin(conn):
                    if not had_events:
                        conn.exec_driver_sql(capture.create_event_table)
                    for statement in capture.upgrade_event_table if upgrade else ():
                        conn.exec_driver_sql(statement)
                    if triggers and capture.dialect.replace_needs_drop():
                        for statement in capture.drop_triggers:
                            conn.exec_driver_sql(statement)
                    for statement in capture.create_triggers:
                        conn.exec_driver_sql(statement)
            except Exception as exc:
                _compensate(conn, capture, keep_triggers=triggers, drop_event_table=not had_events)
                hint = capture.dialect.explain_error(exc)
                detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                raise CaptureError(
                    f"Could not install capture on {capture.source.fullname!r} in {database.describe()}: "
                    f"{detail}." + (f" {hint}" if hint else "") + " Nothing was left installed."
                ) from None
            logger.info("installed capture on %s (event table %s)", source_table, capture.event.name)
    source_table.key_columns = capture.key_names
    source_table.columns = [{"name": c.name, "type": str(c.type.compile(dialect=conn.dialect)),
                             "nullable": bool(c.nullable)} for c in capture.source.columns]
    source_table.event_table = capture.event.name
    source_table.installed_fingerprint = capture.fingerprint
    source_table.installed_at = timezone.now()
    if source_table.pk:
        source_table.save(update_fields=["key_columns", "columns", "event_table", "installed_fingerprint",
                                         "installed_at"])
    return INSTALLED


def _compensate(conn, capture, *, keep_triggers: set, drop_event_table: bool):
    """Best-effort removal of what a failed install created (DDL is not transactional
    everywhere); triggers that existed before the install are left alone."""
    created = [t for t in capture.names.triggers if t not in keep_triggers]
    statements = capture.dialect.drop_trigger_statements(capture.source, capture.names, triggers=created)
    if drop_event_table:
        statements.append(str(sa.schema.DropTable(capture.event, if_exists=True).compile(dialect=conn.dialect)))
    for statement in statements:
        try:
            with begin(conn):
                conn.exec_driver_sql(statement)
        except Exception:  # already absent, or the connection is gone
            logger.debug("cleanup statement failed: %s", statement, exc_info=True)


def uninstall(source_table, *, keep_events: bool = False) -> None:
    """Remove the triggers (and the event table unless ``keep_events``)."""
    database = source_table.database
    with connect(database) as conn:
        capture = plan(conn, source_table)
        conn.rollback()
        try:
            with begin(conn):
                for statement in capture.drop_triggers:
                    conn.exec_driver_sql(statement)
                if not keep_events:
                    conn.exec_driver_sql(str(sa.schema.DropTable(capture.event, if_exists=True)
                                             .compile(dialect=conn.dialect)))
        except Exception as exc:
            raise CaptureError(
                f"Could not remove capture from {capture.source.fullname!r} in {database.describe()}: "
                f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}"
            ) from None
    logger.info("removed capture from %s", source_table)
    source_table.installed_fingerprint = ""
    source_table.installed_at = None
    if source_table.pk:
        source_table.save(update_fields=["installed_fingerprint", "installed_at"])

