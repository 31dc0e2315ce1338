"""How a source row becomes a destination row.

The default (an empty ``Reflection.mapping``) is an exact mirror: every source
column lands in the destination column of the same name, keyed by the source
primary key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass
class Mapping:
    #: destination column -> source column
    columns: dict[str, str]
    #: destination key columns, in the order of the source key columns
    dest_key: list[str]
    source_key: list[str]

    @classmethod
    def mirror(cls, source_columns: list[str], source_key: list[str]) -> "Mapping":
        return cls({c: c for c in source_columns}, list(source_key), list(source_key))

    @classmethod
    def from_reflection(cls, reflection, source_columns: list[str], source_key: list[str]) -> "Mapping":
        text = (reflection.mapping or "").strip()
        if not text:
            return cls.mirror(source_columns, source_key)
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"The mapping of reflection {reflection.pk} is not valid JSON: {exc}")
        if not isinstance(spec, dict) or not isinstance(spec.get("columns", {}), dict):
            raise ConfigurationError(
                f"The mapping of reflection {reflection.pk} must be an object like "
                '{"columns": {"destination_column": "source_column"}}.')
        columns = spec.get("columns") or {c: c for c in source_columns}
        unknown = sorted(set(columns.values()) - set(source_columns))
        if unknown:
            raise ConfigurationError(
                f"The mapping of reflection {reflection.pk} names source columns that do not exist: "
                f"{', '.join(unknown)}.")
        inverse = {src: dest for dest, src in columns.items()}
        missing = [k for k in source_key if k not in inverse]
        if missing:
            raise ConfigurationError(
                f"The mapping of reflection {reflection.pk} must map every source key column "
                f"({', '.join(missing)} missing).")
        return cls(dict(columns), [inverse[k] for k in source_key], list(source_key))

    @property
    def dest_columns(self) -> list[str]:
        return list(self.columns)

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.dest_key]

    def transform(self, row: dict) -> dict | None:
        """The destination row for a source row (None: the row is filtered out)."""
        return {dest: row[src] for dest, src in self.columns.items()}

    def dest_key_values(self, source_key: tuple) -> dict:
        return dict(zip(self.dest_key, source_key))
