"""Reading live table structure and building destination tables."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from .connections import describe_failure, get_engine
from .dialects import get_dialect
from .errors import ConnectionFailed, NoPrimaryKey, TableNotFound


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
    engine = get_engine(database)
    try:
        conn = engine.connect()
    except Exception as exc:
        raise ConnectionFailed(describe_failure(database, exc)) from None
    with conn:
        reflected = reflect_table(conn, schema, table, database.describe())
    keys = [c.name for c in reflected.primary_key.columns]
    if not keys:
        raise NoPrimaryKey(
            f"Table {reflected.fullname!r} in {database.describe()} has no primary key. django-pdr "
            f"matches changes to rows by primary key: add one (ALTER TABLE ... ADD PRIMARY KEY) and save again."
        )
    return SourceInfo(table=reflected, key_columns=keys)


def destination_table(source_table: sa.Table, source_dialect, dest_dialect, schema: str | None,
                      name: str, columns: dict[str, str] | None = None, key: list[str] | None = None) -> sa.Table:
    """A new Table on ``dest_dialect`` for source columns, types mapped.

    ``columns`` maps destination column names to source column names (default:
    every source column under its own name); ``key`` names the destination key.
    Same-engine copies keep the reflected type; across engines each column goes
    through the engine-neutral type (``docs/dialects.md`` lists every mapping).
    """
    same_engine = type(source_dialect) is type(dest_dialect)
    if columns is None:
        columns = {c.name: c.name for c in source_table.columns}
    if key is None:
        key = [c.name for c in source_table.primary_key.columns]
    metadata = sa.MetaData()
    new_columns = []
    for dest_name, source_name in columns.items():
        column = source_table.c[source_name]
        is_key = dest_name in key
        if same_engine:
            type_ = column.type
        else:
            type_ = dest_dialect.destination_type(source_dialect.generic_type(column.type), is_key=is_key)
        new_columns.append(sa.Column(dest_name, type_, primary_key=is_key,
                                     nullable=bool(column.nullable) and not is_key, autoincrement=False))
    return sa.Table(name, metadata, *new_columns, schema=schema or None, **dest_dialect.table_kwargs())

