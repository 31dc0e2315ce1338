"""Generated type fidelity across all 16 engine pairs (Hypothesis).

For each pair, Hypothesis generates rows of values the source engine accepts, for
every type of the matrix (``django_pdr/dialects/matrix.py``): NULL, empty and
4-byte text, NUL where the engine holds it, extreme numerics at full precision and
scale, ±0, ±infinity, NaN and subnormal floats, dates and timestamps at years 1 and
9999, times to the microsecond, nested and scalar JSON with null, large integers and
unicode keys, bytes 0–255, UUIDs.  They are written through the source engine's own
SQL (driver parameters, no ORM type), replicated by the initial load and by events
(inserts and updates), read back raw from both engines and compared cell by cell:
each cell is equal (a SQLite value into SQLite: byte for byte, with its storage
class), or equal to a conversion the matrix documents, or its row is a dead letter
whose message names the column — when the matrix says the destination cannot hold
the value.

CI runs the "ci" profile (few examples, fixed seed: a failure reproduces); run
``scripts/test.sh tests/test_fidelity_generated.py --hypothesis-profile=deep -s`` for
a long run (each test prints its number of examples and rows).
"""
import datetime as dt
import decimal
import itertools
import json
import math
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import given
from hypothesis import strategies as st

from django_pdr.dialects import matrix
from django_pdr.models import DeadLetter, Reflection
from tests.targets import PAIRS, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

UTC = dt.timezone.utc
JSON_NULL = ("json", "null")  # the JSON value null (SQL NULL is None)


# -- values each source engine accepts -------------------------------------------------

def text(kind, max_size, nul=True):
    # every plane, 4-byte characters included; no lone surrogates (no engine stores them)
    alphabet = st.characters(blacklist_categories=("Cs",),
                             blacklist_characters="" if nul and kind != "postgresql" else "\x00")
    return st.text(alphabet, max_size=max_size)


def numeric(kind, narrow):
    # numeric(30,10): 20 digits before the point, 10 after (numeric(18,6) in a pair with
    # Firebird: 12 and 6); a SQLite column stores a REAL, so its values keep at most 15
    # significant digits (what the source itself holds)
    places = 4 if kind == "sqlite" else 6 if narrow else 10
    limit = decimal.Decimal(10) ** (10 if kind == "sqlite" else 12 if narrow else 20) - 1
    return st.decimals(min_value=-limit, max_value=limit, places=places, allow_nan=False, allow_infinity=False)


def floats(kind):
    special = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.5e300]
    if kind == "postgresql":
        special += [math.inf, -math.inf, math.nan]
    if kind == "sqlite":
        special += [math.inf, -math.inf]
    if kind == "firebird":
        special += [math.inf, -math.inf, math.nan]
    return st.one_of(st.sampled_from(special), st.floats(allow_nan=False, allow_infinity=False))


def json_documents(kind):
    numbers = st.one_of(st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                        st.decimals(allow_nan=False, allow_infinity=False, places=6,
                                    min_value=-(10 ** 12), max_value=10 ** 12))
    scalars = st.one_of(st.none(), st.booleans(), numbers, text(kind, 20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(text(kind, 8), inner, max_size=4)),
                        max_leaves=10)


def dump_json(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump_json(v) for v in value) + "]"
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    return json.dumps(value, ensure_ascii=False)


def to_100us(value):
    return value.replace(microsecond=value.microsecond // 100 * 100)


def values(kind, type_, narrow=False):
    """A strategy of Python values for ``type_`` in the source engine ``kind``."""
    timestamps = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59))
    if kind == "firebird":  # what Firebird holds: 1/10000 s; firebird-driver sends no TIMESTAMP before 1858-11-17
        timestamps = st.datetimes(min_value=dt.datetime(1858, 11, 17),
                                  max_value=dt.datetime(9999, 12, 31, 23, 59, 59)).map(to_100us)
    return {
        "int": st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1),
        "bigint": st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
        "numeric": numeric(kind, narrow),
        "float": floats(kind) if kind != "mysql" else st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "varchar": text(kind, 50),
        "text": text(kind, 300),
        "date": st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
        "time": st.times().map(to_100us) if kind == "firebird" else st.times(),
        "timestamp": st.one_of(timestamps, st.sampled_from([
            dt.datetime(2024, 3, 31, 2, 30), dt.datetime(2024, 10, 27, 2, 30)])),  # DST edges (wall times)
        "timestamptz": st.one_of(
            timestamps.filter(lambda v: v.year > 1 and v.year < 9999)
            .map(lambda v: v.replace(tzinfo=dt.timezone(dt.timedelta(hours=2)))),
            st.sampled_from([dt.datetime(2024, 3, 31, 1, 59, 59, 999999, tzinfo=UTC),
                             dt.datetime(2024, 10, 27, 1, 0, tzinfo=UTC)])),
        "json": json_documents(kind).map(dump_json),
        "bytes": st.binary(max_size=64),
        "uuid": st.uuids(version=4) if kind == "mysql" else st.uuids(),  # MariaDB's UUID type checks the variant
    }[type_]


def columns(kind):
    return [t for t in matrix.TYPES if matrix.DECLARED[kind][t]]


def rows_strategy(kind, narrow=False):
    cells = {t: st.one_of(st.none(), values(kind, t, narrow)) for t in columns(kind)}
    return st.lists(st.fixed_dictionaries(cells), min_size=2, max_size=6)


class PgNegativeZero:
    """-0.0 for psycopg2, which spells a float as a bare literal: ``-0.0`` is minus applied
    to the numeric 0.0 for PostgreSQL, a plain 0 (psycopg2's ``__conform__`` protocol)."""

    def __conform__(self, protocol):
        return self

    @staticmethod
    def getquoted():
        return b"'-0'::float8"


def driver_value(kind, type_, value):
    """``value`` as the source driver takes it for its own SQL."""
    if value is None:
        return None
    if kind == "postgresql" and type_ == "float" and value == 0 and math.copysign(1.0, value) < 0:
        return PgNegativeZero()
    if kind == "sqlite":
        if isinstance(value, (dt.date, dt.time)):
            return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
        if isinstance(value, decimal.Decimal):
            return str(value)  # a numeric literal: the column's affinity stores it
        if isinstance(value, bool):
            return int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


# -- reading back --------------------------------------------------------------------

def select(kind, table, names):
    exprs = []
    for name in names:
        if kind == "postgresql" and name == "c_json":
            exprs.append(f"{name}::text")  # psycopg2 would parse it: null and NULL would look alike
        else:
            exprs.append(name)
    if kind == "sqlite":
        exprs += [f"typeof({name})" for name in names]
    return f"SELECT id, {', '.join(exprs)} FROM {table} ORDER BY id"


def json_denotation(value):
    if isinstance(value, dict):
        return {k: json_denotation(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_denotation(v) for v in value]
    if value is None:
        return JSON_NULL
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float, decimal.Decimal)):
        return ("number", decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value))
    return value


def denote(type_, value):
    """The value a raw driver value denotes, for the matrix's ``type_``."""
    if value is None:
        return None
    if type_ in ("int", "bigint"):
        return int(value)
    if type_ == "numeric":
        return decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    if type_ == "float":
        return float(value)
    if type_ == "bool":
        return bool(int(value))
    if type_ in ("varchar", "text"):
        return value
    if type_ == "bytes":
        return bytes(value)
    if type_ == "uuid":
        return uuid.UUID(bytes=bytes(value)) if isinstance(value, (bytes, memoryview)) else uuid.UUID(str(value))
    if type_ == "json":
        if isinstance(value, (int, float)):  # SQLite: a document that is a number, stored as one
            return json_denotation(value)
        return json_denotation(json.loads(value, parse_float=decimal.Decimal, parse_int=decimal.Decimal))
    if isinstance(value, str):
        parse = {"date": dt.date.fromisoformat, "time": dt.time.fromisoformat}.get(type_, dt.datetime.fromisoformat)
        return parse(value)
    if isinstance(value, dt.timedelta):  # MariaDB TIME
        return (dt.datetime.min + value).time()
    return value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or (a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return type(a) is type(b) and a == b or (a is None and b is None)


def read(target, table, names):
    with target.engine.connect() as conn:
        return {row[0]: row[1:] for row in conn.exec_driver_sql(select(target.kind, table, names)).all()}


# -- the property ------------------------------------------------------------------------

def check_pair(source, dest, table, reflection):
    """Compare every cell; return the number of cells compared."""
    types = columns(source.kind)
    names = [f"c_{t}" for t in types]
    src, dst = read(source, table, names), read(dest, table, names)
    letters = {letter.key[0]: letter.error for letter in DeadLetter.objects.filter(reflection=reflection)}
    problems, cells = [], 0
    for id_, raw in src.items():
        expected_letter = []
        for position, type_ in enumerate(types):
            value = denote(type_, raw[position])
            dead = [c for c in matrix.conversions(type_, source.kind, dest.kind)
                    if c.dead_letter and value is not None and c.applies(value)]
            if dead:
                expected_letter.append((names[position], dead[0]))
        if expected_letter:
            error = letters.get(id_)
            if error is None or not any(f"'{name}'" in error for name, _ in expected_letter):
                problems.append((id_, "expected a dead letter naming", [n for n, _ in expected_letter], error))
            continue
        if id_ in letters:
            problems.append((id_, "undocumented dead letter", letters[id_]))
            continue
        got = dst.get(id_)
        if got is None:
            problems.append((id_, "missing in the destination"))
            continue
        if source.kind == dest.kind == "sqlite":  # byte for byte, with the storage class
            cells += len(raw)
            if tuple(raw) != tuple(got) or any(
                    isinstance(a, float) and not same(a, b) for a, b in zip(raw, got)):
                problems.append((id_, "not byte for byte", raw, got))
            continue
        for position, type_ in enumerate(types):
            cells += 1
            want, have = denote(type_, raw[position]), denote(type_, got[position])
            converted = [c for c in matrix.conversions(type_, source.kind, dest.kind)
                         if want is not None and c.applies(want)]
            ok = converted[0].arrives(want, have) if converted else same(want, have)
            if not ok:
                problems.append((id_, names[position], want, have))
    extra = set(dst) - set(src)
    if extra:
        problems.append(("rows not in the source", sorted(extra)))
    assert problems == [], problems
    return cells


def mark(kind):
    return "?" if kind in ("sqlite", "firebird") else "%s"


def insert_sql(kind, table, names):
    return f"INSERT INTO {table} (id, {', '.join(names)}) VALUES ({', '.join([mark(kind)] * (len(names) + 1))})"


def write(target, sql, rows):
    raw = target.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for row in rows:
            cursor.execute(sql, row)
        raw.commit()
    finally:
        raw.close()


@pytest.mark.parametrize("source_kind,dest_kind", PAIRS)
def test_generated_values_arrive_equal_converted_or_set_aside(make_target, source_kind, dest_kind):
    source, dest = make_target(source_kind), make_target(dest_kind)
    src_db, dst_db = source.model("src"), dest.model("dst")
    types = columns(source_kind)
    names = [f"c_{t}" for t in types]
    tables = itertools.count(1)
    seen = {"examples": 0, "rows": 0, "cells": 0}

    narrow = "firebird" in (source_kind, dest_kind)
    rows = rows_strategy(source_kind, narrow)

    @given(load=rows, events=rows, updates=rows)
    def check(load, events, updates):
        table = f"t{next(tables)}"
        ddl = ", ".join(f"{n} {matrix.declared(t, source_kind, dest_kind)}" for n, t in zip(names, types))
        source.execute(f"CREATE TABLE {table} (id int NOT NULL PRIMARY KEY, {ddl})")
        sql = insert_sql(source_kind, table, names)

        def as_rows(generated, start):
            return [(start + i, *[driver_value(source_kind, t, row[t]) for t in types])
                    for i, row in enumerate(generated)]

        write(source, sql, as_rows(load, 1))
        st_ = watch(src_db, table)
        reflection = Reflection.objects.create(source=st_, destination=dst_db, destination_table=table)
        run(reflection)  # the initial load
        write(source, sql, as_rows(events, 100))  # events: inserts...
        m = mark(source_kind)
        update = f"UPDATE {table} SET {', '.join(f'{n} = {m}' for n in names)} WHERE id = {m}"
        write(source, update, [(*row[1:], row[0]) for row in as_rows(updates, 1)[:len(load)]])  # ...and updates
        run(reflection)
        # a key set aside waits for a retry (per-key order): retry, so that every row is
        # compared with its current value
        run(reflection, retry=True)
        seen["cells"] += check_pair(source, dest, table, reflection)
        seen["examples"] += 1
        seen["rows"] += len(load) + len(events)
        Reflection.objects.filter(pk=reflection.pk).update(active=False)

    check()
    print(f"\n{source_kind} -> {dest_kind}: {seen['examples']} examples, {seen['rows']} rows, "
          f"{seen['cells']} cells compared")


def run(reflection, retry=False):
    try:
        call_command("pdr-reflect", reflections=[reflection.pk], retry_dead_letters=retry, verbosity=0)
    except CommandError as exc:
        if "dead letters" not in str(exc):  # rows set aside are checked cell by cell
            raise
