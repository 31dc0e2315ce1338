"""Accepting a source table's new structure (schema drift)."""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .capture import plan as capture_plan
from .connections import begin, connect
from .schema import check_destination_names, destination_table, drift, reflect_table

logger = logging.getLogger("django_pdr.schemasync")




def sync(source_table, add_to_destinations: bool = True) -> dict:
    """Record the live structure of ``source_table``; for its exact-mirror reflections,
    add the new source columns to the destination tables.  Returns what was done."""
    from .dialects import get_dialect

    done = {"added": [], "removed": [], "altered": []}
    with connect(source_table.database) as src:
        capture = capture_plan(src, source_table)
        src.rollback()
    added, removed = drift(source_table, capture.source)
    done["added"], done["removed"] = added, removed
    if add_to_destinations and added:
        for reflection in source_table.reflections.select_related("destination"):
            if (reflection.mapping or "").strip() or (reflection.statement or "").strip():
                continue  # an explicit mapping names its columns itself
            with connect(reflection.destination) as dst:
                schema = reflection.destination_schema or None
                if not sa.inspect(dst).has_table(reflection.destination_table, schema=schema):
                    continue
                dest = reflect_table(dst, schema, reflection.destination_table, reflection.destination.describe())
                dialect = get_dialect(dst)
                planned = destination_table(capture.source, capture.dialect, dialect, schema,
                                            reflection.destination_table)
                # all or nothing: MySQL commits each ALTER at once
                check_destination_names(dialect, None, None, [n for n in added if n not in dest.c])
                with begin(dst):
                    for name in added:
                        if name in dest.c:
                            continue
                        column = sa.Column(name, planned.c[name].type, nullable=True)
                        dst.exec_driver_sql(dialect.add_column_statement(dest, column))
                        done["altered"].append(f"{reflection.destination.name}.{dest.fullname}.{name}")
                        logger.info("added column %s to %s", name, dest.fullname)
            # rows already copied get the new column's values by a resync, at once (a reflection
            # stopped by the missing column waits for no back-off)
            type(reflection).objects.filter(pk=reflection.pk).update(resync_requested=True,
                                                                     next_attempt_at=None)
    source_table.columns = [{"name": c.name, "type": str(c.type.compile(dialect=capture.dialect.sa)),
                             "nullable": bool(c.nullable)} for c in capture.source.columns]
    type(source_table).objects.filter(pk=source_table.pk).update(columns=source_table.columns)
    return done
