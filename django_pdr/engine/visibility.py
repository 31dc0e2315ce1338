"""Which events are safe to read: no lost change under out-of-order commits.

Event ids come from a sequence or auto-increment counter, taken when a row is
written, while transactions commit in any order.  A reader that kept only "the
highest id seen" would skip an id taken by a transaction that commits later
(the original PDR's flaw).  We keep, beside the cursor, the *gaps*: ids at or
below the cursor that were not visible when read.  A gap is closed only when
every transaction that could still fill it has ended, proven by the engine;
never on a timer.  Events found in a gap are read as soon as they appear.

The proof is constant-size per gap.  The engine numbers write transactions in
the order they start writing (PostgreSQL xids, InnoDB transaction ids), and a
capture trigger runs after its transaction's first write, so a transaction that
took an event id has a number below any number handed out later.  A *horizon*
observed at time ``q`` gives two numbers (``Dialect.transaction_horizon``):
``next``, above the number of every transaction that wrote before ``q``, and
``oldest``, the lowest number of a write transaction still open at ``q``.

- An id ``x <= cursor`` invisible at read time ``r`` was taken by a transaction
  ``T`` uncommitted at ``r``.  The first horizon observed after ``r`` gives the
  gap its proof ``p = next``, so ``number(T) < p``.
- A later horizon (or the same one) with ``oldest >= p`` shows that every
  transaction numbered below ``p`` has ended, ``T`` included: every id of the gap
  is now visible (committed) or never will be (rolled back).  A last read of the
  gap after that observation settles it.

PostgreSQL: ``next`` is an xid the reader's transaction takes for the check
(``pg_current_xact_id()``; not a snapshot's xmax, which is one past the latest
*completed* xid, so that a running writer newer than every completed one is below
no xmax and in no in-progress list), ``oldest`` the xmin of a snapshot taken after.
MariaDB/MySQL: ``next`` is the id of a write transaction the reader opens for the
check, ``oldest`` the lowest id of another transaction in ``INNODB_TRX``.  That
view is a cache InnoDB refreshes only when nobody has read it for 0.1 s, so the
result is accepted only when it lists the reader's own transaction (it was then
filled after the check began); otherwise InnoDB's status report (made when asked)
is read instead, and when neither can be read nothing is settled.  SQLite has a
single writer: ids become visible in order and gaps close at once.
``docs/concepts.md`` gives the full argument.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import sqlalchemy as sa

from ..dialects.base import OP_TRUNCATE, Horizon


#: Gap ranges per query; a read examines every gap, in queries of this many ranges.
GAP_RANGES_PER_QUERY = 500
#: A read carries the registry row (EventReader.confirm_with) while the read before it
#: found fewer events than this: a streaming table's small batches, where the round trip
#: of a separate registry read is a large part of the latency.  Not while catching up: two
#: more values in every event row cost more there than one read per batch.
CONFIRM_WITH_EVENTS_BELOW = 1000


@dataclass
class Gap:
    lo: int
    hi: int
    proof: int | None = None  # None: no horizon observed since the gap was seen

    def to_json(self):
        return [self.lo, self.hi, self.proof]

    @classmethod
    def from_json(cls, data):
        proof = data[2] if len(data) > 2 else None
        # checkpoints of earlier versions held a list of open transactions here: a new
        # proof is taken at the next read (after the gap was seen, so still valid)
        return cls(int(data[0]), int(data[1]), int(proof) if isinstance(proof, int) else None)

    def settled_by(self, horizon: Horizon | None) -> bool:
        return horizon is not None and self.proof is not None and horizon.oldest >= self.proof


@dataclass
class Position:
    """Read position in an event table: every id <= cursor is applied, except gaps."""

    cursor: int = 0
    gaps: list[Gap] = field(default_factory=list)

    def to_json(self):
        return {"c": self.cursor, "g": [g.to_json() for g in self.gaps]}

    @classmethod
    def from_json(cls, data):
        data = data or {}
        return cls(int(data.get("c", 0)), [Gap.from_json(g) for g in data.get("g", [])])

    @property
    def horizon(self) -> int:
        """Every id at or below this is settled (for purging)."""
        return min([self.cursor] + [g.lo - 1 for g in self.gaps])


class Event(NamedTuple):
    id: int
    key: tuple  # the source row's key (what happened to it is read from the row itself)
    op: str = "U"  # OP_TRUNCATE: the whole table was emptied (no key)


def _split(gap: Gap, found: list[int]) -> list[Gap]:
    """The parts of ``gap`` not covered by the sorted ids in ``found``."""
    parts, lo = [], gap.lo
    for x in found:
        if x > lo:
            parts.append(replace(gap, lo=lo, hi=x - 1))
        lo = x + 1
    if lo <= gap.hi:
        parts.append(replace(gap, lo=lo))
    return parts


def chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class EventReader:
    """Reads batches of visible events from one event table.

    ``read`` never changes state outside the returned Position (the caller's gaps
    are copied, not changed): the caller stores it (in the destination, with the
    rows it covers) or discards it."""

    def __init__(self, dialect, event_table: sa.Table, key_count: int, *, arrays: bool = True):
        """``arrays``: read the key arrays of ``event_table`` (False for an event table not
        yet upgraded to have them: its triggers never wrote any)."""
        self.dialect = dialect
        self.event_table = event_table
        self.table = dialect.event_relation(event_table, key_count) if arrays else event_table
        self.key_columns = [self.table.c[f"pdr_k{i}"] for i in range(key_count)]
        self.columns = [self.table.c.pdr_id, self.table.c.pdr_op, *self.key_columns]
        # several keys may share an event id: a read never splits one event row's keys
        self.arrays = self.table is not event_table
        self._plain = None  # see _plain_keys
        #: (incarnation, purged floor) scalar subqueries of the capture's registry row, read
        #: as two more columns of a streaming table's event reads (``confirm_with``)
        self.confirming = None
        #: after ``read``: (incarnation, purged floor) as its last statement saw them, or
        #: None (no such columns, or that statement found no event)
        self.confirmed = None
        self._streaming = True  # the last read found fewer than CONFIRM_WITH_EVENTS_BELOW events

    def confirm_with(self, registry: sa.Table, event_name: str):
        """Read the registry row of the event table with the event reads of a streaming
        table (see CONFIRM_WITH_EVENTS_BELOW), in the same statement (see
        ``Streaming._read_events``): only for engines whose statement reads one snapshot
        (``Dialect.statement_snapshot``)."""
        if self.dialect.statement_snapshot:
            row = registry.c.event_table == event_name
            self.confirming = [sa.select(registry.c.incarnation).where(row).scalar_subquery().label("pdr_inc"),
                               sa.select(registry.c.purged_through).where(row).scalar_subquery().label("pdr_floor")]

    def _rows(self, conn, where, limit, keys=True):
        """(events, full): ``limit`` events in id order, ``full`` when there may be more.
        Only whole event rows: when a full read ends inside the keys of an event row,
        that row's keys are left for the next read; an event row with more keys than
        ``limit`` is read whole, alone.  ``keys`` False: events without their keys (None),
        read as the driver's plain tuples (ids and operation codes need no conversion)."""
        # without keys: (id, NULL, op) rows as the driver builds them, shaped like Event
        # (index 0 the id, 2 the operation), so that no object is made per event
        columns = self.columns if keys else [self.table.c.pdr_id, sa.null().label("pdr_key"), self.table.c.pdr_op]
        extra = (self.confirming or []) if self._streaming else []
        columns = [*columns, *extra]

        def fetch(query):
            if keys and not self._plain_keys(conn):
                found = conn.execute(query).fetchall()  # one fetch: iterating fetches row by row
            elif not keys and not extra:
                found = self.dialect.event_ids(conn, query)
            else:
                found = self.dialect.plain_rows(conn, query)
            if extra:  # the registry row as this statement saw it (NULL: no row)
                self.confirmed = (found[0][-2], int(found[0][-1])) if found and found[0][-2] is not None else None
            return found

        query = sa.select(*columns).where(where).order_by(self.table.c.pdr_id).limit(limit)
        rows = fetch(query)
        full = len(rows) >= limit
        if full and self.arrays:
            last = rows[-1][0]
            if rows[0][0] != last:
                while rows[-1][0] == last:
                    rows.pop()
            else:
                rows = fetch(sa.select(*columns).where(self.table.c.pdr_id == last))
        if not keys:
            return rows, full  # (with the registry's two columns last, if read: never used)
        end = len(self.columns)
        return [Event(row[0], tuple(row[2:end]), row[1]) for row in rows], full

    def _plain_keys(self, conn) -> bool:
        """True when the driver's values of the key columns are what SQLAlchemy would make
        of them (no result processing: integers, plain strings), so that events with their
        keys may be read as the driver's tuples."""
        if self._plain is None:
            dialect = conn.dialect

            def plain(type_):
                try:  # (some types' processors depend on the driver's column type code)
                    return type_.dialect_impl(dialect).result_processor(dialect, None) is None
                except Exception:
                    return False

            self._plain = all(plain(column.type) for column in self.key_columns)
        return self._plain

    def window_keys(self, conn, cursor: int, last_id: int, gap_ids) -> list[tuple]:
        """The distinct keys of the events in a window (see ``window``), in the order of
        their first event: the keys of a batch read without them (``read(keys=False)``)."""
        query = (sa.select(*self.key_columns).where(self.window(cursor, last_id, gap_ids))
                 .where(self.table.c.pdr_op != OP_TRUNCATE)
                 .group_by(*self.key_columns).order_by(sa.func.min(self.table.c.pdr_id)))
        keys = [tuple(row) for row in conn.execute(query).fetchall()]
        conn.rollback()
        return keys

    def read(self, conn, position: Position, limit: int, keys: bool = True):
        """Return (events, new_position); at most ``limit`` events (Event, or with ``keys``
        False plain (id, None, op) tuples: read them by index), or the keys of one event
        row that alone has more (PostgreSQL key arrays: at most 1,000).  Every gap is
        examined (in queries of GAP_RANGES_PER_QUERY ranges) before new events are read.
        ``keys`` False: the events without their keys (see ``_rows``, ``window_keys``)."""
        gaps = [replace(g) for g in position.gaps]  # never the caller's objects
        events: list[Event] = []
        self.confirmed = None

        # 1. Observe the transaction horizon (before reading the gaps it may settle).
        horizon = self.dialect.transaction_horizon(conn, self.event_table) if gaps else None
        if horizon is not None:
            for gap in gaps:
                if gap.proof is None:
                    gap.proof = horizon.next  # observed after the gap was seen

        # 2. Read what has appeared in the gaps; close those the horizon settles.
        remaining, exhausted = [], False
        for part in chunks(gaps, GAP_RANGES_PER_QUERY):
            room = limit - len(events)
            if exhausted or room <= 0:
                exhausted = True
                remaining.extend(part)
                continue
            where = sa.or_(*[self.table.c.pdr_id.between(g.lo, g.hi) for g in part])
            found, full = self._rows(conn, where, room, keys)
            events.extend(found)
            ids = sorted({e[0] for e in found})
            for gap in part:
                if not full and gap.settled_by(horizon):
                    continue  # every id here is visible (read now) or never will be
                remaining.extend(_split(gap, [x for x in ids if gap.lo <= x <= gap.hi]))
            exhausted = full
        gaps = remaining

        # 3. Read new events after the cursor.
        cursor = position.cursor
        room = limit - len(events)
        #: after this read: True when it read every event visible after the cursor
        self.read_all = False
        if room > 0 and not exhausted:
            new, full = self._rows(conn, self.table.c.pdr_id > cursor, room, keys)
            self.read_all = not full
            expected = cursor + 1
            for event in new:
                if event[0] > expected:
                    gaps.append(Gap(expected, event[0] - 1))
                expected = event[0] + 1
            if new:
                cursor = new[-1][0]
            events.extend(new)
        conn.rollback()  # end the read snapshot (and the horizon check's transaction)
        self._streaming = len(events) < CONFIRM_WITH_EVENTS_BELOW
        return events, Position(cursor, gaps)

    def start_position(self, floor: int) -> Position:
        """Where a new reflection starts reading: ids at or below ``floor`` are purged
        (hence settled); everything above is read, whatever its commit order."""
        return Position(cursor=floor)

    def unapplied(self, position: Position) -> list:
        """WHERE clauses, of disjoint sets of events, that together select the events
        ``position`` has not applied (after the cursor, or inside a gap): one per
        GAP_RANGES_PER_QUERY gaps (an engine limits the size of one expression)."""
        pdr_id = self.table.c.pdr_id
        parts = [[pdr_id.between(g.lo, g.hi) for g in part]
                 for part in chunks(position.gaps, GAP_RANGES_PER_QUERY)] or [[]]
        parts[0].append(pdr_id > position.cursor)
        return [sa.or_(*part) for part in parts]

    def window(self, cursor: int, last_id: int, gap_ids):
        """WHERE clause for the events of one read: after ``cursor`` up to ``last_id``, and
        the ids found in gaps."""
        pdr_id = self.table.c.pdr_id
        after = sa.and_(pdr_id > cursor, pdr_id <= last_id)
        return sa.or_(after, pdr_id.in_(sorted(gap_ids))) if gap_ids else after

    def count_pending(self, conn, position: Position) -> int:
        count = sa.select(sa.func.count()).select_from(self.table)
        total = sum(int(conn.execute(count.where(where)).scalar() or 0) for where in self.unapplied(position))
        conn.rollback()
        return total
