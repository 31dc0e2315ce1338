"""The value matrix: every way a value may differ between its source and its destination.

A value arrives *equal* — the same value it denotes in the source engine (a SQLite
value into another SQLite database: byte for byte) — unless a conversion below
applies to it for its engine pair.  Then it arrives as that conversion says, or, for
a value the destination engine cannot hold, its row is set aside as a dead letter whose
message names the column and the reason.

This list is the one place these conversions are written down: the "Values" table of
``docs/dialects.md`` is generated from it (``python -m django_pdr.dialects.matrix``;
``tests/test_docs.py`` checks it is current), and the generated fidelity suite
(``tests/test_fidelity_generated.py``) accepts a difference only when a conversion here
describes it.

Values are compared as the *denotation* the suite reads from each engine: int,
``Decimal``, float, bool, str, bytes, ``date``/``time``/``datetime``, ``UUID``, and JSON
documents parsed with exact numbers (SQL NULL and the JSON value null kept apart).
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from typing import Callable

from .base import json_has_nul

ENGINES = ("postgresql", "mysql", "sqlite", "firebird")
LABEL = {"postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL", "sqlite": "SQLite", "firebird": "Firebird"}

#: The types of the matrix, in the order of docs/dialects.md.
TYPES = ("int", "bigint", "numeric", "float", "bool", "varchar", "text", "date", "time", "timestamp",
         "timestamptz", "json", "bytes", "uuid")

#: How the fidelity suite declares each type in each source engine (None: the engine has
#: no such type).
DECLARED = {
    "postgresql": {"int": "integer", "bigint": "bigint", "numeric": "numeric(30,10)", "float": "double precision",
                   "bool": "boolean", "varchar": "varchar(50)", "text": "text", "date": "date", "time": "time",
                   "timestamp": "timestamp", "timestamptz": "timestamptz", "json": "jsonb", "bytes": "bytea",
                   "uuid": "uuid"},
    "mysql": {"int": "int", "bigint": "bigint", "numeric": "decimal(30,10)", "float": "double", "bool": "bool",
              "varchar": "varchar(50)", "text": "longtext", "date": "date", "time": "time(6)",
              "timestamp": "datetime(6)", "timestamptz": None, "json": "json", "bytes": "longblob",
              "uuid": "uuid"},
    "sqlite": {"int": "integer", "bigint": "bigint", "numeric": "numeric(30,10)", "float": "double",
               "bool": "boolean", "varchar": "varchar(50)", "text": "text", "date": "date", "time": "time",
               "timestamp": "datetime", "timestamptz": None, "json": "json", "bytes": "blob", "uuid": "uuid"},
    # Firebird 3: no JSON, UUID or time-zone-aware type; NUMERIC has at most 18 digits
    "firebird": {"int": "integer", "bigint": "bigint", "numeric": "numeric(18,6)", "float": "double precision",
                 "bool": "boolean", "varchar": "varchar(50) character set utf8",
                 "text": "blob sub_type text character set utf8", "date": "date", "time": "time",
                 "timestamp": "timestamp", "timestamptz": None, "json": None, "bytes": "blob sub_type binary",
                 "uuid": None},
}

#: A pair with Firebird declares its numeric column as Firebird 3 holds it exactly (18
#: digits; a wider source column is refused when the reflection is saved).
NARROW_NUMERIC = {"postgresql": "numeric(18,6)", "mysql": "decimal(18,6)", "sqlite": "numeric(18,6)",
                  "firebird": "numeric(18,6)"}


def declared(type_: str, source: str, dest: str) -> str | None:
    """How the fidelity suite declares ``type_`` in ``source`` for a copy into ``dest``."""
    if type_ == "numeric" and "firebird" in (source, dest):
        return NARROW_NUMERIC[source]
    return DECLARED[source][type_]


def _always(value) -> bool:
    return True


@dataclass(frozen=True)
class Conversion:
    """``type`` values from ``sources`` into ``dests`` for which ``applies`` is true
    arrive so that ``arrives(source value, destination value)`` holds, or, when
    ``arrives`` is None, are set aside as dead letters."""

    type: str
    sources: tuple
    dests: tuple
    when: str
    becomes: str
    reason: str
    applies: Callable = field(default=_always, compare=False)
    arrives: Callable | None = field(default=None, compare=False)

    @property
    def dead_letter(self) -> bool:
        return self.arrives is None


def _negative_zero(value) -> bool:
    return isinstance(value, float) and value == 0 and math.copysign(1.0, value) < 0


def _zero(source, dest) -> bool:
    return dest == 0 and math.copysign(1.0, dest) > 0


def _not_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _nan(value) -> bool:
    return isinstance(value, float) and value != value


def _significant_digits(value) -> int:
    digits = value.normalize().as_tuple().digits if value.is_finite() else ()
    return len(digits)


def _nearest_double(source, dest) -> bool:
    """``dest`` is the double closest to ``source``, within the 15 significant digits
    SQLite keeps when it turns a number into a REAL."""
    if dest is None:
        return False
    want, got = float(source), float(dest)
    return got == want or abs(got - want) <= abs(want) * 1e-14


def _has_nul(value) -> bool:
    return isinstance(value, str) and "\x00" in value


def _aware(value) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is not None


def _in_utc(source, dest) -> bool:
    return dest == source.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _finer_than_100us(value) -> bool:
    return isinstance(value, (dt.time, dt.datetime)) and value.microsecond % 100 != 0


#: firebird-driver encodes a TIMESTAMP as days since 1858-11-17 (unsigned): an earlier one
#: cannot be sent.
_FIREBIRD_EPOCH = dt.datetime(1858, 11, 17)


def _before_firebird_epoch(value) -> bool:
    if not isinstance(value, dt.datetime):
        return False
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value < _FIREBIRD_EPOCH


def _firebird_refuses(value) -> bool:
    return _finer_than_100us(value) or _before_firebird_epoch(value)


PG, MY, LITE, FB = ("postgresql",), ("mysql",), ("sqlite",), ("firebird",)

CONVERSIONS = (
    Conversion("numeric", PG + MY + FB, LITE, "more than 15 significant digits",
               "the nearest REAL (15 significant digits kept)",
               "SQLite has no exact decimal type: a NUMERIC column stores such a value as REAL",
               applies=lambda v: isinstance(v, decimal.Decimal) and _significant_digits(v) > 15,
               arrives=_nearest_double),
    Conversion("float", ENGINES, MY, "-0.0", "0.0", "MariaDB stores negative zero as zero",
               applies=_negative_zero, arrives=_zero),
    Conversion("float", PG + LITE + FB, MY, "±infinity, NaN", "dead letter",
               "MariaDB's DOUBLE has no infinity or NaN", applies=_not_finite),
    Conversion("float", ENGINES, LITE, "-0.0", "0.0", "SQLite stores negative zero as zero",
               applies=_negative_zero, arrives=_zero),
    Conversion("float", PG + FB, LITE, "NaN", "dead letter", "SQLite stores NaN as NULL", applies=_nan),
    Conversion("varchar", MY + LITE + FB, PG, "contains NUL (U+0000)", "dead letter",
               "PostgreSQL text cannot hold the NUL character", applies=_has_nul),
    Conversion("text", MY + LITE + FB, PG, "contains NUL (U+0000)", "dead letter",
               "PostgreSQL text cannot hold the NUL character", applies=_has_nul),
    Conversion("json", MY + LITE, PG, "a string with NUL (\\u0000)", "dead letter",
               "PostgreSQL's jsonb refuses \\u0000", applies=json_has_nul),
    Conversion("time", PG + MY + LITE, FB, "a fraction finer than 1/10000 s", "dead letter",
               "Firebird keeps times to 1/10000 s (never cut)", applies=_finer_than_100us),
    Conversion("timestamp", PG + MY + LITE, FB, "a fraction finer than 1/10000 s, or before 1858-11-17",
               "dead letter", "Firebird keeps times to 1/10000 s (never cut); firebird-driver cannot send an "
               "earlier TIMESTAMP", applies=_firebird_refuses),
    Conversion("timestamptz", PG, FB, "a fraction finer than 1/10000 s, or before 1858-11-17 in UTC",
               "dead letter", "as for timestamp", applies=_firebird_refuses),
    Conversion("timestamptz", PG, MY + LITE + FB, "any", "the same instant in UTC, without a zone",
               "MariaDB, SQLite and Firebird 3 have no time-zone-aware type", applies=_aware, arrives=_in_utc),
)


def conversions(type_: str, source: str, dest: str) -> list[Conversion]:
    """The conversions that may apply to ``type_`` values from ``source`` into ``dest``."""
    return [c for c in CONVERSIONS if c.type == type_ and source in c.sources and dest in c.dests]


def values_table() -> str:
    """The "Values" table of docs/dialects.md (Markdown)."""
    lines = ["| type | from | into | values | arrive as | why |", "|---|---|---|---|---|---|"]
    for c in CONVERSIONS:
        sources = " / ".join(LABEL[e] for e in c.sources) if c.sources != ENGINES else "any"
        dests = " / ".join(LABEL[e] for e in c.dests)
        lines.append(f"| {c.type} | {sources} | {dests} | {c.when} | {c.becomes} | {c.reason} |")
    return "\n".join(lines) + "\n"


#: Markers of the generated table in docs/dialects.md.
BEGIN, END = "<!-- values-table: generated by python -m django_pdr.dialects.matrix -->", "<!-- end values-table -->"


def render_docs(text: str) -> str:
    """``text`` (docs/dialects.md) with its generated table replaced by the current one."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{values_table()}{END}{tail}"


if __name__ == "__main__":  # python -m django_pdr.dialects.matrix [docs/dialects.md]
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dialects.md")
    path.write_text(render_docs(path.read_text()))
    print(f"{path}: values table written ({len(CONVERSIONS)} conversions)")
