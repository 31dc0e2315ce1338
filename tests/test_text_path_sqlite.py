"""SQLite rows spelled as PostgreSQL COPY text (``crosstext.sqlite_copy_query``).

SQLite keeps each value in the storage class it was written with, whatever the column
says: the spellings cover only what the Python path reads as the same value.  The source
rows are written through SQLite's own SQL (a REAL in an INTEGER column, text in a
NUMERIC one, timestamps in every form, 24:00), replicated to two PostgreSQL destinations
(text path, Python path) and compared by each value's own spelling in PostgreSQL
(``t::text``), which tells 5 from 5.0 and 1.00 from 1.01."""
import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command

from django_pdr.dialects import crosstext
from django_pdr.engine import runner as reflect
from tests.targets import rows
from tests.test_text_path_cross import Spy, replicate_both_ways, runner_for, two_destinations

pytestmark = [pytest.mark.django_db, pytest.mark.live]

SQLITE_TABLE = ("CREATE TABLE items (id INTEGER PRIMARY KEY, n INT, big BIGINT, b BOOLEAN, r REAL, d DOUBLE, "
                "num NUMERIC(12,2), dec NUMERIC, ts DATETIME, da DATE, s VARCHAR(100), t TEXT)")
POSTGRES_TABLE = ("CREATE TABLE items (id integer PRIMARY KEY, n int, big bigint, b boolean, r real, "
                  "d double precision, num numeric(12,2), dec numeric, ts timestamp, da date, "
                  "s varchar(100), t text)")

# every value below is one the text path spells (stored as SQLite stores it)
GOOD = [
    "(1, 1, 9223372036854775807, 1, 0.1, 1e300, 1.005, 5, '2024-02-29 23:59:59.999999', '2024-02-29', "
    "'a' || char(9) || 'b' || char(10) || 'c' || char(13) || 'd\\e', '\\N')",
    "(2, -2, -9223372036854775808, 0, 3.4e38, 0.1 + 0.2, 20.2, 1.005, '1000-01-01 00:00:00', '9999-12-31', "
    "'NULL', '')",
    "(3, 0, 0, NULL, -0.0, 2.0e-308, 123.456, 1e16, '2024-01-01 10:00:00.000020', NULL, '😀 é', NULL)",
    "(4, NULL, NULL, 1, 1.0/3, 9e999, -1.5, 1.0/3, NULL, '2000-01-01', 'x\\ty', 'back\\\\slash')",
    "(5, 7, 7, 0, 5, -9e999, 0.125, 12345678901234567890, '2024-01-02 03:04:05', '2024-01-02', '%s', '''')",
    "(6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    # each character COPY escapes, alone
    "(7, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, char(10), 'x' || char(13))",
    "(8, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, char(9), '\\')",
]
# each of these has one value the text path does not spell: the batch takes the Python path
ODD = [
    "(10, 1.5, 1, 1, 1, 1, 1, 1, NULL, NULL, NULL, NULL)",  # a REAL in an INTEGER column
    "(11, 1, 1, 2, 1, 1, 1, 1, NULL, NULL, NULL, NULL)",  # a boolean stored as 2
    "(12, 1, 1, 1, 1, 1, 'abc', 1, NULL, NULL, NULL, NULL)",  # text in a NUMERIC column
    "(13, 1, 1, 1, 1, 1, 1, 1, '2024-01-01T10:00:00', NULL, NULL, NULL)",  # "T"
    # a zone: converted to UTC on the Python path
    "(14, 1, 1, 1, 1, 1, 1, 1, '2024-01-01 10:00:00+02:00', NULL, NULL, NULL)",
    "(15, 1, 1, 1, 1, 1, 1, 1, '2024-01-01 10:00:00.5', NULL, NULL, NULL)",  # fewer digits
    "(16, 1, 1, 1, 1, 1, 1, 1, NULL, NULL, x'00ff', NULL)",  # a BLOB in a text column
    "(17, 1, 1, 1, 1, 1, 1, 1, '2024-01-01 24:00:00', NULL, NULL, NULL)",  # PostgreSQL reads it, Python not
    "(18, 1, 1, 1, 1, 1, 1, 1, NULL, '0000-01-01', NULL, NULL)",  # year 0
]


def spelled(engine):
    """Every row of the PostgreSQL destination as PostgreSQL spells it (type-aware)."""
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT id, items::text FROM items ORDER BY id").all()


def source_and_two_destinations(make_target):
    """The SQLite source holding GOOD, and two PostgreSQL destinations (table made) with a
    reflection each: (source, (destination, reflection) for text, the same for Python)."""
    source = make_target("sqlite")
    source.execute(SQLITE_TABLE, "INSERT INTO items VALUES " + ", ".join(GOOD))
    made = two_destinations(make_target, source.model("src"), "items", "postgresql")
    for dest, _ in made:
        dest.execute(POSTGRES_TABLE)
    return source, *made


def test_sqlite_rows_as_copy_text_equal_the_python_path(make_target, settings, monkeypatch):
    settings.PDR = {"LOAD_CHUNK_SIZE": 4, "BATCH_SIZE": 5}
    source, (dest_text, text), (dest_py, python) = source_and_two_destinations(make_target)
    assert runner_for(text).text_path
    replicate_both_ways(monkeypatch, text, python)
    loaded = spelled(dest_text.engine)
    assert len(loaded) == len(GOOD) and loaded == spelled(dest_py.engine)
    values = {r["id"]: r for r in rows(dest_text.engine, "items", ["id"])}
    assert values[1]["s"] == "a\tb\nc\rd\\e" and values[3]["s"] == "😀 é" and values[6]["s"] is None
    # the shortest spelling, then rounded by the column
    assert str(values[1]["num"]) == "1.01" and str(values[2]["dec"]) == "1.005"

    # changes in batches of a few events: updates, deletes, a key change, new rows
    source.execute("UPDATE items SET r = r / 3, s = s || char(9) || '\\', ts = NULL WHERE id % 2 = 0",
                   "DELETE FROM items WHERE id IN (3, 5)", "UPDATE items SET id = 70 WHERE id = 4",
                   "INSERT INTO items (id, s, num) VALUES (100, 'x\\Ny', 0.1 + 0.2)")
    replicate_both_ways(monkeypatch, text, python)
    changed = spelled(dest_text.engine)
    assert [r[0] for r in changed] == [1, 2, 6, 7, 8, 70, 100] and changed == spelled(dest_py.engine)

    # one row alone: the Python path binds its values as parameters, where psycopg2 spells
    # an infinite Decimal as 'NaN'::numeric (the dialect spells it itself)
    source.execute("INSERT INTO items (id, dec, d) VALUES (101, -9e999, 9e999)")
    replicate_both_ways(monkeypatch, text, python, all_text=False)
    alone = dict(spelled(dest_py.engine))[101]
    assert alone == "(101,,,,,Infinity,,-Infinity,,,,)"
    assert spelled(dest_text.engine) == spelled(dest_py.engine)


@pytest.mark.parametrize("odd", ODD)
def test_values_without_a_spelling_take_the_python_path(make_target, settings, monkeypatch, odd):
    settings.PDR = {"LOAD_CHUNK_SIZE": 4}
    source, (dest_text, text), (dest_py, python) = source_and_two_destinations(make_target)
    replicate_both_ways(monkeypatch, text, python)
    source.execute("INSERT INTO items VALUES " + odd)
    with monkeypatch.context() as patch:
        spy = Spy(patch)
        failed = passes(text)
        assert spy.python_batches == 1 and spy.text_commits == 0
    with monkeypatch.context() as patch:
        patch.setattr(reflect.ReflectionRunner, "_text_path_possible", lambda self: False)
        assert passes(python) == failed  # a row the destination refuses (text in a numeric column, NUL)
    text.refresh_from_db()
    python.refresh_from_db()
    assert (text.status, text.events_applied) == (python.status, python.events_applied)
    assert spelled(dest_text.engine) == spelled(dest_py.engine)
    assert len(spelled(dest_text.engine)) == len(GOOD) + (not failed)


def passes(reflection) -> str:
    """One pass of ``reflection``: its error ("" when it succeeded)."""
    try:
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    except CommandError as exc:
        return str(exc).replace(f"reflection {reflection.pk}", "")
    return ""


def test_text_keys_and_other_types_take_the_python_path(make_target):
    source = make_target("sqlite")
    source.execute("CREATE TABLE items (k TEXT PRIMARY KEY, v INT)")
    (dest, reflection), _ = two_destinations(make_target, source.model("src"), "items", "postgresql")
    assert not runner_for(reflection).text_path  # a collation (NOCASE, RTRIM) may fold text keys


def test_sqlite_spellings_by_type():
    from sqlalchemy.dialects import postgresql, sqlite

    spell = crosstext.sqlite_copy_spelling
    assert spell(sqlite.INTEGER(), postgresql.BIGINT()) is not None
    assert spell(sqlite.INTEGER(), postgresql.BOOLEAN()) is None
    assert spell(sqlite.REAL(), postgresql.DOUBLE_PRECISION()) is crosstext.SQLITE_NUMBER
    assert spell(sqlite.REAL(), postgresql.INTEGER()) is None
    assert spell(sqlite.DATETIME(), postgresql.TIMESTAMP(timezone=True)) is None
    assert spell(sqlite.DATETIME(), postgresql.DATE()) is None
    assert spell(sqlite.DATE(), postgresql.TIMESTAMP()) is None
    assert spell(sqlite.VARCHAR(), postgresql.ENUM("a", name="e")) is None
    assert spell(sa.LargeBinary(), postgresql.BYTEA()) is None
    assert spell(sa.JSON(), postgresql.JSONB()) is None
    assert [crosstext.sqlite_number_text(v) for v in (0.1, 1e16, 5, None, float("inf"), -0.0)] == \
        ["0.1", "1e+16", "5", "\\N", "Infinity", "-0.0"]
    with pytest.raises(NotImplementedError):
        crosstext.sqlite_number_text("12.5")


def test_connections_keep_a_small_page_cache(make_target):
    # a worker keeps several SQLite connections open: each holds at most CACHE_KIB of pages
    from django_pdr.connections import connect
    from django_pdr.dialects.sqlite import SQLiteDialect

    source = make_target("sqlite")
    with connect(source.model("src")) as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLiteDialect.CACHE_KIB
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
