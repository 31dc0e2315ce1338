"""Bytes a batch may hold: rows of any size with the worker's memory bounded.

A batch is bounded by events (``BATCH_SIZE``) and by bytes (``BATCH_BYTES``).  Events
are keys only, so the bytes of a batch are known once its rows are read: the runner
keeps the largest row it has seen for the reflection (``Budget.largest``) and reads at
most ``BATCH_BYTES // largest`` events.  Rows read larger than that estimate (a
*surprise*: small rows, then an update that makes them large) stop the read as soon as
its bytes pass ``BATCH_BYTES`` (``BatchTooLarge``); the estimate is raised and a
smaller batch is read from the same position.  A smaller batch is a shorter window of
the same events, so the checkpoint, per-key order and exactly-once apply are those of
any batch.  A batch read with a limit of one event is never refused: one row (or the
keys of one event row) is held whatever its size.

The estimate decays by half with each batch whose rows are all smaller, so a table
whose large rows are gone returns to full batches after a few of them.  It is kept per
reflection for the life of the process (a pass's runner is built afresh).
"""
from __future__ import annotations

#: Largest row seen (bytes), by reflection id: survives the runner of one pass.
_LARGEST: dict = {}

#: Rows of one fetch from a streaming cursor at most (``Applying._stream`` fetches 1, 5,
#: 25, ... rows, up to this many, so that a surprise is seen after a few rows).
MAX_FETCH_ROWS = 1000

#: Rows are *large* when fewer than this many fit the budget: batches are then read one
#: at a time, not while the previous one commits (stream.py).
LARGE_ROWS = 8

#: Bytes counted for a value that is neither text nor bytes (a number, a date, ...).
SMALL_VALUE = 16


class BatchTooLarge(Exception):
    """The rows of a batch passed its byte budget: read fewer events."""

    def __init__(self, largest: int, rows: int, size: int):
        super().__init__(f"batch rows passed the byte budget: {rows} rows, {size:,} bytes read, "
                         f"largest {largest:,} bytes")
        self.largest, self.rows, self.size = largest, rows, size
        self.events = 0  # of the batch refused (set by its reader)


def value_bytes(value) -> int:
    """Approximate bytes ``value`` takes (its length for text and bytes)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value) + SMALL_VALUE
    return SMALL_VALUE


def row_bytes(values) -> int:
    """Approximate bytes of a row of ``values``."""
    return sum(map(value_bytes, values))


class Budget:
    """The byte budget of one reflection's batches and load chunks."""

    def __init__(self, batch_bytes: int, key=None):
        self.batch_bytes = max(1, int(batch_bytes))
        self.key = key

    @property
    def largest(self) -> int:
        return _LARGEST.get(self.key, 0)

    @largest.setter
    def largest(self, value: int):
        if value:
            _LARGEST[self.key] = value
        else:
            _LARGEST.pop(self.key, None)

    def rows(self, limit: int) -> int:
        """How many rows (or events) of at most ``limit`` fit the budget: at least one."""
        if not self.largest:
            return limit
        return max(1, min(limit, self.batch_bytes // self.largest))

    def fits(self, rows: int) -> bool:
        """True when ``rows`` rows of the largest size seen fit the budget."""
        return rows * self.largest <= self.batch_bytes

    def large_rows(self) -> bool:
        """True when a batch holds no more than a few rows (of the largest size seen)."""
        return self.largest * LARGE_ROWS > self.batch_bytes

    def fetch_rows(self) -> int:
        """Rows per fetch of a streaming read: a fraction of the rows that fit."""
        return max(1, min(MAX_FETCH_ROWS, self.rows(MAX_FETCH_ROWS * 4) // 4))

    def observed(self, largest: int):
        """A batch was read whose largest row has ``largest`` bytes: the estimate follows
        it up at once, down by halves."""
        self.largest = max(largest, self.largest // 2)

    def surprised(self, largest: int):
        """A read stopped at the budget having seen a row of ``largest`` bytes."""
        self.largest = max(largest, self.largest)

    def smaller(self, limit: int, events: int) -> int:
        """The event limit of the batch re-read after one of ``events`` events (read with
        ``limit``) passed the budget: what fits, and fewer events than before."""
        return max(1, min(self.rows(limit), events // 2 if events > 1 else 1, limit - 1))

    def cap(self, limit: int) -> int | None:
        """The bytes a batch read with the event limit ``limit`` may hold before it is
        refused; None for a limit of one event (its rows are held whatever their size)."""
        return self.batch_bytes if limit > 1 else None
