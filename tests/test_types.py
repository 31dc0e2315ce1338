"""Type fidelity in all 16 pairs: every value arrives exactly, or converted as
``docs/dialects.md`` documents (each conversion below names its row there)."""
import datetime as dt
import decimal
import json
import uuid

import pytest
import sqlalchemy as sa
from django.core.management import call_command

from django_pdr.models import Reflection
from tests.targets import PAIRS, rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

UTC = dt.timezone.utc
DDL = {
    "postgresql": "CREATE TABLE types (id int PRIMARY KEY, i int, bi bigint, n numeric(12,2), f double precision, "
                  "b boolean, vc varchar(50), t text, d date, tm time, ts timestamp, tstz timestamptz, "
                  "j jsonb, by bytea, u uuid)",
    "mysql": "CREATE TABLE types (id int PRIMARY KEY, i int, bi bigint, n decimal(12,2), f double, b bool, "
             "vc varchar(50), t longtext, d date, tm time(6), ts datetime(6), tstz datetime(6), j json, "
             "`by` longblob, u uuid) CHARACTER SET utf8mb4",
    "sqlite": "CREATE TABLE types (id integer PRIMARY KEY, i integer, bi bigint, n numeric(12,2), f double, "
              "b boolean, vc varchar(50), t text, d date, tm time, ts datetime, tstz datetime, j json, "
              "by blob, u uuid)",
    # Firebird 3: no JSON, UUID or time-zone-aware type; BY is a reserved word
    "firebird": 'CREATE TABLE types (id int NOT NULL PRIMARY KEY, i int, bi bigint, n numeric(12,2), '
                'f double precision, b boolean, vc varchar(50), t BLOB SUB_TYPE TEXT, d date, tm time, '
                'ts timestamp, tstz timestamp, j BLOB SUB_TYPE TEXT, "by" BLOB SUB_TYPE BINARY, u char(36))',
}
# The source rows, as Python values (written through SQLAlchemy types).
VALUES = [
    dict(id=1, i=-5, bi=2 ** 62, n=decimal.Decimal("-1234567890.12"), f=0.1 + 0.2, b=True,
         vc="Ünïcødé ✓ \"quoted\" 'single'", t="emoji 🍮, 中文, tab\tnewline\n", d=dt.date(2024, 2, 29),
         tm=dt.time(13, 14, 15, 123456), ts=dt.datetime(2024, 5, 6, 7, 8, 9, 654321),
         tstz=dt.datetime(2024, 5, 6, 7, 8, 9, 654321, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         j={"b": 1, "a": [1, 2.5, None, "ü"]}, by=b"\x00\xff\x10binary", u=uuid.UUID(int=0x1234567812345678)),
    dict(id=2, i=None, bi=None, n=None, f=None, b=None, vc=None, t=None, d=None, tm=None, ts=None, tstz=None,
         j=None, by=None, u=None),
    dict(id=3, i=2 ** 31 - 1, bi=-(2 ** 63), n=decimal.Decimal("0.01"), f=-1.5e300, b=False, vc="", t="",
         d=dt.date(1970, 1, 1), tm=dt.time(0, 0), ts=dt.datetime(2038, 1, 19, 3, 14, 8),
         tstz=dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), j=[], by=b"", u=uuid.uuid4()),
]


def source_table(kind):
    """The test's own typed view of the source table (used to write the rows)."""
    json_type = sa.JSON()
    if kind == "firebird":
        json_type = JSONText()
    if kind == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        json_type = JSONB()
    return sa.Table(
        "types", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("i", sa.Integer), sa.Column("bi", sa.BigInteger),
        sa.Column("n", sa.Numeric(12, 2)), sa.Column("f", sa.Double), sa.Column("b", sa.Boolean),
        sa.Column("vc", sa.String(50)), sa.Column("t", sa.Text), sa.Column("d", sa.Date),
        sa.Column("tm", sa.Time), sa.Column("ts", sa.DateTime), sa.Column("tstz", sa.DateTime(timezone=True)),
        sa.Column("j", json_type), sa.Column("by", sa.LargeBinary if kind != "firebird" else FirebirdBlob),
        # SQLite applications store UUIDs as canonical text (a hex form of digits only
        # would get NUMERIC affinity and become an integer)
        sa.Column("u", sa.Uuid() if kind not in ("sqlite", "firebird") else UuidText()),
    )


class FirebirdBlob(sa.TypeDecorator):
    """A binary BLOB written as bytes or NULL (sqlalchemy-firebird 2.2's own fails on NULL)."""

    impl = sa.types.NullType
    cache_ok = True


class JSONText(sa.TypeDecorator):
    """A JSON document written as its text (Firebird has no JSON type)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else json.dumps(value)


def values_for(src, dst):
    """VALUES as written for this pair: Firebird keeps times to 1/10000 s (a finer value is
    refused, docs/dialects.md), and its TIMESTAMP has no time zone (the wall time is written)."""
    if "firebird" not in (src, dst):
        return VALUES
    out = []
    for row in VALUES:
        row = dict(row)
        for column in ("tm", "ts", "tstz"):
            if row[column] is not None:
                row[column] = row[column].replace(microsecond=row[column].microsecond // 100 * 100)
        if src == "firebird" and row["tstz"] is not None:
            row["tstz"] = row["tstz"].replace(tzinfo=None)
        out.append(row)
    return out


class UuidText(sa.TypeDecorator):
    impl = sa.String(36)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else str(value)


def stored(kind, column, value):
    """What the source engine itself keeps of a written value."""
    if value is None:
        return None
    if column == "tstz" and kind != "postgresql":
        # MariaDB and SQLite have no time-zone-aware type: the drivers keep the wall time
        return value.replace(tzinfo=None)
    return value


def expected(src, dst, column, value):
    """The value that must arrive, with the documented conversions (docs/dialects.md)."""
    value = stored(src, column, value)
    if value is None:
        return None
    if column == "tstz" and dst != "postgresql" and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)  # row "timestamptz": UTC, no zone
    if column == "tstz" and value.tzinfo is not None:
        return value.astimezone(UTC)
    if column == "b":
        if src == "mysql" or dst == "mysql":
            return int(value)  # row "bool": TINYINT(1) holds 0/1
    if column == "u" and src == "firebird":
        return str(value)  # CHAR(36) at the source: text everywhere
    if column == "u" and dst != "postgresql" and not (src == "mysql" and dst == "mysql"):
        return str(value)  # row "uuid": CHAR(36), canonical text
    if column == "j":
        return value  # compared parsed (row "JSON")
    return value


def actual(dst, column, value, src=None):
    if column == "j" and isinstance(value, str) and (dst in ("mysql", "sqlite", "firebird") or src == "firebird"):
        return json.loads(value)  # MariaDB JSON is LONGTEXT, a created SQLite column TEXT: the test reads its text
    if column == "b" and isinstance(value, bool) and dst == "mysql":
        return int(value)
    return value


@pytest.mark.parametrize("source_kind,dest_kind", PAIRS)
def test_type_fidelity(make_target, source_kind, dest_kind):
    source = make_target(source_kind)
    dest = make_target(dest_kind)
    values = values_for(source_kind, dest_kind)
    source.execute(DDL[source_kind])
    with source.engine.begin() as conn:
        table = source_table(source_kind)
        conn.execute(table.insert(), [dict(values[0])])

    st = watch(source.model("src"), "types")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="types_copy")
    call_command("pdr-reflect", verbosity=0)  # initial load carries row 1
    with source.engine.begin() as conn:
        conn.execute(table.insert(), [dict(v) for v in values[1:]])  # rows 2 and 3 go through events
    call_command("pdr-reflect", verbosity=0)

    got = rows(dest.engine, "types_copy", ["id"])
    assert [r["id"] for r in got] == [1, 2, 3]
    mismatches = []
    for want_row, got_row in zip(values, got):
        for column, value in want_row.items():
            want = expected(source_kind, dest_kind, column, value)
            have = actual(dest_kind, column, got_row[column], source_kind)
            if want != have or type(want) is not type(have) and want is not None \
                    and not isinstance(have, type(want)):
                mismatches.append((want_row["id"], column, want, have))
    assert mismatches == []
