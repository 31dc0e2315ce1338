"""What a pass needs to know about its tables, described once per configuration:
the source (through its capture plan), the destination (created if missing, with every
fan-in partner's columns), the mapping, how values are read and written, whether rows
can pass as text, and the checkpoint row.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import sqlalchemy as sa

from ..capture import NOT_INSTALLED, OUTDATED, inspect
from ..capture import plan as capture_plan
from ..coerce import row_converter
from ..dialects import get_dialect
from ..dialects.base import RawValue, event_key_name
from ..errors import CaptureMissing, CaptureOutdated, ConfigurationError
from ..mapping import Mapping
from ..schema import (check_destination_names, create_table, drift, fan_in_part, merged_destination_table,
                      reflect_table)
from .checkpoint import Checkpoint
from .textpath import MARK_COLUMN
from .visibility import EventReader

logger = logging.getLogger("django_pdr.reflect")


#: Prepared table descriptions, per reflection (see ReflectionRunner.prepare_cached).
_PREPARED: dict = {}
_PREPARED_LOCK = threading.Lock()


PREPARE_TTL = 60.0
#: Descriptions kept at most (the least recently used go first): a worker serving many
#: reflections keeps those it is working on (the busy ones), not one per quiet table: a
#: quiet table's change costs a description (a few catalog reads), whereas a thousand
#: kept descriptions would cost about 100 MB.
PREPARED_MAX = 64


_DESCRIBED = ("capture", "src_dialect", "source", "source_key", "reader", "mapping", "removed_columns",
              "dst_dialect", "statement", "delete_statement", "dest", "checkpoint", "convert", "dest_key_columns",
              "source_key_columns", "text_path", "binary_types")


def forget_descriptions():
    """Drop every cached table description (the next pass describes afresh)."""
    _PREPARED.clear()


def forget_stale_descriptions():
    """Drop the descriptions too old to be used again (PREPARE_TTL): a worker serving many
    idle reflections keeps only those of the active ones in memory."""
    now = time.monotonic()
    with _PREPARED_LOCK:
        for pk, entry in list(_PREPARED.items()):
            if now - entry[1] >= PREPARE_TTL:
                _PREPARED.pop(pk, None)


class Describing:
    """The description of a reflection's tables (``prepare``), cached per configuration.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    def prepare(self, src, dst):
        """Reflect the source, make sure capture and the destination exist."""
        st = self.source_table
        capture = capture_plan(src, st)
        needs = inspect(src, capture).needs
        # the worker changes no schema: capture is installed by pdr-install or the admin (a
        # partial capture is reported by every pass: Reconciling._check_capture)
        if needs and needs[0] == NOT_INSTALLED:
            raise CaptureMissing(
                f"Capture is not installed on {st}: run manage.py pdr-install (or Install capture in the "
                f"admin); the reflection then loads the destination.")
        if needs and needs[0] == OUTDATED:
            raise CaptureOutdated(
                f"Capture on {st} is outdated ({needs[1]}): run manage.py pdr-install, then restart the "
                f"workers.")
        src.rollback()
        self.capture = capture
        self.src_dialect = capture.dialect
        self.source = capture.source
        self.source_key = capture.key_names
        self.mapping = Mapping.from_reflection(self.reflection, [c.name for c in self.source.columns],
                                               self.source_key)
        added, self.removed_columns = drift(st, self.source)

        self.dst_dialect = get_dialect(dst)
        r = self.reflection
        schema = r.destination_schema or None
        self.statement = (r.statement or "").strip()
        self.delete_statement = (r.delete_statement or "").strip()
        self._load_partners()
        exists = sa.inspect(dst).has_table(r.destination_table, schema=schema)
        if not exists and not self.statement:
            # fan-in: the table gets the columns of every reflection that writes it
            parts = [(r.pk, (f"reflection {r.pk} ({st})", self.source, self.src_dialect, self.mapping))]
            parts += [(p.pk, fan_in_part(p)) for p in self.partners if not (p.statement or "").strip()]
            table = merged_destination_table([part for _, part in sorted(parts, key=lambda item: item[0])],
                                             self.dst_dialect, schema, r.destination_table)
            check_destination_names(self.dst_dialect, table.schema, table.name, table.c.keys())
            create_table(dst, table)  # another worker may create it at the same moment
            logger.info("%s: created destination table %s", r, table.fullname)
            exists = True
        if exists and not self.statement:
            self.dest = reflect_table(dst, schema, r.destination_table, r.destination.describe())
            self.mapping = self.mapping.restrict_to(self.dest.c.keys())
            if self.mapping.extras:
                raise ConfigurationError(
                    f"Source column(s) {', '.join(self.mapping.extras)} of {self.source.fullname!r} are "
                    f"not in destination table {self.dest.fullname!r}: they are not replicated. Add them "
                    f"to the destination (manage.py pdr-sync-schema does it for columns added at the "
                    f"source since its capture was installed, and resyncs), or give the reflection an "
                    f"explicit mapping that leaves them out.")
            dropped = [c for c in self.removed_columns if c in self.dest.c] if self.mapping.mirror else []
            if dropped:
                raise ConfigurationError(
                    f"Column(s) {', '.join(dropped)} were removed from source table {self.source.fullname!r} but "
                    f"destination {self.dest.fullname!r} still has them: drop them there (or keep them and "
                    f"accept the new structure) and run manage.py pdr-sync-schema.")
            missing = [c for c in self.mapping.dest_columns if c not in self.dest.c]
            if missing:
                raise ConfigurationError(
                    f"Destination table {self.dest.fullname!r} has no column(s) {', '.join(missing)}: "
                    f"add them, or map the source columns to existing ones.")
        else:
            # a custom statement writes wherever it says; only the checkpoint table is ours
            self.dest = sa.Table(r.destination_table, sa.MetaData(),
                                 *[sa.Column(c, sa.types.NullType()) for c in self.mapping.dest_columns],
                                 schema=schema)
        self.checkpoint = Checkpoint(self.dst_dialect, schema, r.uid, label=str(r))
        dst.rollback()
        self.checkpoint.create(dst)
        self.dest_key_columns = [self.dest.c[n] for n in self.mapping.dest_key]
        self.text_path = self._text_path_possible()
        if self.text_path:
            logger.info("%s: rows pass as text (every column has the same type on both sides)", r)
        self.binary_types = self._binary_types(src, dst)
        self._value_types(capture.event)
        self.reader = EventReader(self.src_dialect, capture.event, len(self.source_key))
        self.reader.confirm_with(capture.registry, capture.event.name)
        self.convert = row_converter(self.dest, self.mapping.dest_columns)

    def _value_types(self, event: sa.Table):
        """How values are read and written.  JSON as its text, both ways (SQL NULL and the
        JSON value null stay apart, numbers keep every digit).  Between two databases of an
        engine that copies raw values (SQLite), copied columns and the keys pass as stored,
        byte for byte."""
        if (self.src_dialect.copies_raw_values and type(self.src_dialect) is type(self.dst_dialect)
                and not self.statement):
            for column in self.mapping.columns:
                if column.source is not None and column.source in self.source.c and column.dest in self.dest.c:
                    self.source.c[column.source].type = self.dest.c[column.dest].type = RawValue()
            for position, name in enumerate(self.source_key):
                if isinstance(self.source.c[name].type, RawValue):
                    event.c[event_key_name(position)].type = RawValue()
        for table, dialect in ((self.source, self.src_dialect), (self.dest, self.dst_dialect)):
            for column in table.columns:
                if isinstance(column.type, sa.JSON):
                    column.type = dialect.json_text_type()

    def describe_again(self):
        """Forget this reflection's description: the next pass describes its tables afresh
        (a check found a column of another type than described); this one goes on without
        the binary form."""
        self.binary_types = None
        with _PREPARED_LOCK:
            _PREPARED.pop(self.reflection.pk, None)

    def _binary_types(self, src, dst) -> tuple | None:
        """The destination columns' exact types when the rows of a load chunk can pass in
        the engines' binary form (cheaper to read and to write than text): text path, and
        every column of the same built-in type on both sides, modifiers included."""
        if not self.text_path or not self.src_dialect.copies_binary_to(self.dst_dialect):
            return None
        try:
            source = self.src_dialect.binary_types(src, self.source, [c.source for c in self.mapping.columns])
            dest = self.dst_dialect.binary_types(dst, self.dest, self.mapping.dest_columns)
        finally:
            src.rollback()
            dst.rollback()
        return tuple(dest) if source is not None and source == dest else None

    def _text_path_possible(self) -> bool:
        """Rows can pass from source to destination in the engines' own text form (no
        Python values): same engine family, plain copied columns of the same types."""
        if (self.statement or not self.src_dialect.copies_text_to(self.dst_dialect)
                or MARK_COLUMN in self.dest.c):
            return False
        return all(c.source is not None and c.source in self.source.c and c.dest in self.dest.c
                   and self.src_dialect.text_compatible(self.source.c[c.source].type, self.dest.c[c.dest].type,
                                                        self.dst_dialect, is_key=c.source in self.source_key)
                   for c in self.mapping.columns)

    def _use_text(self) -> bool:
        """The text path for this batch: only the plain delete policy, no fan-in partner,
        no key held by a dead letter (those need per-row decisions)."""
        return (self.text_path and self.reflection.delete_policy == "delete" and not self.partners
                and not self.held_keys)

    def _load_partners(self):
        """Other active reflections into the same destination table (fan-in)."""
        r = self.reflection
        self.partners = list(type(r).objects.filter(
            destination=r.destination, destination_schema=r.destination_schema,
            destination_table=r.destination_table, active=True).exclude(pk=r.pk).select_related("source__database"))
        self._partner_cache = None
        self.source_key_columns = [self.source.c[n] for n in self.source_key]

    def _config_key(self):
        r, st = self.reflection, self.source_table
        return (r.mapping, r.statement, r.delete_statement, r.delete_policy, r.destination_id,
                r.destination_schema, r.destination_table, r.destination.modified_at, st.pk, st.schema, st.table,
                st.database.modified_at, st.installed_fingerprint, json.dumps(st.columns, sort_keys=True))

    def prepare_cached(self, src, dst):
        """``prepare`` once per configuration (and at most every PREPARE_TTL seconds):
        describing tables costs a dozen queries, a batch needs none of them."""
        key = self._config_key()
        entry = _PREPARED.get(self.reflection.pk)
        if entry and entry[0] == key and time.monotonic() - entry[1] < PREPARE_TTL:
            self.__dict__.update(entry[2])
            self._load_partners()
            return
        self.prepare(src, dst)
        described = {name: getattr(self, name) for name in _DESCRIBED}
        with _PREPARED_LOCK:  # a running worker's busy lane describes too (worker.BusyLane)
            _PREPARED.pop(self.reflection.pk, None)
            while len(_PREPARED) >= PREPARED_MAX:
                _PREPARED.pop(next(iter(_PREPARED)))  # dicts keep insertion order: the oldest first
            _PREPARED[self.reflection.pk] = (self._config_key(), time.monotonic(), described)
