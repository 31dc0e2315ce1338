"""A reflection's checkpoint in its destination database, and the fence around it.

The checkpoint row says how far the destination is: the position in the event
table (cursor and gaps), the phase (initial load or stream) and the identity of
the event table it refers to.  It is written in the same transaction as the rows
it covers.  Every destination write of a reflection — a batch, the per-row
isolation after a refused batch, a dead-letter retry, ``pdr-verify --repair`` —
first *locks* this row, and reads the source only after that: writers of one
reflection are serialised, so an older source row can never be written over a
newer one, and two workers whose leases overlapped can never both commit from
the same checkpoint (the second finds it moved: ``StaleCheckpoint``).
"""
from __future__ import annotations

import json
import threading

import sqlalchemy as sa
from django.utils import timezone

from .. import conf
from ..schema import create_table


class StaleCheckpoint(Exception):
    """Another worker moved this reflection's checkpoint: abandon the batch."""


def checkpoint_table(dialect, schema) -> sa.Table:
    return sa.Table(
        conf.get("CHECKPOINT_TABLE"), sa.MetaData(),
        sa.Column("reflection", sa.String(36), primary_key=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        schema=schema or None, **dialect.table_kwargs(),
    )


class Checkpoint:
    """The checkpoint row of one reflection (``uid``) in its destination."""

    def __init__(self, dialect, schema, uid, label: str = "this reflection"):
        self.dialect = dialect
        self.table = checkpoint_table(dialect, schema)
        self.uid = str(uid)
        self.label = label
        self._where = self.table.c.reflection == self.uid

    def create(self, dst):
        create_table(dst, self.table)

    def read(self, dst) -> dict | None:
        """The stored state (None before the first write), in a read of its own."""
        value = dst.execute(sa.select(self.table.c.state).where(self._where)).scalar()
        dst.rollback()
        return json.loads(value) if value else None

    def lock(self, dst) -> dict | None:
        """In ``dst``'s transaction: lock the checkpoint row until the transaction ends and
        return the state it holds.  A missing row is created first (empty), so that two
        first writers also exclude each other."""
        value = self.dialect.lock_row(dst, self.table, self._where, self.table.c.state)
        if value is None:
            row = {"reflection": self.uid, "state": "null", "updated_at": _now()}
            for statement, params in self.dialect.upsert_batches(self.table, ["reflection"], [], [row]):
                dst.execute(statement, params)
            value = self.dialect.lock_row(dst, self.table, self._where, self.table.c.state)
        return json.loads(value) if value else None

    def fence(self, dst, expected: dict | None):
        """Lock the row and check nobody moved it since ``expected`` was read."""
        if self.lock(dst) != expected:
            raise StaleCheckpoint(
                f"{self.label}: the checkpoint moved under this worker (another worker applied "
                f"the batch); starting again from the new checkpoint.")

    def advance_statement(self, expected: dict | None, state: dict):
        """The UPDATE that moves the row from ``expected`` to ``state`` (see ``advance``),
        or None where it cannot be used."""
        if expected is None or not self.dialect.exact_text_equality:
            return None
        return (sa.update(self.table).where(self._where, self.table.c.state == json.dumps(expected))
                .values(state=json.dumps(state), updated_at=_now()))

    def advance(self, dst, expected: dict | None, state: dict) -> bool:
        """As the first statement of ``dst``'s transaction: ``fence`` and ``write`` at once —
        one UPDATE from ``expected`` to ``state``, which locks the row until the transaction
        ends.  False when it did nothing (the stored text is not ``expected`` as this
        version spells it: moved by another worker, never written, written otherwise, or
        an engine whose text comparison folds case): the caller then fences and writes."""
        statement = self.advance_statement(expected, state)
        return statement is not None and dst.execute(statement).rowcount == 1

    def write(self, dst, state: dict):
        """In ``dst``'s transaction (after ``fence`` or ``lock``): store ``state``."""
        row = {"reflection": self.uid, "state": json.dumps(state), "updated_at": _now()}
        for statement, params in self.dialect.upsert_batches(self.table, ["reflection"], ["state", "updated_at"],
                                                             [row]):
            dst.execute(statement, params)


def _now():
    return timezone.now().replace(tzinfo=None)


# -- durability of asynchronous commits (PDR["ASYNCHRONOUS_COMMIT"]) -------------------------
# Purges delete the events every reflection's recorded position (in Django's database)
# has passed: a position is recorded only once the destination holds it on disk.  (A
# worker that takes over another one's reflection does so after its lease expired, long
# after the destination flushed what the other one committed: PostgreSQL's WAL writer
# flushes asynchronous commits within three wal_writer_delay, 0.6 s by default.)

_durability_lock = threading.Lock()
#: destination (Database pk) -> [batches committed there without waiting for their flush,
#: how many of them a make_durable covered; -1 before the first in this process, which
#: also covers what an earlier process committed]
_commits: dict = {}


def committed_asynchronously(destination) -> None:
    with _durability_lock:
        _commits.setdefault(destination, [0, -1])[0] += 1


def make_durable(dialect, dst, destination) -> None:
    """Before a position of a reflection into ``destination`` is recorded: wait until every
    batch committed there without waiting for its flush is on disk (at once when none is)."""
    if not dialect.commits_asynchronously:
        return
    with _durability_lock:
        committed, covered = _commits.setdefault(destination, [0, -1])
    if covered >= committed:
        return
    dialect.make_durable(dst)
    with _durability_lock:
        entry = _commits[destination]
        entry[1] = max(entry[1], committed)
