"""Purging applied events, and measuring lag for the admin and the dashboard."""
from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from django.db.models import F
from django.utils import timezone

from . import conf
from .capture import plan as capture_plan
from .capture import registration
from .connections import begin, dialect_of, get_engine
from .models import Reflection, Sample
from .engine.visibility import Position

logger = logging.getLogger("django_pdr.maintenance")


def purge_horizon(source_table, incarnation: str | None = None) -> int:
    """The highest event id every reflection of ``source_table`` has settled.

    A reflection that has not recorded a position yet, or whose position belongs to
    another incarnation of the event table (its worker has not seen the reinstall yet),
    holds the horizon at the current floor (it may still need every retained event)."""
    floor = int(source_table.purged_through or 0)
    horizons = []
    for position in Reflection.objects.filter(source=source_table).values_list("position", flat=True):
        if not position or position.get("i", incarnation) != incarnation:
            return floor
        horizons.append(Position.from_json(position).horizon)
    return max(floor, min(horizons)) if horizons else floor


def purge(source_table) -> int:
    """Delete events that every reflection has applied, in bounded chunks; returns the count.

    The registry row in the source database (``capture.registration``) records the
    purged floor in the same transaction as each delete: a reader that missed purged
    events sees the new floor right after (see ``engine.positions``)."""
    chunk = int(conf.get("PURGE_CHUNK"))
    deleted = 0
    with get_engine(source_table.database).connect() as conn:
        capture = capture_plan(conn, source_table)
        registered = registration(conn, capture)
        conn.rollback()
        if registered is None:
            return 0  # no capture installed: nothing of ours to purge
        floor = registered.purged_through
        source_table.purged_through = floor
        horizon = purge_horizon(source_table, registered.incarnation)
        event, registry = capture.event, capture.registry

        def still(low):  # the registry row as this purge left it (not reinstalled or purged meanwhile)
            return sa.and_(registry.c.event_table == event.name, registry.c.incarnation == registered.incarnation,
                           registry.c.purged_through == low)

        keep_last = dialect_of(source_table.database).range_delete_locks_next_row
        low = floor
        while low < horizon:
            high, delete = min(horizon, low + chunk), True
            if keep_last:
                # end the range below a row that is there (committed: it is settled), kept for
                # the next purge: the DELETE then never reaches an uncommitted event above
                top = conn.execute(sa.select(sa.func.max(event.c.pdr_id))
                                   .where(event.c.pdr_id > low, event.c.pdr_id <= high)).scalar()
                conn.rollback()
                if top is not None:
                    high = top - 1
                else:  # no row to delete: only the floor moves
                    delete = False
                if high <= low:
                    break
            with begin(conn):
                # the registry row first (locked until the commit): reinstalled or purged by
                # another worker meanwhile, this purge stops
                if not conn.execute(sa.update(registry).where(still(low)).values(purged_through=high)).rowcount:
                    break
                if delete:
                    chunk_of = sa.delete(event).where(event.c.pdr_id > low, event.c.pdr_id <= high)
                    result = conn.execute(chunk_of)
                    deleted += max(result.rowcount or 0, 0)
            low = high
            type(source_table).objects.filter(pk=source_table.pk).update(purged_through=low)
    source_table.purged_through = low
    if deleted:
        logger.info("%s: purged %d applied events (through id %d)", source_table, deleted, low)
    return deleted


def measure(reflection, src_conn, reader) -> tuple[int, float | None]:
    """(pending events, seconds since the oldest pending event was written)."""
    position = Position.from_json(reflection.position or {})
    count, oldest = 0, None
    for where in reader.unapplied(position):
        part, at = src_conn.execute(sa.select(sa.func.count(), sa.func.min(reader.table.c.pdr_at)).where(where)).one()
        count += int(part or 0)
        if at is not None and (oldest is None or at < oldest):
            oldest = at
    src_conn.rollback()
    lag = None
    if oldest is not None:
        if isinstance(oldest, str):
            oldest = dt.datetime.fromisoformat(oldest)
        now = timezone.now().astimezone(dt.timezone.utc).replace(tzinfo=None)
        lag = max(0.0, (now - oldest.replace(tzinfo=None)).total_seconds())
    return int(count or 0), (lag if count else 0.0)


#: reflection pk -> (pk, at) of the last Sample this process stored for it: a pass within
#: SAMPLE_INTERVAL adds its counts to that sample without reading it first
_LAST_SAMPLE: dict = {}


def record_sample(reflection, pending, lag, events, rows, force=False):
    """Store a Sample at most every SAMPLE_INTERVAL seconds; prune old ones."""
    now = timezone.now()
    interval = float(conf.get("SAMPLE_INTERVAL"))
    known = _LAST_SAMPLE.get(reflection.pk)
    if known is None:
        last = Sample.objects.filter(reflection=reflection).order_by("-at").values_list("pk", "at").first()
        known = tuple(last) if last else None
    if not force and known and (now - known[1]).total_seconds() < interval:
        if Sample.objects.filter(pk=known[0], reflection=reflection).update(events=F("events") + events,
                                                                            rows=F("rows") + rows):
            _LAST_SAMPLE[reflection.pk] = known
            return
    sample = Sample.objects.create(reflection=reflection, at=now, pending_events=pending, lag_seconds=lag,
                                   events=events, rows=rows)
    _LAST_SAMPLE[reflection.pk] = (sample.pk, now)
    cutoff = now - dt.timedelta(days=float(conf.get("SAMPLE_RETENTION_DAYS")))
    Sample.objects.filter(reflection=reflection, at__lt=cutoff).delete()
