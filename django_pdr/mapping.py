"""How a source row becomes a destination row.

An empty ``Reflection.mapping`` is an exact mirror: every source column lands in
the destination column of the same name, keyed by the source primary key.
Otherwise the mapping is JSON::

    {
      "columns": {
        "id": "id",                                   # a source column, by name
        "customer": {"source": "name"},               # renamed
        "total_cents": {"expr": "amount * 100",       # an SQL expression evaluated by
                        "type": "bigint"},            #   the *source* engine; "type" is
                                                      #   used when PDR creates the table
        "origin": {"const": "eu-shop"}                # a constant
      },
      "filter": "status <> 'cancelled'"               # optional SQL condition on the source row
    }

The destination key is the destination columns mapped straight from the source
primary-key columns (every source key column must be mapped by name).  A row
that stops matching ``filter`` is removed from the destination.  Expressions and
filters are SQL run by the source database inside PDR's own SELECT, never Python:
they are checked on save (``validation.py``) and may not contain statement
separators or comments.  A custom per-row statement (``Reflection.statement``)
replaces the upsert; see ``docs/transforms.md``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property

import sqlalchemy as sa

from .errors import ConfigurationError

_FORBIDDEN = re.compile(r";|--|/\*|\*/")


def _strip_literals(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def check_sql_fragment(text: str, what: str) -> str:
    """Refuse what could end PDR's statement early or hide text from review."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"{what} must be a non-empty SQL expression.")
    if _FORBIDDEN.search(_strip_literals(text)):
        raise ConfigurationError(
            f"{what} may not contain ';' or SQL comments ('--', '/* */'): it is one expression "
            f"evaluated inside PDR's query. Got: {text!r}")
    return text.strip()


@dataclass
class Column:
    dest: str
    source: str | None = None
    expr: str | None = None
    const: object = None
    is_const: bool = False
    type: str | None = None  # destination type for new tables (SQL text)


@dataclass
class Mapping:
    columns: list[Column]
    #: destination key columns, in the order of the source key columns
    dest_key: list[str]
    source_key: list[str]
    filter: str | None = None
    mirror: bool = False
    extras: list[str] = field(default_factory=list)

    # -- construction ------------------------------------------------------
    @classmethod
    def for_mirror(cls, source_columns: list[str], source_key: list[str]) -> "Mapping":
        return cls([Column(c, source=c) for c in source_columns], list(source_key), list(source_key),
                   mirror=True)

    @classmethod
    def parse(cls, text: str, source_columns: list[str], source_key: list[str], label: str = "The mapping"):
        """Parse and check a mapping against the live source columns."""
        text = (text or "").strip()
        if not text:
            return cls.for_mirror(source_columns, source_key)
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{label} is not valid JSON: {exc}.")
        if not isinstance(spec, dict):
            raise ConfigurationError(f"{label} must be a JSON object with a \"columns\" object.")
        unknown_keys = set(spec) - {"columns", "filter"}
        if unknown_keys:
            raise ConfigurationError(f"{label} has unknown key(s) {', '.join(sorted(unknown_keys))}; "
                                     f"allowed: columns, filter.")
        raw = spec.get("columns")
        if raw is None:
            raw = {c: c for c in source_columns}
        if not isinstance(raw, dict) or not raw:
            raise ConfigurationError(f"{label}: \"columns\" must be a non-empty object "
                                     '{"destination_column": "source_column" | {...}}.')
        columns = []
        for dest, item in raw.items():
            columns.append(cls._column(dest, item, label))
        unknown = sorted({c.source for c in columns if c.source is not None} - set(source_columns))
        if unknown:
            raise ConfigurationError(f"{label} names source columns that do not exist: {', '.join(unknown)}. "
                                     f"Source columns: {', '.join(source_columns)}.")
        by_source = {}
        for column in columns:
            if column.source is not None:
                by_source.setdefault(column.source, column.dest)
        missing = [k for k in source_key if k not in by_source]
        if missing:
            raise ConfigurationError(
                f"{label} must map every source primary-key column by name (missing: {', '.join(missing)}): "
                f"the key binds source rows to destination rows.")
        filter_ = spec.get("filter")
        if filter_ is not None:
            filter_ = check_sql_fragment(filter_, f"{label}: the filter")
        return cls(columns, [by_source[k] for k in source_key], list(source_key), filter=filter_)

    @staticmethod
    def _column(dest, item, label) -> Column:
        if isinstance(item, str):
            return Column(dest, source=item)
        if not isinstance(item, dict):
            raise ConfigurationError(f"{label}: column {dest!r} must be a source column name or an object "
                                     'with "source", "expr" or "const".')
        kinds = [k for k in ("source", "expr", "const") if k in item]
        if len(kinds) != 1:
            raise ConfigurationError(f"{label}: column {dest!r} needs exactly one of \"source\", \"expr\", "
                                     f"\"const\" (got {', '.join(kinds) or 'none'}).")
        extra = set(item) - {"source", "expr", "const", "type"}
        if extra:
            raise ConfigurationError(f"{label}: column {dest!r} has unknown key(s) {', '.join(sorted(extra))}.")
        type_ = item.get("type")
        if type_ is not None:
            type_ = check_sql_fragment(type_, f"{label}: the type of column {dest!r}")
        if "source" in item:
            return Column(dest, source=item["source"], type=type_)
        if "expr" in item:
            return Column(dest, expr=check_sql_fragment(item["expr"], f"{label}: column {dest!r}"), type=type_)
        return Column(dest, const=item["const"], is_const=True, type=type_)

    @classmethod
    def from_reflection(cls, reflection, source_columns: list[str], source_key: list[str]) -> "Mapping":
        return cls.parse(reflection.mapping, source_columns, source_key,
                         label=(f"The mapping of reflection {reflection.pk}" if isinstance(reflection.pk, int)
                                else "The mapping"))

    def restrict_to(self, dest_columns) -> "Mapping":
        """For a mirror: keep the source columns the destination has (a column added to the
        source waits until the user adds it to the destination)."""
        if not self.mirror:
            return self
        present = set(dest_columns)
        kept = [c for c in self.columns if c.dest in present or c.dest in self.dest_key]
        extras = [c.dest for c in self.columns if c not in kept]
        return Mapping(kept, self.dest_key, self.source_key, self.filter, True, extras)

    # -- use -----------------------------------------------------------------
    @property
    def dest_columns(self) -> list[str]:
        return [c.dest for c in self.columns]

    @property
    def value_columns(self) -> list[str]:
        return [c.dest for c in self.columns if c.dest not in self.dest_key]

    @property
    def source_names(self) -> dict[str, str]:
        """destination column -> source column, for columns copied from the source."""
        return {c.dest: c.source for c in self.columns if c.source is not None}

    def select(self, source: sa.Table):
        """The SELECT of source rows with computed columns and the filter flag."""
        extra = [sa.literal_column(f"({c.expr})").label(f"pdr_x_{i}")
                 for i, c in enumerate(self.columns) if c.expr is not None]
        if self.filter:
            extra.append(sa.case((self.filter_clause(), 1), else_=0).label("pdr_keep"))
        return sa.select(source, *extra)

    def filter_clause(self):
        """The filter as an SQL condition on the source row (checked on save)."""
        return sa.literal_column(f"({self.filter})")

    def transform(self, row: dict) -> dict | None:
        """The destination row for a source row (None: filtered out)."""
        if self.filter and not row.get("pdr_keep"):
            return None
        return {dest: row[name] if name is not None else const for dest, name, const in self._picks}

    def is_identity_for(self, names: list[str]) -> bool:
        """True when ``transform`` of a row with exactly the columns ``names`` gives the
        same row (no filter, every column copied under its own name)."""
        return not self.filter and [(n, n, None) for n in names] == self._picks

    @cached_property
    def _picks(self) -> list[tuple]:
        """(destination column, name in the SELECT's row or None for a constant, constant)."""
        return [(c.dest, c.source if c.source is not None else (f"pdr_x_{i}" if c.expr is not None else None),
                 c.const) for i, c in enumerate(self.columns)]

    def dest_key_values(self, source_key: tuple) -> dict:
        return dict(zip(self.dest_key, source_key))

    def source_parameters(self, row: dict) -> dict:
        """Named parameters for a custom statement: source columns, then destination columns."""
        params = {k: v for k, v in row.items() if not k.startswith("pdr_")}
        out = self.transform(row) or {}
        params.update(out)
        return params
