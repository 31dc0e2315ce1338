"""Which events are safe to read: no lost change under out-of-order commits.

Event ids come from a sequence or auto-increment counter, taken when a row is
written, while transactions commit in any order.  A reader that kept only "the
highest id seen" would skip an id taken by a transaction that commits later
(the original PDR's flaw).  We keep, beside the cursor, the *gaps*: ids at or
below the cursor that were not visible when read.  A gap is closed only when
every transaction that could still fill it has ended, proven by the engine
(PostgreSQL snapshots' in-progress xid list, MariaDB/MySQL INNODB_TRX); never on
a timer.  Events found in a gap are read as soon as they appear.  SQLite has a
single writer, so ids become visible in order and gaps close at once.

The proof, in short: an id ``x <= cursor`` invisible at read time ``r`` was taken
by a transaction uncommitted at ``r``.  The open-transaction set captured at any
time ``q > r`` contains that transaction unless it already ended.  Once no
member of that set is open, every id of the gap is either visible (committed)
or never will be (rolled back), so a last read of the gap settles it.
``docs/concepts.md`` gives the full argument.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import sqlalchemy as sa

#: Gap ranges examined per read; more stay pending for later reads.
MAX_GAP_RANGES_PER_READ = 500


@dataclass
class Gap:
    lo: int
    hi: int
    waitset: list | None = None  # None: open-transaction set not captured yet
    seen_at: float = 0.0

    def to_json(self):
        return [self.lo, self.hi, self.waitset, round(self.seen_at, 3)]

    @classmethod
    def from_json(cls, data):
        return cls(int(data[0]), int(data[1]), data[2], float(data[3]))


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


def _split(gap: Gap, found: list[int]) -> list[Gap]:
    """The parts of ``gap`` not covered by the sorted ids in ``found``."""
    parts, lo = [], gap.lo
    for x in found:
        if x > lo:
            parts.append(Gap(lo, x - 1, gap.waitset, gap.seen_at))
        lo = x + 1
    if lo <= gap.hi:
        parts.append(Gap(lo, gap.hi, gap.waitset, gap.seen_at))
    return parts


class EventReader:
    """Reads batches of visible events from one event table.

    ``read`` never changes state outside the returned Position: the caller
    stores it (in the destination, with the rows it covers) or discards it."""

    def __init__(self, dialect, event_table: sa.Table, key_count: int, *, arrays: bool = True):
        """``arrays``: read the key arrays of ``event_table`` (False for an event table not
        yet upgraded to have them: its triggers never wrote any)."""
        self.dialect = dialect
        self.table = dialect.event_relation(event_table, key_count) if arrays else event_table
        self.key_columns = [self.table.c[f"pdr_k{i}"] for i in range(key_count)]
        self.columns = [self.table.c.pdr_id, *self.key_columns]
        # several keys may share an event id: a read never splits one event row's keys
        self.arrays = self.table is not event_table

    def _open_transactions(self, conn) -> set | None:
        query = self.dialect.open_transactions_query()
        if query is None:
            return None
        return {str(row[0]) for row in conn.execute(query)}

    def _rows(self, conn, where, limit):
        """(events, full): ``limit`` events in id order, ``full`` when there may be more.
        Only whole event rows: when a full read ends inside the keys of an event row,
        that row's keys are left for the next read; an event row with more keys than
        ``limit`` is read whole, alone."""
        query = sa.select(*self.columns).where(where).order_by(self.table.c.pdr_id).limit(limit)
        rows = conn.execute(query).fetchall()  # one fetch: iterating fetches row by row
        full = len(rows) >= limit
        if full and self.arrays:
            last = rows[-1][0]
            if rows[0][0] != last:
                while rows[-1][0] == last:
                    rows.pop()
            else:
                rows = conn.execute(sa.select(*self.columns).where(self.table.c.pdr_id == last)).fetchall()
        if len(self.key_columns) == 1:
            return [Event(row[0], (row[1],)) for row in rows], full
        return [Event(row[0], tuple(row[1:])) for row in rows], full

    def read(self, conn, position: Position, limit: int, now: float | None = None):
        """Return (events, new_position); at most ``limit`` events, or the keys of one event
        row that alone has more (PostgreSQL key arrays: at most 1,000)."""
        now = time.time() if now is None else now
        gaps = list(position.gaps)
        events: list[Event] = []

        # 1. Settle the open-transaction state of pending gaps (before reading them).
        finished: set[int] = set()
        if gaps:
            open_now = self._open_transactions(conn)
            for index, gap in enumerate(gaps):
                if gap.waitset is None and now - gap.seen_at >= self.dialect.waitset_delay:
                    gap.waitset = sorted(open_now) if open_now is not None else []
                    gap.waitset = gap.waitset[:1000]  # never observed in practice; bounded anyway
                if gap.waitset is not None and (open_now is None or not (set(gap.waitset) & open_now)):
                    finished.add(index)

        # 2. Read what has appeared in the gaps.
        examined = gaps[:MAX_GAP_RANGES_PER_READ]
        if examined:
            where = sa.or_(*[self.table.c.pdr_id.between(g.lo, g.hi) for g in examined])
            found, full = self._rows(conn, where, limit)
            events.extend(found)
            complete = not full
            by_gap: dict[int, list[int]] = {}
            ids = sorted(e.id for e in found)
            for index, gap in enumerate(examined):
                by_gap[index] = [x for x in ids if gap.lo <= x <= gap.hi]
            remaining = []
            for index, gap in enumerate(examined):
                if complete and index in finished:
                    continue  # settled: every id here is visible (read now) or never will be
                remaining.extend(_split(gap, by_gap[index]))
            gaps = remaining + gaps[MAX_GAP_RANGES_PER_READ:]

        # 3. Read new events after the cursor.
        cursor = position.cursor
        room = limit - len(events)
        if room > 0 and not (examined and not complete):
            new, _ = self._rows(conn, self.table.c.pdr_id > cursor, room)
            expected = cursor + 1
            for event in new:
                if event.id > expected:
                    gaps.append(Gap(expected, event.id - 1, None, now))
                expected = event.id + 1
            if new:
                cursor = new[-1].id
            events.extend(new)
        conn.rollback()  # end the read snapshot
        return events, Position(cursor, gaps)

    def start_position(self, floor: int) -> Position:
        """Where a new reflection starts reading: ids at or below ``floor`` are purged
        (hence settled); everything above is read, whatever its commit order."""
        return Position(cursor=floor)

    def unapplied(self, position: Position):
        """WHERE clause for the events ``position`` has not applied (after the cursor, or
        inside one of the first MAX_GAP_RANGES_PER_READ gaps)."""
        pdr_id = self.table.c.pdr_id
        gaps = [pdr_id.between(g.lo, g.hi) for g in position.gaps[:MAX_GAP_RANGES_PER_READ]]
        return sa.or_(pdr_id > position.cursor, *gaps)

    def count_pending(self, conn, position: Position) -> int:
        query = sa.select(sa.func.count()).select_from(self.table).where(self.unapplied(position))
        value = conn.execute(query).scalar()
        conn.rollback()
        return int(value or 0)
