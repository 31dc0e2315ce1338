"""Compare a destination with its source by key, and optionally repair it.

Pass 1 walks the source in key order, chunk by chunk: each chunk is transformed
exactly as the worker would write it, the destination rows with the same keys
are fetched, and a hash of each side decides whether the chunk needs a row by
row comparison.  Pass 2 walks the destination's keys and looks them up in the
source to find rows that should not be there.  A difference whose key still has
pending events is reported as *pending* (the worker has not caught up yet) and
is not repaired.
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from . import conf
from .engine.load import PYTHON_LOAD_CHUNK
from .coerce import row_converter
from .dialects.base import JSONText
from .connections import begin, connect
from .engine.runner import ReflectionRunner
from .engine.visibility import Position, chunks

logger = logging.getLogger("django_pdr.verify")

MISSING, EXTRA, DIFFERENT = "missing", "extra", "different"


def canonical(value):
    """A comparable form of a value, the same whichever engine it was read from."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return "d:" + format(value.normalize(), "f") if value == value else "d:nan"
    if isinstance(value, float):
        # a number as a decimal: a REAL read from a SQLite NUMERIC column compares equal to
        # the Decimal the source holds
        return canonical(decimal.Decimal(repr(value)))
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b:" + bytes(value).hex()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


def _json_canonical(value):
    if isinstance(value, dict):
        return {str(k): _json_canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    number = decimal.Decimal(str(value))
    return "n:" + (format(number.normalize(), "f") if number.is_finite() else str(number))


def canonical_json(value):
    """A comparable form of a JSON column's value: equal documents compare equal whatever
    their spelling (key order, spaces, 1.0 and 1), and SQL NULL (None) differs from the
    JSON value null."""
    if isinstance(value, (bytes, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=decimal.Decimal)
        except ValueError:
            return canonical(value)
    elif value is None:
        return None
    return "json:" + json.dumps(_json_canonical(value), sort_keys=True, ensure_ascii=False)


@dataclass
class Difference:
    kind: str
    key: tuple
    expected: dict | None = None
    actual: dict | None = None
    pending: bool = False

    def describe(self) -> str:
        key = ", ".join(repr(v) for v in self.key)
        if self.kind == DIFFERENT:
            cols = [c for c in self.expected if canonical(self.expected[c]) != canonical(self.actual.get(c))]
            detail = "; ".join(f"{c}: destination {self.actual.get(c)!r}, source {self.expected[c]!r}"
                               for c in cols)
            text = f"different ({key}): {detail}"
        elif self.kind == MISSING:
            text = f"missing in destination ({key})"
        else:
            text = f"not in source, present in destination ({key})"
        return text + (" [events pending: the worker will apply them]" if self.pending else "")


@dataclass
class Report:
    reflection: object
    rows_compared: int = 0
    chunks: int = 0
    chunks_differing: int = 0
    differences: list = field(default_factory=list)
    repaired: int = 0

    @property
    def unresolved(self):
        return [d for d in self.differences if not d.pending]


def _hash(rows: list[tuple]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=repr):
        digest.update(repr(row).encode("utf-8"))
    return digest.hexdigest()


class Verifier:
    def __init__(self, reflection, chunk_size: int | None = None):
        self.reflection = reflection
        self.runner = ReflectionRunner(reflection)
        # rows of both sides are held as Python values: a load's Python-path bound
        self.chunk_size = chunk_size or min(int(conf.get("LOAD_CHUNK_SIZE")), PYTHON_LOAD_CHUNK)
        self.json_columns = set()

    def canon(self, column: str, value):
        return canonical_json(value) if column in self.json_columns else canonical(value)

    def _dest_rows(self, dst, keys: list[tuple]) -> dict[tuple, dict]:
        r = self.runner
        found = {}
        per_chunk = max(1, r.dst_dialect.max_parameters // max(1, len(r.dest_key_columns)))
        columns = [r.dest.c[n] for n in r.mapping.dest_columns]
        for part in chunks(keys, per_chunk):
            query = sa.select(*columns).where(r.dst_dialect.key_filter(r.dest_key_columns, part))
            for row in dst.execute(query).mappings():
                found[tuple(canonical(row[n]) for n in r.mapping.dest_key)] = dict(row)
        dst.rollback()
        return found

    def _pending_keys(self, src, keys: list[tuple]) -> set[tuple]:
        """Keys (source form) that still have events the worker has not applied."""
        if not keys:
            return set()
        r = self.runner
        pending = set()
        for unapplied in r.reader.unapplied(Position.from_json(self.reflection.position or {})):
            query = sa.select(*r.reader.key_columns).where(unapplied).where(
                r.src_dialect.key_filter(r.reader.key_columns, keys))
            pending |= {tuple(canonical(v) for v in row) for row in src.execute(query)}
        src.rollback()
        return pending

    def run(self, repair: bool = False, progress=None) -> Report:
        report = Report(self.reflection)
        r = self.runner
        with connect(self.reflection.source.database) as src, connect(self.reflection.destination) as dst:
            r.prepare(src, dst)
            json_sources = {c.name for c in r.source.columns if isinstance(c.type, JSONText)}
            self.json_columns = {c.dest for c in r.mapping.columns
                                 if c.source in json_sources or isinstance(r.dest.c[c.dest].type, JSONText)}
            self._source_pass(src, dst, report, repair, progress)
            if self.reflection.delete_policy == "delete":
                self._destination_pass(src, dst, report, repair, progress)
        return report

    def _source_pass(self, src, dst, report, repair, progress):
        r = self.runner
        after = None
        while True:
            query = sa.select(r.source).order_by(*r.source_key_columns).limit(self.chunk_size)
            if after is not None:
                query = query.where(r.src_dialect.key_after(r.source_key_columns, after))
            rows = [dict(row) for row in src.execute(query).mappings()]
            src.rollback()
            if not rows:
                break
            after = tuple(rows[-1][n] for n in r.source_key)
            keyed = [(tuple(row[n] for n in r.source_key), row) for row in rows]
            upserts, filtered = r._dest_rows(keyed)
            expected = {tuple(canonical(row[n]) for n in r.mapping.dest_key): (key, row) for key, row in upserts}
            lookup = [tuple(row[n] for n in r.mapping.dest_key) for _, row in upserts]
            lookup += [tuple(r.convert(r.mapping.dest_key_values(k))[n] for n in r.mapping.dest_key)
                       for k in filtered]
            actual = self._dest_rows(dst, lookup)
            report.rows_compared += len(rows)
            report.chunks += 1
            want = [tuple(self.canon(c, row[c]) for c in r.mapping.dest_columns) for _, row in expected.values()]
            have = [tuple(self.canon(c, row[c]) for c in r.mapping.dest_columns)
                    for k, row in actual.items() if k in expected]
            extra_filtered = [k for k in actual if k not in expected]
            if _hash(want) == _hash(have) and len(want) == len(have) and not extra_filtered:
                if progress:
                    progress(report)
                continue
            report.chunks_differing += 1
            found = []
            for dkey, (skey, row) in expected.items():
                got = actual.get(dkey)
                if got is None:
                    found.append(Difference(MISSING, skey, row, None))
                elif any(self.canon(c, row[c]) != self.canon(c, got[c]) for c in r.mapping.dest_columns):
                    found.append(Difference(DIFFERENT, skey, row, got))
            for skey in filtered:
                dkey = tuple(canonical(v) for v in r.mapping.dest_key_values(skey).values())
                if dkey in actual:
                    found.append(Difference(EXTRA, skey, None, actual[dkey]))
            self._settle(src, dst, report, found, repair)
            if progress:
                progress(report)

    def _destination_pass(self, src, dst, report, repair, progress):
        r = self.runner
        after = None
        # destination key i holds source key i (Mapping builds dest_key in source-key order)
        to_source = row_converter(r.source, r.source_key)
        while True:
            query = sa.select(*r.dest_key_columns).order_by(*r.dest_key_columns).limit(self.chunk_size)
            if after is not None:
                query = query.where(r.dst_dialect.key_after(r.dest_key_columns, after))
            keys = [tuple(row) for row in dst.execute(query)]
            dst.rollback()
            if not keys:
                break
            after = keys[-1]
            source_keys = [tuple(to_source(dict(zip(r.source_key, k))).values()) for k in keys]
            present = r._source_rows(src, source_keys)
            present_canon = {tuple(canonical(v) for v in k) for k in present}
            found = [Difference(EXTRA, k, None, None) for k in source_keys
                     if tuple(canonical(v) for v in k) not in present_canon]
            self._settle(src, dst, report, found, repair)

    def _settle(self, src, dst, report, found, repair):
        if not found:
            return
        pending = self._pending_keys(src, [d.key for d in found])
        for difference in found:
            difference.pending = tuple(canonical(v) for v in difference.key) in pending
        report.differences.extend(found)
        if not repair:
            return
        fix = [d for d in found if not d.pending]
        if not fix:
            return
        r = self.runner
        with begin(dst):
            # the worker's fence, and the source read after it: a batch committing meanwhile
            # waits, and one committed before read older rows than these
            r.checkpoint.lock(dst)
            upserts, deletes, removals = r.keyed_rows(src, [d.key for d in fix])
            r._apply(dst, [row for _, row in upserts], deletes, removals)
        report.repaired += len(fix)
        logger.info("%s: repaired %d rows", self.reflection, len(fix))


def verify(reflection, repair: bool = False, chunk_size: int | None = None, progress=None) -> Report:
    """Compare (and with ``repair``, fix) ``reflection``'s destination against its source."""
    return Verifier(reflection, chunk_size).run(repair=repair, progress=progress)
