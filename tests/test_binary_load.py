"""PostgreSQL to PostgreSQL initial loads in the engine's binary COPY form, written by two
destination connections at once.

Binary rows carry no type: a column of another type of the same size (bigint and double
precision, timestamp and timestamptz) would take them silently.  These tests pin down
that the binary form is used only for columns of the same built-in type on both sides,
that a type changed after the reflection was described is caught by the check in the
transaction that writes them (the chunk then takes the Python path), that every value
arrives exactly (compared as PostgreSQL spells each row, not as Python values), and that
a chunk whose second half fails after its first half committed is redone whole."""
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr.dialects import postgresql
from django_pdr.engine import load
from django_pdr.models import Reflection
from tests.targets import watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

# every column once per built-in type family the text path carries (money and xml left
# out: their text depends on the server's locale and on its encoding declaration)
TYPES = ("id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric, n52 numeric(7,2), f4 real, "
         "f8 double precision, t text, vc varchar(12), ch char(4), b bytea, ok boolean, d date, "
         "ts timestamp, tz timestamptz, tm time, iv interval, u uuid, js json, jb jsonb, "
         "ia int[], ta text[], ip inet, net cidr, mac macaddr, bits bit(3), vb varbit")
VALUES = [
    "(1, 1, 9223372036854775807, 'NaN', 12345.67, 'Infinity', '-0', E'tab\\there\\nline \\\\ back', "
    "'été ✓', 'ab', E'\\\\x00ff10', true, 'infinity', '2024-02-29 23:59:59.999999', "
    "'2024-06-01 12:00:00.5+05:30', '24:00:00', '1 year 2 mons -3 days 04:05:06.7', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'null', '{\"k\": [1, 2.50, null]}', '{1,NULL,3}', "
    "'{\"a b\",NULL,\"\"}', '::1', '10.0.0.0/8', '08:00:2b:01:02:03', B'101', B'1')",
    "(2, -32768, -9223372036854775808, '-1e-20', -0.01, '-Infinity', 'NaN', '', '', '', '\\x', false, "
    "'-infinity', '1970-01-01', '1970-01-01 00:00:00+00', '00:00', '0', "
    "'00000000-0000-0000-0000-000000000000', '[]', 'null', '{}', '{}', '0.0.0.0', '::/0', "
    "'ff:ff:ff:ff:ff:ff', B'000', B'')",
    "(3" + ", NULL" * 26 + ")",
] + [f"({i}, {i}, {i * 10 ** 12}, {i}.5, {i}.25, {i}.5, {i}.125, 'row {i}', 'v{i}', 'c{i % 10}', "
     f"'\\x{i:04x}', {str(i % 2 == 0).lower()}, '2024-01-01'::date + {i}, '2024-01-01'::timestamp + interval '{i} s', "
     f"'2024-01-01 00:00:00+00'::timestamptz + interval '{i} min', '10:00', '{i} days', "
     f"md5('{i}')::uuid, '{{\"i\": {i}}}', '{{\"i\": {i}}}', '{{{i}}}', '{{x{i}}}', '10.0.0.{i % 250}', "
     f"'10.{i % 250}.0.0/16', '08:00:2b:01:02:{i % 100:02d}', B'011', B'10')" for i in range(4, 41)]


def _spelled(target, table="t"):
    """Every row as PostgreSQL spells it (the row's text), in key order: a value that differs
    in any way (type, precision, sign of zero, JSON null against SQL NULL) shows."""
    with target.engine.connect() as conn:
        conn.exec_driver_sql("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
                             "SET extra_float_digits = 3")
        return [row[0] for row in conn.exec_driver_sql(f"SELECT {table}::text FROM {table} ORDER BY id")]


@pytest.fixture
def spies(monkeypatch):
    """The forms chunks were read in, and the threads that wrote them (by their names)."""
    seen = {"formats": [], "writers": []}
    real_copy_out, real_copied = postgresql.PostgreSQLDialect.copy_out, postgresql.PostgreSQLDialect.apply_copied

    def copy_out(self, conn, queries, fmt="copy", *args, **kwargs):
        seen["formats"].append(fmt)
        return real_copy_out(self, conn, queries, fmt, *args, **kwargs)

    def apply_copied(self, conn, table, names, keys, values, rows, fresh=False):
        seen["writers"].append((threading.current_thread().name.split("_")[0], rows.fmt, rows.count))
        return real_copied(self, conn, table, names, keys, values, rows, fresh=fresh)

    real_python = load.Loading._load_python

    def load_python(self, src, after):
        seen["python"] = seen.get("python", 0) + 1
        return real_python(self, src, after)

    monkeypatch.setattr(load.Loading, "_load_python", load_python)
    monkeypatch.setattr(postgresql.PostgreSQLDialect, "copy_out", copy_out)
    monkeypatch.setattr(postgresql.PostgreSQLDialect, "apply_copied", apply_copied)
    monkeypatch.setattr(load, "SPLIT_LOAD_ROWS", 4)
    return seen


def _pair(make_target, dest_types=TYPES):
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute(f"CREATE TABLE t ({TYPES})", f"INSERT INTO t VALUES {', '.join(VALUES)}")
    dest.execute(f"CREATE TABLE t ({dest_types})")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "t"), destination=dest.model("dst"),
                                           destination_table="t")
    return source, dest, reflection


def test_a_binary_load_by_two_writers_carries_every_value_exactly(make_target, settings, spies):
    settings.PDR = {"LOAD_CHUNK_SIZE": 9}
    source, dest, reflection = _pair(make_target)
    call_command("pdr-reflect", verbosity=0)
    assert _spelled(dest) == _spelled(source) and len(_spelled(dest)) == 40
    reflection.refresh_from_db()
    assert reflection.status == "running" and reflection.load_progress["loaded"] == 40
    assert set(spies["formats"]) == {"binary"} and "python" not in spies  # (no chunk redone by Python rows)
    writers = [w for w in spies["writers"] if w[2]]
    assert {fmt for _, fmt, _ in writers} == {"binary"}
    # each chunk of 9 rows: its first half written by the helper thread, the rest by the pass
    assert sorted(count for thread, _, count in writers if thread == "pdr-half") == [2, 4, 4, 4, 4]
    assert sum(count for _, _, count in writers) == 40
    # a resync reloads into a shadow table (made from the destination's reflected types):
    # binary too, then swapped in
    source.execute("UPDATE t SET t = 'after' WHERE id = 5", "DELETE FROM t WHERE id = 6")
    dest.execute("UPDATE t SET t = 'drifted' WHERE id = 7")
    Reflection.objects.filter(pk=reflection.pk).update(resync_requested=True)
    spies["formats"].clear()
    call_command("pdr-reflect", verbosity=0)
    assert _spelled(dest) == _spelled(source) and len(_spelled(dest)) == 39
    assert spies["formats"][:4] == ["binary"] * 4 and "python" not in spies  # (then the events, as text)


def test_columns_of_different_types_pass_as_text(make_target, settings, spies):
    """varchar(12) into text: the text path (PostgreSQL reads the text as text), never binary
    rows (a varchar's binary form is a text's, but only types equal to the letter pass so)."""
    settings.PDR = {"LOAD_CHUNK_SIZE": 9}
    types = TYPES.replace("vc varchar(12)", "vc text")
    source, dest, reflection = _pair(make_target, types)
    call_command("pdr-reflect", verbosity=0)
    assert _spelled(dest) == _spelled(source)
    assert "binary" not in spies["formats"] and "copy" in spies["formats"] and "python" not in spies


@pytest.mark.parametrize("side", ["destination", "source"])
def test_a_type_changed_after_the_description_is_caught_before_binary_rows_are_written(
        make_target, settings, spies, monkeypatch, side):
    """bigint → double precision: both 8 bytes, so binary bigints would be read as tiny
    floats without a word.  Changed on either side between the description and a chunk,
    the check in the reading or writing transaction fails, the chunk takes the Python path
    (which converts each value), and the next pass describes the tables again."""
    settings.PDR = {"LOAD_CHUNK_SIZE": 9}
    source, dest, reflection = _pair(make_target)
    target = dest if side == "destination" else source
    real, reads = load.Loading._load_text, []

    def load_text(self, src, after):
        reads.append(after)
        if len(reads) == 2:  # between the first and the second chunk
            if side == "source":  # (values a double keeps exactly, back in a bigint)
                source.execute("UPDATE t SET i8 = id WHERE id < 3")
            target.execute("ALTER TABLE t ALTER COLUMN i8 TYPE double precision")
        return real(self, src, after)

    monkeypatch.setattr(load.Loading, "_load_text", load_text)
    monkeypatch.setattr(load, "SPLIT_LOAD_ROWS", 10 ** 9)  # one writer: the prefetch reads ahead of it
    call_command("pdr-reflect", verbosity=0)
    with source.engine.connect() as s, dest.engine.connect() as d:
        want = s.exec_driver_sql("SELECT id, i8::float8 FROM t ORDER BY id").all()
        got = d.exec_driver_sql("SELECT id, i8::float8 FROM t ORDER BY id").all()
    assert got == want and len(got) == 40
    assert spies["formats"][0] == "binary"
    from django_pdr.engine.describe import _PREPARED

    assert reflection.pk not in _PREPARED or _PREPARED[reflection.pk][2]["binary_types"] is None


def test_a_chunk_whose_second_half_fails_after_the_first_committed_is_redone_whole(
        make_target, settings, spies, monkeypatch):
    """As a crash between the two commits: the first half's rows are in the mirror past
    the checkpoint; the next pass does the chunk again (its COPY meets those keys, the
    chunk is upserted) and the mirror ends equal to the source."""
    from django_pdr.engine.checkpoint import Checkpoint

    settings.PDR = {"LOAD_CHUNK_SIZE": 9}
    source, dest, reflection = _pair(make_target)
    real, calls = Checkpoint.advance, []

    def advance(self, dst, expected, state):
        calls.append(state.get("after"))
        if len(calls) == 2:
            raise RuntimeError("the worker stops here (simulated)")
        return real(self, dst, expected, state)

    monkeypatch.setattr(Checkpoint, "advance", advance)
    with pytest.raises(CommandError, match="simulated"):  # the second chunk's second half fails
        call_command("pdr-reflect", verbosity=0)
    reflection.refresh_from_db()
    assert reflection.status == "error" and "simulated" in reflection.last_error
    with dest.engine.connect() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM t ORDER BY id")]
    assert ids == list(range(1, 10)) + list(range(10, 14))  # chunk 1, and chunk 2's first half
    source.execute("DELETE FROM t WHERE id = 11", "UPDATE t SET t = 'changed' WHERE id = 12")
    from django_pdr.models import Reflection as R

    R.objects.filter(pk=reflection.pk).update(next_attempt_at=None)
    call_command("pdr-reflect", verbosity=0)
    assert _spelled(dest) == _spelled(source)
    reflection.refresh_from_db()
    assert reflection.status == "running"
