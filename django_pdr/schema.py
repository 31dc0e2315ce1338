"""Reading live table structure and building destination tables."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from .connections import connect
from .dialects import get_dialect
from .errors import NoPrimaryKey, TableNotFound


@dataclass
class SourceInfo:
    table: sa.Table
    key_columns: list[str]

    @property
    def column_summary(self):
        return [{"name": c.name, "type": _type_label(c.type), "nullable": bool(c.nullable)}
                for c in self.table.columns]


def _type_label(type_):
    try:
        return str(type_)
    except Exception:  # some reflected types cannot render without a dialect
        return type(type_).__name__


def reflect_table(conn, schema: str | None, name: str, database_label: str) -> sa.Table:
    """Reflect ``schema.name``; raise TableNotFound naming it and what to check."""
    metadata = sa.MetaData()
    try:
        table = sa.Table(name, metadata, schema=schema or None, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        where = f"{schema}.{name}" if schema else name
        raise TableNotFound(
            f"Table {where!r} does not exist in {database_label}: check the schema and table name "
            f"(names are case-sensitive on most engines)."
        ) from None
    for column in table.columns:
        # read floating-point columns as float: a Decimal conversion rounds to 10 digits
        if isinstance(column.type, sa.Float) and column.type.asdecimal:
            column.type.asdecimal = False
    get_dialect(conn).refine_reflected(conn, table)
    return table


def discover_source(database, schema: str | None, table: str) -> SourceInfo:
    """Reflect a source table and its primary key (composite keys included)."""
    with connect(database) as conn:
        reflected = reflect_table(conn, schema, table, database.describe())
    keys = [c.name for c in reflected.primary_key.columns]
    if not keys:
        raise NoPrimaryKey(
            f"Table {reflected.fullname!r} in {database.describe()} has no primary key. django-pdr "
            f"matches changes to rows by primary key: add one (ALTER TABLE ... ADD PRIMARY KEY) and save again."
        )
    return SourceInfo(table=reflected, key_columns=keys)


class DeclaredType(sa.types.UserDefinedType):
    """A column type given as SQL text in a mapping (``"type": "numeric(10,2)"``)."""

    cache_ok = True

    def __init__(self, spec: str):
        self.spec = spec

    def get_col_spec(self, **kw):
        return self.spec


def _const_type(value):
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, float):
        return sa.Double()
    return sa.Text()


def destination_table(source_table: sa.Table, source_dialect, dest_dialect, schema: str | None,
                      name: str, mapping=None) -> sa.Table:
    """A new Table on ``dest_dialect`` for a mapping of source columns (default: a mirror).

    Copied columns take the source column's type: verbatim on the same engine,
    else through the engine-neutral type (``docs/dialects.md`` lists every
    mapping).  Computed and constant columns take their declared ``type``.
    """
    from .errors import ConfigurationError
    from .mapping import Mapping

    if mapping is None:
        mapping = Mapping.for_mirror([c.name for c in source_table.columns],
                                     [c.name for c in source_table.primary_key.columns])
    same_engine = type(source_dialect) is type(dest_dialect)
    new_columns = []
    for item in mapping.columns:
        is_key = item.dest in mapping.dest_key
        nullable = not is_key
        if item.type:
            type_ = DeclaredType(item.type)
        elif item.source is not None:
            column = source_table.c[item.source]
            nullable = bool(column.nullable) and not is_key
            if same_engine:
                type_ = column.type
            else:
                type_ = dest_dialect.destination_type(source_dialect.generic_type(column.type), is_key=is_key)
        elif item.is_const:
            type_ = dest_dialect.destination_type(_const_type(item.const), is_key=is_key)
        else:
            raise ConfigurationError(
                f"Column {item.dest!r} is computed by an expression: give its \"type\" in the mapping "
                f"(e.g. \"type\": \"numeric(12,2)\") so that PDR can create table {name!r}, or create the "
                f"table yourself.")
        new_columns.append(sa.Column(item.dest, type_, primary_key=is_key, nullable=nullable,
                                     autoincrement=False))
    return sa.Table(name, sa.MetaData(), *new_columns, schema=schema or None, **dest_dialect.table_kwargs())


def drift(source_table, live: sa.Table) -> tuple[list[str], list[str]]:
    """(columns added, columns removed) since ``source_table``'s recorded structure."""
    recorded = [c["name"] for c in (source_table.columns or [])]
    if not recorded:
        return [], []
    current = [c.name for c in live.columns]
    return [c for c in current if c not in recorded], [c for c in recorded if c not in current]
