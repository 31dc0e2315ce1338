"""Reading live table structure and building destination tables."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from .connections import begin, connect
from .dialects import get_dialect
from .errors import ConfigurationError, NameRefused, NoPrimaryKey, TableNotFound


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
    """Reflect ``schema.name`` (its columns and primary key: all django-pdr reads of a
    table); raise TableNotFound naming it and what to check."""
    try:
        table = _columns_and_key(conn, schema or None, name)
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
    refined = get_dialect(conn).refine_reflected(conn, table)
    return table if refined is None else refined


def _columns_and_key(conn, schema: str | None, name: str) -> sa.Table:
    """The table's columns (name, type, nullability, comment) and primary key, in two
    catalog reads: a full ``autoload`` also reads indexes, foreign keys, unique and check
    constraints, comments and options (eight), which a pass of a quiet table would pay for."""
    inspector = sa.inspect(conn)
    columns = inspector.get_columns(name, schema=schema)
    key = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    table = sa.Table(name, sa.MetaData(), schema=schema)
    for column in columns:
        table.append_column(sa.Column(column["name"], column["type"], nullable=column.get("nullable", True),
                                      autoincrement=column.get("autoincrement", "auto"),
                                      comment=column.get("comment")))
    if key:
        table.append_constraint(sa.PrimaryKeyConstraint(*key))
    return table


def create_table(conn, table: sa.Table) -> None:
    """CREATE TABLE ``table`` unless it exists, in a transaction of its own.  Another worker
    (or ``pdr-verify``) creating it at the same moment is not an error: ``checkfirst`` alone
    leaves a window between its check and its CREATE."""
    try:
        with begin(conn):
            table.create(conn, checkfirst=True)
    except sa.exc.DBAPIError:
        exists = sa.inspect(conn).has_table(table.name, schema=table.schema)
        conn.rollback()
        if not exists:
            raise


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


def check_destination_names(dialect, schema: str | None, table: str | None, columns=()) -> None:
    """Raise NameRefused when the destination engine (``dialect``: a Dialect class or
    instance) cannot hold the schema, table or column names a reflection writes (None or
    '': not checked)."""
    found = []
    named = (("schema", "destination_schema", [schema]), ("table", "destination_table", [table]),
             ("column", "mapping", list(columns)))
    for what, field, names in named:
        for name in names:
            problem = dialect.identifier_problem(name) if name or what == "column" else None
            if problem:
                found.append((field, f"{what} {name!r}: {problem}"))
    if not found:
        return
    fixes = []
    if any(field == "mapping" for field, _ in found):
        fixes.append('Rename the columns in an explicit mapping '
                     '({"columns": {"new_name": "source column", ...}})')
    if any(field != "mapping" for field, _ in found):
        fixes.append("Choose a table and schema name that fits")
    raise NameRefused(f"Destination name(s) refused — {'; '.join(text for _, text in found)}. "
                      f"{'. '.join(fixes)}.", field=found[0][0])


def fan_in_part(reflection) -> tuple:
    """(label, source Table, source dialect, Mapping) of a reflection, read through its own
    source connection (for ``merged_destination_table``)."""
    from .mapping import Mapping

    st = reflection.source
    with connect(st.database) as conn:
        source = reflect_table(conn, st.schema or None, st.table, st.database.describe())
        dialect = get_dialect(conn)
        conn.rollback()
    mapping = Mapping.from_reflection(reflection, [c.name for c in source.columns],
                                      [c.name for c in source.primary_key.columns])
    return f"reflection {reflection.pk} ({st})", source, dialect, mapping


def merged_destination_table(parts, dest_dialect, schema: str | None, name: str) -> sa.Table:
    """A new Table for several reflections into one destination table (fan-in): the
    union of the columns ``destination_table`` gives each of ``parts`` ((label, source
    Table, source dialect, Mapping) tuples).  Every part must bind the same destination
    key, and a column two parts write must get one type; columns outside the key take
    NULL (a row may come from one source only).  One part: its own table."""
    tables = [(label, destination_table(source, src_dialect, dest_dialect, schema, name, mapping=mapping))
              for label, source, src_dialect, mapping in parts]
    if len(tables) == 1:
        return tables[0][1]
    first_label, first = tables[0]
    key = [c.name for c in first.primary_key.columns]
    columns, owners = {}, {}
    for label, table in tables:
        their_key = [c.name for c in table.primary_key.columns]
        if sorted(their_key) != sorted(key):
            raise ConfigurationError(
                f"Reflections into {name!r} have different destination keys: {first_label} maps its "
                f"source key to ({', '.join(key)}), {label} to ({', '.join(their_key)}). Map every "
                f"source key to the same destination columns, or create the table yourself.")
        for column in table.columns:
            if column.name not in columns:
                columns[column.name], owners[column.name] = column, label
                continue
            known = _spelled(columns[column.name].type, dest_dialect)
            spelled = _spelled(column.type, dest_dialect)
            if known != spelled:
                raise ConfigurationError(
                    f"Reflections into {name!r} give column {column.name!r} different types: {known} "
                    f"({owners[column.name]}) and {spelled} ({label}). Give both the same \"type\" in their "
                    f"mappings, map them to different columns, or create the table yourself.")
    merged = [sa.Column(c.name, c.type, primary_key=c.name in key, nullable=c.name not in key,
                        autoincrement=False) for c in columns.values()]
    return sa.Table(name, sa.MetaData(), *merged, schema=schema or None, **dest_dialect.table_kwargs())


def _spelled(type_, dialect) -> str:
    return str(type_.compile(dialect=dialect.sa))


def drift(source_table, live: sa.Table) -> tuple[list[str], list[str]]:
    """(columns added, columns removed) since ``source_table``'s recorded structure."""
    recorded = [c["name"] for c in (source_table.columns or [])]
    if not recorded:
        return [], []
    current = [c.name for c in live.columns]
    return [c for c in current if c not in recorded], [c for c in recorded if c not in current]
