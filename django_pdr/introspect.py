"""What a configured database holds, for the admin's pickers.

Engine-neutral: everything comes from SQLAlchemy's inspector.  Only real tables
are listed (no views), and django-pdr's own tables (event tables and the
checkpoint table) are hidden.  Nothing here writes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import sqlalchemy as sa

from . import conf
from .connections import connect
from .dialects import get_dialect
from .errors import ConnectionFailed

#: Names of event tables (``Dialect.capture_names``: pdr_<slug>_<10 hex>_ev) and of the
#: capture registry (``REGISTRY_TABLE``): ours, never offered as a source.
_EVENT_TABLE = re.compile(r"^(pdr_.*_[0-9a-f]{10}_ev|pdr_capture)$")


@dataclass(frozen=True)
class TableRef:
    """A table found in a database.  ``schema`` is "" for the connection's default schema."""

    schema: str
    name: str
    shown_schema: str = ""

    @property
    def label(self) -> str:
        """Schema-qualified name for display (the default schema named too)."""
        return f"{self.shown_schema}.{self.name}" if self.shown_schema else self.name

    @property
    def value(self) -> str:
        """An unambiguous form value (names may contain dots)."""
        return json.dumps([self.schema, self.name])

    @classmethod
    def from_value(cls, value: str) -> "TableRef":
        try:
            schema, name = json.loads(value)
        except (ValueError, TypeError):
            raise ValueError(f"not a table reference: {value!r}") from None
        return cls(str(schema or ""), str(name))


def is_pdr_table(name: str) -> bool:
    """True for tables django-pdr creates (event tables, checkpoint table)."""
    return name == conf.get("CHECKPOINT_TABLE") or bool(_EVENT_TABLE.match(name))




def list_tables(database) -> list[TableRef]:
    """Every user table of ``database``, default schema first, then other schemas."""
    with connect(database) as conn:
        try:
            inspector = sa.inspect(conn)
            default = inspector.default_schema_name
            dialect = get_dialect(conn)
            # an engine without schemas (Firebird) has its default one only
            others = sorted(s for s in inspector.get_schema_names()
                            if s != default and not dialect.is_system_schema(s)) if conn.dialect.supports_schemas else []
            found = []
            for schema in [default, *others]:
                for name in sorted(inspector.get_table_names(schema=schema)):
                    if not is_pdr_table(name):
                        found.append(TableRef("" if schema == default else schema, name, schema or ""))
            return found
        except sa.exc.SQLAlchemyError as exc:
            raise ConnectionFailed(f"Cannot list the tables of {database.describe()}: "
                                   f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}") from None
        finally:
            conn.rollback()


def table_columns(database, schema: str | None, name: str) -> list[str] | None:
    """Column names of ``schema.name`` in ``database``, or None when the table does not exist."""
    with connect(database) as conn:
        try:
            inspector = sa.inspect(conn)
            if not inspector.has_table(name, schema=schema or None):
                return None
            return [c["name"] for c in inspector.get_columns(name, schema=schema or None)]
        except sa.exc.SQLAlchemyError as exc:
            raise ConnectionFailed(f"Cannot read table {name!r} of {database.describe()}: "
                                   f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}") from None
        finally:
            conn.rollback()
