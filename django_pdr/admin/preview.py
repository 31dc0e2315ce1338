"""The first rows of a source as a reflection would write them, without writing.

Reads the source (first N rows in key order), applies the reflection's mapping
and the destination's value conversions, and returns the rows.  Both
connections only read and are rolled back; the destination table is not created
when it does not exist yet (the types it would get are shown instead).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from ..coerce import row_converter
from ..dialects import get_dialect
from ..connections import connect
from ..errors import ConfigurationError, NoPrimaryKey
from ..mapping import Mapping
from ..schema import check_destination_names, destination_table, reflect_table

#: Most rows a preview shows.
MAX_ROWS = 200


@dataclass
class PreviewResult:
    columns: list[str]
    types: dict[str, str]
    key: list[str]
    rows: list[list]
    filtered: int = 0
    destination_exists: bool = False
    notes: list[str] = field(default_factory=list)


def _type_label(type_, sa_dialect) -> str:
    try:
        return str(type_.compile(dialect=sa_dialect))
    except Exception:  # a reflected type without a rendering on that engine
        return type(type_).__name__


def _display(value):
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        return "0x" + value[:32].hex() + ("…" if len(value) > 32 else "")
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def preview(reflection, limit: int = 20) -> PreviewResult:
    """The first ``limit`` source rows (key order) as ``reflection`` would land them.

    Raises PdrError subclasses with a readable message (unreachable database,
    missing table, no primary key, invalid mapping)."""
    limit = max(1, min(int(limit), MAX_ROWS))
    st = reflection.source
    with connect(st.database) as src:
        try:
            source = reflect_table(src, st.schema or None, st.table, st.database.describe())
            key = [c.name for c in source.primary_key.columns]
            if not key:
                raise NoPrimaryKey(f"Table {source.fullname!r} in {st.database.describe()} "
                                   f"has no primary key.")
            mapping = Mapping.from_reflection(reflection, [c.name for c in source.columns], key)
            src_dialect = get_dialect(src)
            query = mapping.select(source).order_by(*[source.c[k] for k in key]).limit(limit)
            source_rows = [dict(r) for r in src.execute(query).mappings()]
        finally:
            src.rollback()

    dest_db = reflection.destination
    schema = reflection.destination_schema or None
    notes = []
    with connect(dest_db) as dst:
        try:
            exists = sa.inspect(dst).has_table(reflection.destination_table, schema=schema)
            if exists:
                dest = reflect_table(dst, schema, reflection.destination_table, dest_db.describe())
                mapping = mapping.restrict_to(dest.c.keys())
                if mapping.extras:
                    notes.append(f"Source column(s) {', '.join(mapping.extras)} are not in the destination "
                                 f"table: pdr-reflect stops with an error until they are added (manage.py "
                                 f"pdr-sync-schema) or an explicit mapping leaves them out.")
                missing = [c for c in mapping.dest_columns if c not in dest.c]
                if missing:
                    raise ConfigurationError(
                        f"Destination table {dest.fullname!r} has no column(s) {', '.join(missing)}: "
                        f"add them, or map the source columns to existing ones.")
                target = dest
            else:
                target = destination_table(source, src_dialect, get_dialect(dst), schema,
                                           reflection.destination_table, mapping=mapping)
                check_destination_names(get_dialect(dst), schema, target.name, target.c.keys())
                notes.append("The destination table does not exist yet: pdr-reflect will create it "
                             "with the column types shown.")
            types = {c: _type_label(target.c[c].type, dst.dialect) for c in mapping.dest_columns}
        finally:
            dst.rollback()

    convert = row_converter(target, mapping.dest_columns)
    rows, filtered = [], 0
    for row in source_rows:
        out = mapping.transform(row)
        if out is None:
            filtered += 1
            continue
        out = convert(out)
        rows.append([_display(out[c]) for c in mapping.dest_columns])
    return PreviewResult(columns=mapping.dest_columns, types=types, key=mapping.dest_key, rows=rows,
                         filtered=filtered, destination_exists=exists, notes=notes)
