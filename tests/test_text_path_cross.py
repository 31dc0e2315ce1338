"""Rows passed as text between engines: MariaDB rows spelled as PostgreSQL COPY text,
PostgreSQL rows spelled as MySQL row literals.

Each test replicates one source table to two destinations of the same engine: one by the
text path, one with the text path switched off (the Python path, the reference).  Both
must hold exactly the same rows after a load in chunks and after changes, with values
chosen to break a careless spelling: tabs, newlines, backslashes, quotes, the text
"\\N" and "NULL", emoji, extreme numbers and timestamps, NULL in every column."""
import pytest
from django.core.management import call_command

from django_pdr.engine import runner as reflect
from django_pdr.engine.textpath import TextPathFailed
from django_pdr.connections import connect
from django_pdr.models import Reflection
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

TRICKY = ["a\tb\nc\rd\\e'f\"g", "", " trailing  ", "\U0001F600 é", "\\N", "NULL", "\\", "'", "\\'", "x\\ty",
          "%s %(x)s", "\x0b\x0c\x08"]


def runner_for(reflection):
    runner = reflect.ReflectionRunner(reflection)
    with connect(reflection.source.database) as src, connect(reflection.destination) as dst:
        runner.prepare(src, dst)
    return runner


class Spy:
    """Counts text commits, their refusals, and batches redone as Python rows."""

    def __init__(self, monkeypatch):
        self.text_commits, self.refusals, self.python_batches = 0, [], 0
        commit_text, python_batch = reflect.ReflectionRunner._commit_text, reflect.ReflectionRunner.python_batch

        def spy_commit_text(runner, *args, **kwargs):
            self.text_commits += 1
            try:
                return commit_text(runner, *args, **kwargs)
            except TextPathFailed as exc:
                self.refusals.append(exc.__cause__)
                raise

        def spy_python_batch(runner, *args, **kwargs):
            self.python_batches += 1
            return python_batch(runner, *args, **kwargs)

        monkeypatch.setattr(reflect.ReflectionRunner, "_commit_text", spy_commit_text)
        monkeypatch.setattr(reflect.ReflectionRunner, "python_batch", spy_python_batch)


def replicate_both_ways(monkeypatch, text, python, *, all_text=True):
    """One pass of the text reflection (``all_text``: which must take the text path for
    every load chunk and batch), then one of the reference with the text path off."""
    with monkeypatch.context() as patch:
        spy = Spy(patch)
        call_command("pdr-reflect", reflections=[text.pk], verbosity=0)
    if all_text:
        assert spy.text_commits > 1 and spy.refusals == [] and spy.python_batches == 0
    with monkeypatch.context() as patch:
        patch.setattr(reflect.ReflectionRunner, "_text_path_possible", lambda self: False)
        call_command("pdr-reflect", reflections=[python.pk], verbosity=0)


def differences(text_rows, python_rows):
    """(key, column, text path's value, Python path's value) for every value that differs."""
    assert len(text_rows) == len(python_rows)
    return [(a.get("k"), a["id"], c, a[c], b[c]) for a, b in zip(text_rows, python_rows) for c in a if a[c] != b[c]]


def two_destinations(make_target, source_model, table, kind, **options):
    st = watch(source_model, table)
    made = []
    for name in ("text", "python"):
        dest = make_target(kind)
        model = dest.model(f"dst-{name}")
        if options:
            model.options = options
            model.save()
        made.append((dest, Reflection.objects.create(source=st, destination=model, destination_table=table)))
    return made


MARIADB_TABLE = (
    "CREATE TABLE items (k varchar(30), id int, ti tinyint, big bigint, b boolean, d double, f float, "
    "n decimal(24,6), dt datetime(6), dt0 datetime, da date, s varchar(100), t text, e enum('a','b'), "
    "l varchar(20) CHARACTER SET latin1, PRIMARY KEY (id, ti)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


def mariadb_rows():
    out = []
    for i, s in enumerate(TRICKY):
        out.append((f"k{i % 3}{s[:8]}", i, -128 + i, 9223372036854775807 - i, i % 2, [0.1, 1e300, -1.5e-300,
                    1 / 3, 2.0 ** 53 + 1, 123456.789][i % 6], [0.1, 3.4e38, -1.17e-38, 1 / 3][i % 4],
                    ["-123456789012345678.123456", "0.000001", "0", "1.5"][i % 4],
                    ["9999-12-31 23:59:59.999999", "1000-01-01 00:00:00", "2024-02-29 12:00:00.5"][i % 3],
                    "2024-01-02 03:04:05", "2024-02-29", s, s * 3, "ab"[i % 2], "é\tà"))
    out.append(("nulls", 0, 0) + (None,) * 12)
    return out


def check_both_paths(make_target, monkeypatch, source_kind, table, source_rows, dest_kind, key, changes):
    """Load ``source_rows`` into ``table`` (on ``source_kind``), replicate it to two
    ``dest_kind`` destinations (text path, Python path) in chunks and batches of a few
    rows, apply ``changes`` (2 rows deleted, 1 inserted with s = 'x\\Ny' under k = 'new'),
    replicate again: both destinations must hold exactly the same rows each time."""
    source = make_target(source_kind)
    source.execute(table)
    marks = ", ".join(["%s"] * len(source_rows[0]))
    with source.engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO items VALUES ({marks})", source_rows)
    (dest_text, text), (dest_py, python) = two_destinations(make_target, source.model("src"), "items", dest_kind)
    replicate_both_ways(monkeypatch, text, python)
    assert runner_for(text).text_path
    loaded = rows(dest_text.engine, "items", key)
    assert len(loaded) == len(TRICKY) + 1
    assert differences(loaded, rows(dest_py.engine, "items", key)) == []
    assert {r["s"] for r in loaded} == set(TRICKY) | {None}

    with source.engine.begin() as conn:
        for statement in changes:
            conn.exec_driver_sql(statement)
    replicate_both_ways(monkeypatch, text, python)
    changed = rows(dest_text.engine, "items", key)
    assert differences(changed, rows(dest_py.engine, "items", key)) == []
    assert len(changed) == len(TRICKY) + 1 - 2 + 1  # 2 deleted, 1 inserted
    assert [r["s"] for r in changed if r["k"] == "new"] == ["x\\Ny"]


def test_mariadb_rows_as_copy_text_equal_the_python_path(make_target, settings, monkeypatch):
    settings.PDR = {"LOAD_CHUNK_SIZE": 4, "BATCH_SIZE": 5}
    check_both_paths(make_target, monkeypatch, "mysql", MARIADB_TABLE, mariadb_rows(), "postgresql", ["id", "ti"], [
        "UPDATE items SET s = CONCAT(s, '\\\\\\t'), d = d * 3, dt = NULL WHERE MOD(id, 2) = 0",
        "DELETE FROM items WHERE id IN (3, 5)",
        "UPDATE items SET id = 70 WHERE id = 7",  # key change
        "INSERT INTO items (k, id, ti, s) VALUES ('new', 100, 1, 'x\\\\Ny')",
    ])


POSTGRES_TABLE = (
    "CREATE TABLE items (k text, id int, sm smallint, big bigint, b boolean, d double precision, r real, "
    "n numeric(24,6), ts timestamp, ts0 timestamp(0), da date, s varchar(100), t text, PRIMARY KEY (k, id))")


def postgres_rows():
    out = []
    for i, s in enumerate(TRICKY):
        out.append((f"k{i % 3}{s[:8]}", i, -32768 + i, -9223372036854775808 + i, bool(i % 2),
                    [0.1, 1e300, -1.5e-300, 1 / 3, 2.0 ** 53 + 1, 5e-324][i % 6], [0.1, 3.4e38, 1 / 3][i % 3],
                    ["-123456789012345678.123456", "0.000001", "0", "1.5"][i % 4],
                    ["9999-12-31 23:59:59.999999", "1000-01-01 00:00:00", "2024-02-29 12:00:00.5"][i % 3],
                    "2024-01-02 03:04:05", "0999-02-28", s, s * 3))
    out.append(("nulls", 0) + (None,) * 11)
    return out


def test_postgresql_rows_as_mysql_literals_equal_the_python_path(make_target, settings, monkeypatch):
    settings.PDR = {"LOAD_CHUNK_SIZE": 4, "BATCH_SIZE": 5}
    check_both_paths(make_target, monkeypatch, "postgresql", POSTGRES_TABLE, postgres_rows(), "mysql", ["k", "id"], [
        "UPDATE items SET s = s || E'\\\\\\t', d = d * 3, ts = NULL WHERE MOD(id, 2) = 0",
        "DELETE FROM items WHERE id IN (3, 5)",
        "UPDATE items SET k = 'moved' WHERE id = 7",  # key change
        "INSERT INTO items (k, id, s) VALUES ('new', 100, E'x\\\\Ny')",
    ])


def test_mysql_literals_are_refused_by_a_session_without_backslash_escapes(make_target, monkeypatch):
    # the literals are spelled with backslash escapes: a destination session with
    # NO_BACKSLASH_ESCAPES would read "\\" as two characters; such a batch takes the Python path
    source = make_target("postgresql")
    source.execute("CREATE TABLE items (id int PRIMARY KEY, s text)",
                   "INSERT INTO items VALUES (1, E'back\\\\slash \\'quote')")
    (dest, reflection), _ = two_destinations(make_target, source.model("src"), "items", "mysql",
                                             init_command="SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
    call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    source.execute("INSERT INTO items VALUES (2, E'two\\\\ \\'')")
    spy = Spy(monkeypatch)
    call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    assert [str(e) for e in spy.refusals] == ["the session has sql_mode NO_BACKSLASH_ESCAPES"]
    assert spy.python_batches == 1
    assert rows(dest.engine, "items", ["id"]) == [{"id": 1, "s": "back\\slash 'quote"}, {"id": 2, "s": "two\\ '"}]


def test_mariadb_string_keys_take_the_python_path(make_target, monkeypatch):
    # the default collation compares 'bob' = 'Bob': a batch holding events of both keys
    # would fold them in the text query's DISTINCT and join, and leave 'bob' behind
    source = make_target("mysql")
    source.execute("CREATE TABLE items (k varchar(20) PRIMARY KEY, v int) DEFAULT CHARSET=utf8mb4",
                   "INSERT INTO items VALUES ('bob', 1), ('ann ', 2)")
    (dest_text, text), (dest_py, python) = two_destinations(make_target, source.model("src"), "items", "postgresql")
    assert not runner_for(text).text_path
    replicate_both_ways(monkeypatch, text, python, all_text=False)
    source.execute("UPDATE items SET k = 'Bob' WHERE k = 'bob'", "UPDATE items SET k = 'ann' WHERE k = 'ann '")
    replicate_both_ways(monkeypatch, text, python, all_text=False)
    assert rows(dest_text.engine, "items", ["v"]) == [{"k": "Bob", "v": 1}, {"k": "ann", "v": 2}]
    assert rows(dest_py.engine, "items", ["v"]) == rows(dest_text.engine, "items", ["v"])


def test_mariadb_line_longer_than_a_packet_takes_the_python_path(make_target, monkeypatch):
    # REPLACE doubles 9 MB of backslashes past max_allowed_packet (16 MB here): MariaDB then
    # returns NULL with a warning only; the batch must not write NULL, nor stall
    source = make_target("mysql")
    source.execute("CREATE TABLE items (id int PRIMARY KEY, s longtext)", "INSERT INTO items VALUES (1, 'a')")
    with source.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar() < 18_000_000
    (dest, reflection), _ = two_destinations(make_target, source.model("src"), "items", "postgresql")
    call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    big = chr(92) * 9_000_000
    source.execute("INSERT INTO items VALUES (2, REPEAT(CHAR(92), 9000000)), (3, 'b')")
    spy = Spy(monkeypatch)
    call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    assert spy.python_batches == 1 and spy.text_commits == 0
    got = rows(dest.engine, "items", ["id"])
    assert [r["id"] for r in got] == [1, 2, 3] and got[1]["s"] == big


def test_postgresql_values_without_a_mysql_literal_take_the_python_path(make_target, monkeypatch):
    # psycopg2 reads infinity as datetime.max / date.min: the text path has no literal
    # that agrees, so such a batch is read as Python rows; NaN likewise
    source = make_target("postgresql")
    source.execute("CREATE TABLE items (id int PRIMARY KEY, ts timestamp, da date, d double precision)",
                   "INSERT INTO items VALUES (1, '2024-01-01 10:00', '2024-01-01', 0.5)")
    (dest_text, text), (dest_py, python) = two_destinations(make_target, source.model("src"), "items", "mysql")
    replicate_both_ways(monkeypatch, text, python, all_text=False)
    source.execute("INSERT INTO items VALUES (2, 'infinity', '-infinity', 1.5)")
    spy = Spy(monkeypatch)
    call_command("pdr-reflect", reflections=[text.pk], verbosity=0)
    assert spy.python_batches == 1 and spy.text_commits == 0
    monkeypatch.undo()
    with monkeypatch.context() as patch:
        patch.setattr(reflect.ReflectionRunner, "_text_path_possible", lambda self: False)
        call_command("pdr-reflect", reflections=[python.pk], verbosity=0)
    got = rows(dest_text.engine, "items", ["id"])
    assert got == rows(dest_py.engine, "items", ["id"])
    assert str(got[1]["ts"]) == "9999-12-31 23:59:59.999999" and str(got[1]["da"]) == "0001-01-01"
