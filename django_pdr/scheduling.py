"""Which reflections a running worker serves next, and in what order.

With hundreds of source tables, most of them quiet, a round must neither open every
event table nor let a few busy tables hold the others back.  Before each round the
worker *probes* each source database once: the highest event id of every event table
it serves, the registry rows (incarnation, purged floor) and the triggers that exist and
fire, a few queries whatever the number of tables.  Then:

- **Skipped**: a replicating reflection whose capture triggers are all in place, whose
  checkpoint has no open gap, whose cursor is at or above its event table's highest
  id, with the same incarnation and nothing purged beyond it.  No event can be waiting for it: an id committed later is
  either above the cursor (the highest id grows) or inside an open gap (there is
  none).  A dropped or disabled trigger or a reinstalled capture makes it run at
  once (and fail or resync as a pass does), and so does a destination whose checkpoint
  holds another position than the recorded one (restored from a backup: ``checkpoints``,
  one query per destination every CHECK_SECONDS).  Every reflection still gets a full
  pass about every ``PDR["FULL_PASS_INTERVAL"]`` seconds, spread evenly over the
  interval, which describes its tables afresh.
- **Quiet first**: reflections whose backlog (highest id − cursor) is small (at most
  QUIET_BACKLOG events, or one batch if smaller: a pass of a few milliseconds) run
  first, smallest first.
- **One busy slice at a time**: reflections with a larger backlog get time slices of
  ``PDR["TIME_SLICE"]`` seconds, least recently served first.  A running worker runs
  them on its busy lane (``worker.BusyLane``, a thread of its own) while its rounds go
  on, so a quiet table's change waits for the next probe, not for a slice; a round run
  without a lane ends after one slice, so the next probe comes at once.

The probe is an optimisation only: when a source cannot be probed, its reflections
all run, and their passes report what is wrong.
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import sqlalchemy as sa
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from .capture import registry_table
from .connections import connect
from .dialects import get_dialect
from .engine.visibility import Position

logger = logging.getLogger("django_pdr.worker")

#: Event tables per probe query (one UNION ALL branch each).
PROBE_CHUNK = 200
#: Largest backlog (events) served in the quiet lane, before every busy table.
QUIET_BACKLOG = 1000
#: Seconds a reflection counts as streaming after a pass that applied events (see
#: Scheduler.streaming): the next one it gets, with new events, may take the busy lane.
STREAMING_SECONDS = 1.0
#: Seconds between two reads of a source schema's triggers (a dropped trigger is noticed
#: this much later on an idle table; a table with events runs its full checks anyway).
TRIGGER_CHECK_SECONDS = 10.0
#: Seconds between two reads of a destination's checkpoints (a destination restored from a
#: backup is noticed this much later on an idle table).
CHECK_SECONDS = 10.0
#: (database pk, modified, schema) -> (when read, (when read, as a datetime), {reflection
#: uid: position held by its checkpoint, as the Django copy spells it}))
_CHECKPOINTS: dict = {}
#: A checkpoint read too early to judge the copy by (see ``checkpoints``).
UNKNOWN = object()
#: (database pk, modified, schema) -> (when read, names of the triggers that exist and fire)
_TRIGGERS: dict = {}


@dataclass(frozen=True)
class Probe:
    """What a source database says of one event table."""

    max_id: int  # 0 for an empty event table
    incarnation: str | None  # None: no registry row
    purged_through: int
    capturing: bool = False  # every row trigger exists and fires


#: Probe statements by (database, tables): built once, so that a round compiles nothing.
_STATEMENTS: dict = {}


def _cached(cache: dict, key, seconds: float, read):
    """``read()``, kept in ``cache`` under ``key`` for ``seconds``."""
    found = cache.get(key)
    if found is None or time.monotonic() - found[0] >= seconds:
        if len(cache) > 1000:
            cache.clear()
        found = cache[key] = (time.monotonic(), read())
    return found[1]


def _statements(dialect, database, part) -> tuple:
    """(the UNION ALL of every event table's highest id, the registry reads) for ``part``."""
    key = (database.pk, database.modified_at, tuple((st.pk, st.schema, st.event_table) for st in part))
    found = _STATEMENTS.get(key)
    if found is None:
        branches = [sa.select(sa.literal(st.pk).label("st"),
                              sa.func.max(sa.table(st.event_table, sa.column("pdr_id"),
                                                   schema=st.schema or None).c.pdr_id).label("m"))
                    for st in part]
        registries = []
        for schema in sorted({st.schema or "" for st in part}):
            # the whole registry (a row per event table of the schema): a statement that
            # does not change with the tables probed
            registries.append(_registry_query(dialect, database, schema or None))
        if len(_STATEMENTS) > 1000:
            _STATEMENTS.clear()
        found = _STATEMENTS[key] = (sa.union_all(*branches) if len(branches) > 1 else branches[0], registries)
    return found


def _registry_query(dialect, database, schema):
    key = ("registry", database.pk, database.modified_at, schema)
    found = _STATEMENTS.get(key)
    if found is None:
        registry = registry_table(dialect, schema)
        found = _STATEMENTS[key] = sa.select(registry.c.event_table, registry.c.incarnation,
                                             registry.c.purged_through)
    return found


#: (dialect name, schema, table) -> names of its capture's row triggers
_EXPECTED: dict = {}


def _row_triggers(dialect, schema, table):
    key = (type(dialect), schema, table)
    found = _EXPECTED.get(key)
    if found is None:
        if len(_EXPECTED) > 10000:
            _EXPECTED.clear()
        found = _EXPECTED[key] = frozenset(dialect.capture_names(schema, table).row_triggers)
    return found


def probe(database, source_tables) -> dict:
    """{source table pk: Probe} for the event tables of ``source_tables`` (all in ``database``)."""
    installed = sorted((st for st in source_tables if st.event_table), key=lambda st: st.pk)
    out = {}
    with connect(database) as conn:
        dialect = get_dialect(conn)
        default_schema = sa.inspect(conn).default_schema_name  # as capture.plan resolves it
        live: dict = {}  # schema -> names of the triggers that exist and fire
        for start in range(0, len(installed), PROBE_CHUNK):
            part = installed[start:start + PROBE_CHUNK]
            maxima_query, registry_queries = _statements(dialect, database, part)
            maxima = dict(dialect.run_repeated(conn, maxima_query))
            registered = {}
            for query in registry_queries:
                for name, incarnation, purged in dialect.run_repeated(conn, query):
                    registered[name] = (incarnation, int(purged))
            for st in part:
                incarnation, purged = registered.get(st.event_table, (None, 0))
                schema = st.schema or default_schema
                if schema not in live:  # keyed by modified_at too: an edited database is read again
                    live[schema] = _cached(
                        _TRIGGERS, (database.pk, database.modified_at, schema), TRIGGER_CHECK_SECONDS,
                        lambda: set(conn.execute(dialect.schema_triggers_query(schema)).scalars()))
                out[st.pk] = Probe(int(maxima.get(st.pk) or 0), incarnation, purged,
                                   capturing=_row_triggers(dialect, schema, st.table) <= live[schema])
        conn.rollback()
    return out


def candidates(query) -> list:
    """The reflections of ``query`` with only what planning reads (no model instances:
    a round over a thousand idle reflections builds none)."""
    # the position and uid as the database spells them, decoded once per spelling (they
    # change only when a reflection applies something): most of a round's cost otherwise
    fields = ("pk", "pdr_uid", "status", "pdr_position", "resync_requested", "last_applied_at", "destination_id",
              "destination_schema", "source_id", "source__schema", "source__table", "source__event_table",
              "source__installed_fingerprint", "source__database_id")
    query = query.annotate(pdr_uid=Cast("uid", TextField()), pdr_position=Cast("position", TextField()))
    if len(_DECODED) > 20000:
        _DECODED.clear()
    return [SimpleNamespace(pk=pk, uid=_decoded(uid, _uid), status=status, position=_decoded(position, _json),
                            resync_requested=resync, last_applied_at=applied, destination_id=destination,
                            destination_schema=dest_schema,
                            source=SimpleNamespace(pk=st, schema=schema, table=table, event_table=event_table,
                                                   installed_fingerprint=fingerprint, database_id=database))
            for (pk, uid, status, position, resync, applied, destination, dest_schema, st, schema, table,
                 event_table, fingerprint, database) in query.values_list(*fields)]


#: (decoder, text as the database spells it) -> value (shared: never to be changed)
_DECODED: dict = {}


def _json(text):
    return json.loads(text) if text else {}


def _uid(text):
    return uuid.UUID(text)


def _decoded(text, decode):
    found = _DECODED.get((decode, text))
    if found is None:
        found = _DECODED[(decode, text)] = decode(text)
    return found


def checkpoints(reflections) -> dict:
    """{reflection pk: the position its destination's checkpoint holds, as the Django copy
    spells it} for every destination of ``reflections``, one query per destination table
    of checkpoints (read at most every CHECK_SECONDS).  A destination restored from a backup
    holds an older position than the copy: that reflection is not idle.  ``UNKNOWN`` for a
    reflection whose copy was written after the read (by another worker)."""
    from .engine.checkpoint import checkpoint_table
    from .models import Database

    by_place: dict = {}
    for r in reflections:
        by_place.setdefault((r.destination_id, r.destination_schema or None), []).append(r)
    out = {}
    databases = {d.pk: d for d in Database.objects.filter(pk__in={k[0] for k in by_place})}
    for (database_pk, schema), members in by_place.items():
        database = databases.get(database_pk)
        if database is None:
            continue
        def read(database=database, schema=schema):
            read_at = timezone.now()  # before the read: a copy written later is not judged by it
            with connect(database) as conn:
                table = checkpoint_table(get_dialect(conn), schema)
                rows = conn.execute(sa.select(table.c.reflection, table.c.state)).all()
            positions = {}
            for uid, state in rows:
                state = json.loads(state) if state else None
                if state and state.get("phase") == "stream":
                    positions[uid] = dict(state.get("pos", {}), i=state.get("inc"))
            return read_at, positions

        try:
            read_at, stored = _cached(_CHECKPOINTS, (database.pk, database.modified_at, schema), CHECK_SECONDS,
                                      read)
        except Exception as exc:  # not read: those reflections run
            logger.debug("cannot read the checkpoints of %s: %s", database, exc)
            continue
        for r in members:
            if r.last_applied_at is not None and r.last_applied_at > read_at:
                # the copy was written after the read (another worker's pass): the next
                # read tells
                out[r.pk] = UNKNOWN
            else:
                out[r.pk] = stored.get(str(r.uid))
    return out


def remember_checkpoint(reflection):
    """This worker has just written ``reflection``'s checkpoint and its copy (a pass): the
    position read earlier from its destination is out of date, and must not make the
    reflection look restored from a backup until the next read."""
    for (database_pk, _, schema), (_, (_, stored)) in _CHECKPOINTS.items():
        if database_pk == reflection.destination_id and schema == (reflection.destination_schema or None):
            if reflection.status == "running":
                stored[str(reflection.uid)] = dict(reflection.position or {})
            else:
                stored.pop(str(reflection.uid), None)


def probe_all(reflections) -> dict:
    """{source table pk: Probe} for every source database of ``reflections``; a database
    that cannot be probed is left out (its reflections then all run)."""
    from .models import Database

    by_database: dict = {}
    for r in reflections:
        by_database.setdefault(r.source.database_id, {})[r.source.pk] = r.source
    out = {}
    for database in Database.objects.filter(pk__in=list(by_database)):
        tables = by_database[database.pk]
        try:
            out.update(probe(database, list(tables.values())))
        except Exception as exc:  # the passes will say what is wrong
            logger.debug("cannot probe %s: %s", database, exc)
    return out


def backlog(reflection, probes: dict) -> int | None:
    """Events above the reflection's cursor (None: unknown)."""
    found = probes.get(reflection.source.pk)
    if found is None or reflection.status != "running":
        return None
    return max(0, found.max_id - Position.from_json(reflection.position or {}).cursor)


def idle(reflection, probes: dict, stored: dict | None = None) -> bool:
    """True when no event can be waiting for ``reflection`` (see the module's argument).
    ``stored``: the positions the destinations' checkpoints hold (``checkpoints``); when
    given, a reflection whose destination holds another position than the copy is not idle."""
    found = probes.get(reflection.source.pk)
    if found is None or reflection.status != "running" or reflection.resync_requested:
        return False
    if stored is not None:
        held = stored.get(reflection.pk)  # None: not read, or no checkpoint (run it)
        if held is not UNKNOWN and held != (reflection.position or {}):
            return False
    position = Position.from_json(reflection.position or {})
    return (found.capturing and not position.gaps and found.max_id <= position.cursor
            and found.incarnation is not None
            and found.incarnation == (reflection.position or {}).get("i")
            and found.purged_through <= position.cursor)


class Scheduler:
    """The order of a running worker's rounds (state kept between rounds)."""

    def __init__(self, full_pass_interval: float, batch_size: int, clock=time.monotonic):
        self.full_pass_interval = full_pass_interval
        self.quiet_backlog = min(batch_size, QUIET_BACKLOG)
        self.clock = clock
        self.last_full: dict = {}  # reflection pk -> when it last had a pass
        self.last_served: dict = {}  # reflection pk -> when it last had a busy slice
        self.last_applied: dict = {}  # reflection pk -> when its last pass that applied events ended
        self.last_plan: float | None = None
        self.credit = 0.0  # periodic full passes owed (see plan)
        self.kept_probes: dict = {}  # source database pk -> (when, signature, its probes)

    def plan(self, reflections, probes: dict, retrying: set, stored: dict | None = None) -> tuple[list, list, int]:
        """(quiet reflections to run, smallest backlog first; busy ones, least recently
        served first; how many were skipped as idle).

        Idle reflections due their periodic full pass are spread over the interval (a share
        of them per round, the longest unchecked first): checking them all at once would
        hold every other table back for as long."""
        now = self.clock()
        quiet, busy, skipped, due = [], [], 0, []
        for r in reflections:
            if r.pk in self.last_full and r.pk not in retrying and idle(r, probes, stored):
                if now - self.last_full[r.pk] >= self.full_pass_interval:
                    due.append(r)
                else:
                    skipped += 1
                continue
            size = backlog(r, probes)
            if size is not None and size > self.quiet_backlog:
                busy.append(r)
            else:
                quiet.append((size or 0, r.pk, r))
        # N reflections every interval: N × elapsed / interval passes now, fractions carried
        # over while some are due (none due: nothing owed)
        elapsed = now - self.last_plan if self.last_plan is not None else 0.0
        if due:
            self.credit += len(reflections) * elapsed / self.full_pass_interval
            share = min(math.floor(self.credit), len(due))
            self.credit -= share
            due.sort(key=lambda r: (self.last_full[r.pk], r.pk))
            quiet += [(0, r.pk, r) for r in due[:share]]
            skipped += len(due) - share
        else:
            self.credit = 0.0
        self.last_plan = now
        quiet.sort(key=lambda item: item[:2])
        busy.sort(key=lambda r: (self.last_served.get(r.pk, float("-inf")), r.pk))
        return [r for _, _, r in quiet], busy, skipped

    def probes(self, reflections, quiet_sources=frozenset()) -> dict:
        """``probe_all`` of ``reflections``, except for the source databases in
        ``quiet_sources`` (proved quiet by their change notifications since the last probe:
        see wakeup.Waker.quiet), whose last probe is used again: for at most
        TRIGGER_CHECK_SECONDS (dropped triggers, a capture reinstalled by hand), and only
        while their source tables and capture are those it probed."""
        now = self.clock()
        by_database: dict = {}
        for r in reflections:
            by_database.setdefault(r.source.database_id, []).append(r)
        out, fresh = {}, []
        for database, members in by_database.items():
            signature = frozenset((r.source.pk, r.source.event_table, r.source.installed_fingerprint)
                                  for r in members)
            kept = self.kept_probes.get(database)
            if (database in quiet_sources and kept is not None and kept[1] == signature
                    and now - kept[0] < TRIGGER_CHECK_SECONDS):
                out.update(kept[2])
            else:
                fresh.append((database, signature, members))
        if fresh:
            found = probe_all([r for _, _, members in fresh for r in members])
            out.update(found)
            for database, signature, members in fresh:
                mine = {r.source.pk: found[r.source.pk] for r in members if r.source.pk in found}
                if len(mine) == len({r.source.pk for r in members}):
                    self.kept_probes[database] = (now, signature, mine)
                else:
                    self.kept_probes.pop(database, None)  # not probed (all of it): never reused
        return out

    def applied(self, reflection):
        """A pass of ``reflection`` has just applied events."""
        self.last_applied[reflection.pk] = self.clock()

    def streaming(self, reflection) -> bool:
        """``reflection``'s last pass applied events, less than STREAMING_SECONDS ago."""
        return self.clock() - self.last_applied.get(reflection.pk, float("-inf")) < STREAMING_SECONDS

    def ran(self, reflection, busy: bool):
        now = self.clock()
        self.last_full[reflection.pk] = now
        if busy:
            self.last_served[reflection.pk] = now
