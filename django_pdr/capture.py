"""Install, remove and inspect capture objects (event table + triggers).

SQL comes from the dialect; this module executes it.  Install is idempotent
and all-or-nothing: on any failure every object it created is removed again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from django.utils import timezone

from . import conf
from .connections import begin, connect
from .dialects import CAPTURE_VERSION, REGISTRY_TABLE, get_dialect
from .errors import CaptureError, ConfigurationError
from .schema import drift, reflect_table

logger = logging.getLogger("django_pdr.capture")

INSTALLED, OUTDATED, MISSING, PARTIAL = "installed", "outdated", "missing", "partial"
#: What ``install`` did: created capture where there was none, replaced (mended or upgraded)
#: what was there, or found it current and changed nothing.
CREATED, REPLACED, UNCHANGED = "created", "replaced", "unchanged"


@dataclass
class CapturePlan:
    """Everything install needs, rendered without executing anything."""

    dialect: object
    schema: str | None
    source: sa.Table
    event: sa.Table
    registry: sa.Table
    names: object
    key_names: list[str]
    create_event_table: str
    upgrade_event_table: list[str]
    create_triggers: list[str]
    drop_triggers: list[str]
    #: the event table's storage parameters (``Dialect.event_table_options``); not part of the
    #: fingerprint: they change how the engine keeps the table, not what is captured
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        text = "\n".join([f"v{CAPTURE_VERSION}", self.create_event_table, *self.upgrade_event_table,
                          *self.create_triggers])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def set_options(self, options: dict | None = None) -> list[str]:
        """Statements setting ``options`` (default: all of them) on the event table."""
        return self.dialect.set_event_table_options(self.event, self.options if options is None else options)

    def statements(self):
        """Every install statement, in order (for display and offline mode)."""
        return [self.create_event_table, *self.upgrade_event_table, *self.set_options(),
                *self.create_triggers]




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
    for name in (names.event_table, *names.triggers, names.function, REGISTRY_TABLE):
        if name and not dialect.identifier_fits(name):
            raise ConfigurationError(f"Generated name {name!r} is too long for {dialect.label}.")
    key_columns = [source.c[n] for n in key_names]
    event = dialect.event_table(sa.MetaData(), schema, names, key_columns)
    create_event = dialect.create_table_statement(event, if_not_exists=True)
    return CapturePlan(
        dialect=dialect, schema=schema, source=source, event=event, names=names, key_names=key_names,
        registry=registry_table(dialect, schema),
        create_event_table=create_event,
        upgrade_event_table=dialect.event_table_upgrades(source, event),
        create_triggers=dialect.create_trigger_statements(source, event, names, key_names,
                                                          notify=bool(conf.get("NOTIFY"))),
        drop_triggers=dialect.drop_trigger_statements(source, names),
        options=dict(dialect.event_table_options),
    )


def _existing_triggers(conn, capture: CapturePlan) -> set[str]:
    """Our triggers that exist and fire (a disabled trigger does not count)."""
    query = capture.dialect.existing_triggers_query(capture.schema, capture.source.name, capture.names)
    return {row[0] for row in conn.execute(query)} & set(capture.names.triggers)


def _event_table_exists(conn, capture: CapturePlan) -> bool:
    return sa.inspect(conn).has_table(capture.event.name, schema=capture.schema)


def _event_columns_missing(conn, capture: CapturePlan) -> bool:
    columns = sa.inspect(conn).get_columns(capture.event.name, schema=capture.schema)
    return not {c["name"] for c in columns} >= {c.name for c in capture.event.columns}


def _options_missing(conn, capture: CapturePlan) -> dict:
    """The storage parameters of ``capture.options`` the installed event table lacks
    (a parameter set to another value, by hand, counts as set)."""
    if not capture.options:
        return {}
    row = conn.execute(capture.dialect.event_table_options_query(capture.schema, capture.event.name)).first()
    if row is None:
        return dict(capture.options)
    present = {str(option).split("=", 1)[0] for option in (row[0] or ())}
    return {name: value for name, value in capture.options.items() if name not in present}


def has_key_arrays(conn, capture: CapturePlan) -> bool:
    """Whether the installed event table has the key-array columns of ``capture.event``
    (False before the first install of a version that writes them)."""
    return capture.dialect.has_bulk_events(capture.event) and not _event_columns_missing(conn, capture)


# -- the registry: what is installed, in the source database itself ----------------

@dataclass(frozen=True)
class Registration:
    """The registry row of one event table (``pdr_capture`` in the source schema).

    ``incarnation`` identifies the event table's id sequence: a new one whenever the
    capture may have stopped (installed anew, or its triggers were missing), so that a
    checkpoint of an earlier incarnation is never read against it.  ``purged_through``:
    every event id at or below it has been purged (updated in the purge's own
    transaction)."""

    incarnation: str
    purged_through: int
    fingerprint: str


def registry_table(dialect, schema) -> sa.Table:
    return sa.Table(
        REGISTRY_TABLE, sa.MetaData(),
        sa.Column("event_table", sa.String(255), primary_key=True),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("installed_at", sa.DateTime(), nullable=False),
        schema=schema, **dialect.event_table_kwargs(),
    )


def registration(conn, capture: CapturePlan) -> Registration | None:
    """The registry row of ``capture``'s event table, or None (not installed by this
    version, or removed).  Read in ``conn``'s transaction (the caller ends it)."""
    table = capture.registry
    try:
        row = conn.execute(sa.select(table.c.incarnation, table.c.purged_through, table.c.fingerprint)
                           .where(table.c.event_table == capture.event.name)).first()
    except sa.exc.DBAPIError as exc:
        conn.rollback()
        if exc.connection_invalidated or sa.inspect(conn).has_table(table.name, schema=capture.schema):
            raise
        return None  # no registry table in this schema
    return Registration(row[0], int(row[1]), row[2]) if row else None


def _register(conn, capture: CapturePlan, incarnation: str, purged_through: int, fingerprint: str | None = None):
    capture.registry.create(conn, checkfirst=True)
    row = {"event_table": capture.event.name, "incarnation": incarnation, "purged_through": purged_through,
           "fingerprint": fingerprint or capture.fingerprint, "installed_at": timezone.now().replace(tzinfo=None)}
    for statement, params in capture.dialect.upsert_batches(
            capture.registry, ["event_table"], ["incarnation", "purged_through", "fingerprint", "installed_at"],
            [row]):
        conn.execute(statement, params)


def _unregister(conn, capture: CapturePlan):
    """Delete the registry row; the registry table too when no row is left."""
    table = capture.registry
    if not sa.inspect(conn).has_table(table.name, schema=capture.schema):
        return
    conn.execute(sa.delete(table).where(table.c.event_table == capture.event.name))
    if conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0:
        table.drop(conn)


NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class Installed:
    """What is installed now for one source table (read by ``inspect``)."""

    capture: CapturePlan
    triggers: frozenset  # our triggers that exist and fire
    has_events: bool
    registered: Registration | None
    options_missing: dict = dataclasses.field(default_factory=dict)  # storage parameters not set

    @property
    def missing(self) -> str | None:
        """None when every change of the source table is captured now; else what is
        missing, in words."""
        absent = [t for t in self.capture.names.row_triggers if t not in self.triggers]
        if absent:
            return (f"trigger(s) {', '.join(absent)} are missing or disabled on "
                    f"{self.capture.source.fullname!r}")
        if not self.has_events:
            return f"event table {self.capture.event.name!r} is missing"
        return None

    @property
    def needs(self) -> tuple[str, str] | None:
        """(kind, detail) of what ``install`` would mend — kind NOT_INSTALLED, PARTIAL or
        OUTDATED, detail in words — or None when the installed capture is current.  The installed
        fingerprint is the one in the source database's registry."""
        missing = self.missing
        if missing and self.registered is None:
            return NOT_INSTALLED, ""
        if missing:
            return PARTIAL, missing
        if self.registered is None:
            return OUTDATED, "installed by an earlier release (no registry row)"
        if (self.registered.fingerprint != self.capture.fingerprint
                or len(self.triggers) < len(self.capture.names.triggers)):
            return OUTDATED, "installed by another release or with other settings"
        return None


def inspect(conn, capture: CapturePlan, options: bool = False) -> Installed:
    """What is installed for ``capture``, read in ``conn``'s transaction (the caller ends it);
    ``options``: the event table's storage parameters too (a worker's pass does not need them)."""
    has_events = _event_table_exists(conn, capture)
    return Installed(capture, frozenset(_existing_triggers(conn, capture)), has_events,
                     registration(conn, capture),
                     _options_missing(conn, capture) if has_events and options else {})


def status(source_table) -> str:
    """INSTALLED, OUTDATED (installed SQL differs from what would be installed now, or the
    table's structure changed), PARTIAL (some objects missing) or MISSING."""
    with connect(source_table.database) as conn:
        capture = plan(conn, source_table)
        state = inspect(conn, capture)
    if not state.triggers and not state.has_events:
        return MISSING
    needs = state.needs
    if needs is not None:
        return OUTDATED if needs[0] == OUTDATED else PARTIAL
    added, removed = drift(source_table, capture.source)
    if added or removed:
        return OUTDATED  # the table's structure changed: see pdr-sync-schema
    return INSTALLED


def needed(source_table) -> str | None:
    """What ``install`` would mend now, in words, or None (see ``Installed.needs``; also
    storage parameters of the event table not set yet, which the worker does not need)."""
    with connect(source_table.database) as conn:
        state = inspect(conn, plan(conn, source_table), options=True)
    needs = state.needs
    if needs is None and state.options_missing:
        return f"{OUTDATED}: event table storage parameters not set ({', '.join(state.options_missing)})"
    if needs is None:
        return None
    kind, detail = needs
    return f"{kind}: {detail}" if detail else kind


def statements(source_table) -> list[str]:
    """The SQL ``install`` would run for ``source_table`` (for display; nothing executed)."""
    with connect(source_table.database) as conn:
        capture = plan(conn, source_table)
    return capture.statements()


def install(source_table, *, force: bool = False) -> str:
    """Create the event table and triggers; return CREATED, REPLACED or UNCHANGED.  Idempotent:
    a second call finds the capture current and returns UNCHANGED (``force`` replaces it anyway).

    Capture that never stopped (every row trigger in place, the event table and its
    registry row present) is replaced in place and keeps its incarnation, where the
    engine replaces triggers atomically.  Otherwise changes may have gone uncaptured
    (or the event table is new and its ids start again): a new incarnation makes every
    reflection of the table resync (see ``engine.positions``).

    Raises CaptureError (nothing left behind) when the engine refuses."""
    database = source_table.database
    with connect(database) as conn:
        capture = plan(conn, source_table)
        triggers = _existing_triggers(conn, capture)
        had_events = _event_table_exists(conn, capture)
        registered = registration(conn, capture)
        # an upgrade locks the event table: only when a column is missing
        upgrade = had_events and bool(capture.upgrade_event_table) and _event_columns_missing(conn, capture)
        options = _options_missing(conn, capture) if had_events else dict(capture.options)
        blind_spots = capture.dialect.capture_blind_spots(conn, capture.source)  # shown in the admin
        conn.rollback()
        never_stopped = had_events and set(capture.names.row_triggers) <= triggers
        if registered is None and never_stopped:
            # installed by a version before the registry: adopt it (checkpoints written
            # before have no incarnation and adopt the current one)
            fingerprint = source_table.installed_fingerprint
        else:
            fingerprint = registered.fingerprint if registered else ""
        up_to_date = (never_stopped and fingerprint == capture.fingerprint
                      and len(triggers) == len(capture.names.triggers) and registered is not None)
        if not up_to_date or force:
            keep = never_stopped and (registered is None or capture.dialect.replaces_triggers_atomically)
            incarnation = registered.incarnation if keep and registered else uuid.uuid4().hex
            if not had_events:
                purged = 0  # a new event table: its ids start again
            else:
                purged = registered.purged_through if registered else int(source_table.purged_through or 0)
            try:
                with begin(conn):
                    # the registry first: a reader that sees the new objects sees the new incarnation
                    _register(conn, capture, incarnation, purged)
                    if not had_events:
                        conn.exec_driver_sql(capture.create_event_table)
                    for statement in capture.upgrade_event_table if upgrade else ():
                        conn.exec_driver_sql(statement)
                    for statement in capture.set_options(options):
                        conn.exec_driver_sql(statement)
                    if triggers and capture.dialect.replace_needs_drop():
                        for statement in capture.drop_triggers:
                            conn.exec_driver_sql(statement)
                    for statement in capture.create_triggers:
                        conn.exec_driver_sql(statement)
            except Exception as exc:
                _compensate(conn, capture, keep_triggers=triggers, drop_event_table=not had_events,
                            registered=registered)
                hint = capture.dialect.explain_error(exc)
                detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                raise CaptureError(
                    f"Could not install capture on {capture.source.fullname!r} in {database.describe()}: "
                    f"{detail}." + (f" {hint}" if hint else "") + " Nothing was left installed."
                ) from None
            if incarnation != (registered.incarnation if registered else None) and registered is not None:
                logger.warning("capture on %s was not complete (or its event table is new): new incarnation "
                               "%s; its reflections resync", source_table, incarnation)
            logger.info("installed capture on %s (event table %s)", source_table, capture.event.name)
            outcome = REPLACED if (had_events or triggers) else CREATED
        else:
            incarnation, purged = registered.incarnation, registered.purged_through
            outcome = UNCHANGED
            if options:  # the capture is current; only the event table's storage parameters are set
                try:
                    with begin(conn):
                        for statement in capture.set_options(options):
                            conn.exec_driver_sql(statement)
                except Exception as exc:
                    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                    raise CaptureError(f"Could not set the storage parameters of event table "
                                       f"{capture.event.name!r} in {database.describe()}: {detail}."
                                       ) from None
                logger.info("set storage parameters %s of event table %s", ", ".join(options),
                            capture.event.name)
                outcome = REPLACED
    source_table.key_columns = capture.key_names
    source_table.columns = [{"name": c.name, "type": str(c.type.compile(dialect=conn.dialect)),
                             "nullable": bool(c.nullable)} for c in capture.source.columns]
    source_table.event_table = capture.event.name
    source_table.installed_fingerprint = capture.fingerprint
    source_table.installed_at = timezone.now()
    source_table.incarnation = incarnation
    source_table.purged_through = purged
    source_table.capture_warnings = blind_spots
    if source_table.pk:
        source_table.save(update_fields=["key_columns", "columns", "event_table", "installed_fingerprint",
                                         "installed_at", "incarnation", "purged_through", "capture_warnings"])
    return outcome


def _compensate(conn, capture, *, keep_triggers: set, drop_event_table: bool, registered):
    """Best-effort removal of what a failed install created (DDL is not transactional
    everywhere); triggers that existed before the install are left alone."""
    created = [t for t in capture.names.triggers if t not in keep_triggers]
    statements = capture.dialect.drop_trigger_statements(capture.source, capture.names, triggers=created)
    if drop_event_table:
        statements.append(capture.dialect.drop_table_statement(capture.event, if_exists=True))
    for statement in statements:
        try:
            with begin(conn):
                conn.exec_driver_sql(statement)
        except Exception:  # already absent, or the connection is gone
            logger.debug("cleanup statement failed: %s", statement, exc_info=True)
    try:  # the registry as it was (engines without transactional DDL committed the new row)
        with begin(conn):
            if registered is None:
                _unregister(conn, capture)
            else:
                _register(conn, capture, registered.incarnation, registered.purged_through,
                          registered.fingerprint)
    except Exception:
        logger.debug("cleanup of the registry row failed", exc_info=True)


def uninstall(source_table, *, keep_events: bool = False) -> None:
    """Remove the triggers (and the event table unless ``keep_events``)."""
    database = source_table.database
    with connect(database) as conn:
        capture = plan(conn, source_table)
        conn.rollback()
        try:
            with begin(conn):
                # the registry row first: a reader then finds the capture missing, never an
                # event table of another incarnation under the old one
                _unregister(conn, capture)
                for statement in capture.drop_triggers:
                    conn.exec_driver_sql(statement)
                if not keep_events:
                    conn.exec_driver_sql(capture.dialect.drop_table_statement(capture.event, if_exists=True))
        except Exception as exc:
            raise CaptureError(
                f"Could not remove capture from {capture.source.fullname!r} in {database.describe()}: "
                f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}"
            ) from None
    logger.info("removed capture from %s", source_table)
    source_table.installed_fingerprint = ""
    source_table.installed_at = None
    source_table.incarnation = ""
    if source_table.pk:
        source_table.save(update_fields=["installed_fingerprint", "installed_at", "incarnation"])

