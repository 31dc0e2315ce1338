"""PostgreSQL to PostgreSQL: rows pass in the engine's own text form (COPY out, COPY in).

The text path is an optimisation; these tests pin down that it is chosen only when
every column keeps its type, and that it gives exactly what the Python path gives:
filters, renamed columns (a key column too), composite text keys, key changes, deletes, loads in
several chunks, and a refused batch redone row by row into dead letters."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr.engine import runner as reflect
from django_pdr.connections import connect
from django_pdr.models import DeadLetter, Reflection
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]

TABLE = ("CREATE TABLE items (region text, id int, name varchar(40), qty numeric(10,2), "
         "seen timestamptz, tags jsonb, PRIMARY KEY (region, id))")
MAPPING = ('{"columns": {"area": {"source": "region"}, "id": "id", "label": {"source": "name"}, "qty": "qty", '
           '"seen": "seen", "tags": "tags"}, "filter": "qty > 0"}')


def runner_for(reflection):
    runner = reflect.ReflectionRunner(reflection)
    with connect(reflection.source.database) as src, connect(reflection.destination) as dst:
        runner.prepare(src, dst)
    return runner


def expected(source):
    """The source rows the mapping keeps, in the destination's column names."""
    out = []
    for r in rows(source.engine, "items", ["region", "id"]):
        if r["qty"] is not None and r["qty"] > 0:
            out.append({"area": r["region"], "id": r["id"], "label": r["name"], "qty": r["qty"],
                        "seen": r["seen"], "tags": r["tags"]})
    return out


def test_text_path_matches_the_mapping_through_load_and_changes(make_target, settings):
    settings.PDR = {"LOAD_CHUNK_SIZE": 3, "BATCH_SIZE": 7}
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute(TABLE)
    source.execute(*[f"INSERT INTO items VALUES ('{r}', {i}, 'n\\t{i} ''q''', {i % 3}, "
                     f"'2024-01-0{1 + i % 9} 10:00:00+02', '{{\"i\": {i}}}')"
                     for r in ("eu", "us", "É ü") for i in range(1, 6)])
    st = watch(source.model("src"), "items")
    dest.execute("CREATE TABLE items (area text, id int, label varchar(40), qty numeric(10,2), "
                 "seen timestamptz, tags jsonb, PRIMARY KEY (area, id))")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="items",
                                           mapping=MAPPING)
    assert runner_for(reflection).text_path

    call_command("pdr-reflect", verbosity=0)  # load in chunks of 3 rows, by a composite text key
    assert rows(dest.engine, "items", ["area", "id"]) == expected(source)

    source.execute(
        "UPDATE items SET qty = 0 WHERE id = 1",                       # leaves the filter
        "UPDATE items SET qty = 9, name = NULL WHERE id = 3",           # enters it
        "DELETE FROM items WHERE region = 'us' AND id IN (2, 4)",
        "UPDATE items SET region = 'asia' WHERE region = 'eu' AND id = 5",  # key change
        "INSERT INTO items VALUES ('new', 1, E'line\\nbreak \\\\ backslash', 4.5, NULL, NULL)",
        "INSERT INTO items VALUES ('gone', 1, 'x', 1, NULL, NULL)",
        "DELETE FROM items WHERE region = 'gone'",
    )
    call_command("pdr-reflect", verbosity=0)
    got = rows(dest.engine, "items", ["area", "id"])
    assert got == expected(source)
    assert [r["label"] for r in got if r["area"] == "new"] == ["line\nbreak \\ backslash"]


def test_a_refused_text_batch_is_redone_row_by_row(make_target):
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, amount int)")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, amount int CHECK (amount >= 0))")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    assert runner_for(reflection).text_path
    source.execute("INSERT INTO t VALUES (1, 10), (2, -5), (3, 30)")
    with pytest.raises(CommandError, match="dead letters"):  # a row set aside: not up to date
        call_command("pdr-reflect", verbosity=0)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 3]
    assert DeadLetter.objects.get(reflection=reflection).key == [2]
    source.execute("INSERT INTO t VALUES (4, 40)", "UPDATE t SET amount = 5 WHERE id = 2")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)  # key 2 stays held: this batch takes the Python path
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 3, 4]


@pytest.mark.parametrize("dest_ddl,mapping", [
    ("CREATE TABLE t (id int PRIMARY KEY, amount bigint)", ""),                      # another type
    ("CREATE TABLE t (id int PRIMARY KEY, amount int)", '{"columns": {"id": "id", '  # a computed column
                                                         '"amount": {"expr": "amount * 2"}}}'),
])
def test_python_path_when_a_column_changes_type_or_is_computed(make_target, dest_ddl, mapping):
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, amount int)", "INSERT INTO t VALUES (1, 7)")
    dest.execute(dest_ddl)
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t",
                                           mapping=mapping)
    assert not runner_for(reflection).text_path
    call_command("pdr-reflect", verbosity=0)
    source.execute("INSERT INTO t VALUES (2, 8)")
    call_command("pdr-reflect", verbosity=0)
    factor = 2 if mapping else 1
    assert rows(dest.engine, "t", ["id"]) == [{"id": 1, "amount": 7 * factor}, {"id": 2, "amount": 8 * factor}]


def test_a_staging_table_takes_the_destination_types_of_each_transaction(make_target):
    # one connection, two bulk upserts around an ALTER of the target: a staging table kept
    # for the connection's life would still be numeric(10,2) and round 1.2345 to 1.23
    import decimal

    import sqlalchemy as sa

    from django_pdr.dialects import get_dialect

    dest = make_target("postgresql")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2))")
    with dest.engine.connect() as conn:
        dialect = get_dialect(conn)
        table = sa.Table("t", sa.MetaData(), autoload_with=conn)
        rows_in = [{"id": 1, "amount": 1.5}, {"id": 2, "amount": 2.5}]
        conn.rollback()
        with conn.begin():
            assert dialect.bulk_upsert(conn, table, ["id"], ["amount"], rows_in)
        dest.execute("ALTER TABLE t ALTER COLUMN amount TYPE numeric(12,4)")
        table = sa.Table("t", sa.MetaData(), autoload_with=conn)
        conn.rollback()
        with conn.begin():
            assert dialect.bulk_upsert(conn, table, ["id"], ["amount"],
                                       [{"id": 3, "amount": decimal.Decimal("1.2345")},
                                        {"id": 4, "amount": decimal.Decimal("5.4321")}])
    assert [str(r["amount"]) for r in rows(dest.engine, "t", ["id"])] == ["1.5000", "2.5000", "1.2345", "5.4321"]


def test_text_load_pages_through_binary_keys_with_percent_and_backslash(make_target, settings):
    settings.PDR = {"LOAD_CHUNK_SIZE": 2}
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE b (k bytea PRIMARY KEY, v int)")
    keys = [b"%", b"%%", b"\\", b"a\\b", b"\x00\xff", b"'q'", b"zz"]
    with source.engine.begin() as conn:
        for i, key in enumerate(keys):
            conn.exec_driver_sql("INSERT INTO b VALUES (%s, %s)", (key, i))
    st = watch(source.model("src"), "b")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="b")
    call_command("pdr-reflect", verbosity=0)
    assert runner_for(reflection).text_path
    assert rows(dest.engine, "b", ["k"]) == rows(source.engine, "b", ["k"])
    assert len(rows(dest.engine, "b", ["k"])) == len(keys)


@pytest.mark.parametrize("path", ["json", "copy"])
def test_small_text_batches_written_from_json_equal_the_copy_path(make_target, monkeypatch, path):
    """A small text batch is written by json_populate_recordset (no temporary table), a large
    one through COPY: both give the source's values, compared as PostgreSQL spells them."""
    from django_pdr.dialects import postgresql

    used = []
    real = postgresql._small_text_batch

    def spy(table, names, rows_):
        found = real(table, names, rows_) if path == "json" else None
        used.append(found is not None)
        return found

    monkeypatch.setattr(postgresql, "_small_text_batch", spy)
    source, dest = make_target("postgresql"), make_target("postgresql")
    columns = ('"k%ey" text, n int, big bigint, amount numeric(12,4), f double precision, r real, ok boolean, '
               '"la bel" varchar(20), c char(4), b bytea, d date, t time, ts timestamp, tz timestamptz, '
               'i interval, u uuid')
    def execute(target, *statements):  # exec_driver_sql passes parameters: "%" doubled
        target.execute(*[statement.replace("%", "%%") for statement in statements])

    execute(source, f'CREATE TABLE "t%x" ({columns}, PRIMARY KEY ("k%ey"))')
    execute(dest, f'CREATE TABLE "t%x" ({columns}, PRIMARY KEY ("k%ey"))')
    st = watch(source.model("src"), "t%x")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t%x")
    assert runner_for(reflection).text_path
    call_command("pdr-reflect", verbosity=0)
    execute(
        source,
        "INSERT INTO \"t%x\" VALUES (E'tab\\there\\\\', -2147483648, 9223372036854775807, -12345678.1234, "
        "'-0', 'NaN', true, E'new\\nline \\r cr', 'ab', E'\\\\x005c0a09ff', '0001-01-01', '23:59:59.999999', "
        "'9999-12-31 23:59:59.999999', '2024-03-31 01:59:59.999999+02', '1 year -2 days 03:00:00.5', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
        "INSERT INTO \"t%x\" (\"k%ey\") VALUES ('all null')",
        "INSERT INTO \"t%x\" VALUES ('inf', 1, 1, 0, 'Infinity', '-Infinity', false, '', '', '', "
        "'2024-02-29', '00:00', '2024-01-01', '2024-01-01 00:00+00', '0', '00000000-0000-0000-0000-000000000000')",
        "INSERT INTO \"t%x\" (\"k%ey\", n) VALUES ('gone', 1)",
    )
    call_command("pdr-reflect", verbosity=0)
    execute(source, "DELETE FROM \"t%x\" WHERE \"k%ey\" = 'gone'", "UPDATE \"t%x\" SET n = 2 WHERE n = 1")
    call_command("pdr-reflect", verbosity=0)
    assert used and all(used) if path == "json" else not any(used)

    def spelled(target):  # each value as PostgreSQL spells it (-0 and NaN included); no parameters
        raw = target.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = '\"t%x\"'::regclass AND attnum > 0 "
                           "ORDER BY attnum")
            exprs = ", ".join(f'"{n}"::text' for (n,) in cursor.fetchall())
            cursor.execute(f'SELECT {exprs} FROM "t%x" ORDER BY 1')
            return cursor.fetchall()
        finally:
            raw.close()

    want = spelled(source)
    assert len(want) == 3 and spelled(dest) == want


def test_a_load_chunk_copies_straight_into_its_emptied_target_and_upserts_when_a_key_is_there(
        make_target, settings, monkeypatch):
    """Chunks of an initial load are COPYed into the target without a staging table (the
    load emptied it and reads ascending key ranges); a key found there after all (written
    into the mirror meanwhile) fails that COPY, and the chunk is redone by upserts."""
    from django_pdr.engine import load

    settings.PDR = {"LOAD_CHUNK_SIZE": 2}
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)",
                   "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 7) g")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "t"), destination=dest.model("dst"),
                                           destination_table="t")
    assert runner_for(reflection).text_path
    real, chunks = load.Loading._load_text, []

    def load_text(self, src, after):
        chunks.append(after)
        if len(chunks) == 2:  # someone writes key 3 into the mirror before the second chunk
            dest.execute("INSERT INTO t VALUES (3, 'written by hand')")
        return real(self, src, after)

    monkeypatch.setattr(load.Loading, "_load_text", load_text)
    from django_pdr.dialects.postgresql import PostgreSQLDialect

    copied, real_copied = [], PostgreSQLDialect.apply_copied

    def apply_copied(self, *args, fresh=False):
        copied.append(fresh)
        return real_copied(self, *args, fresh=fresh)

    monkeypatch.setattr(PostgreSQLDialect, "apply_copied", apply_copied)
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == [{"id": i, "v": f"v{i}"} for i in range(1, 8)]
    assert len(chunks) >= 4 and copied and all(copied)


def direct_insert_pair(make_target, monkeypatch, source_kind):
    """(source, PostgreSQL destination, calls): table ``t`` (id, v) on both, replicated
    once on the text path; ``calls``: what each direct insert of new rows returned."""
    from django_pdr.dialects import postgresql

    postgresql._DIRECT_BACKOFF.clear()
    calls, real = [], postgresql.PostgreSQLDialect._insert_new

    def spy(conn, cursor, target, columns, lines):
        calls.append(real(conn, cursor, target, columns, lines))
        return calls[-1]

    monkeypatch.setattr(postgresql.PostgreSQLDialect, "_insert_new", staticmethod(spy))
    source, dest = make_target(source_kind), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(60))")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(60))")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "t"), destination=dest.model("dst"),
                                           destination_table="t")
    assert runner_for(reflection).text_path
    call_command("pdr-reflect", verbosity=0)
    return source, dest, calls


@pytest.mark.parametrize("source_kind", ["postgresql", "mysql"])
def test_new_keys_go_straight_into_the_target_and_a_key_found_there_is_upserted(make_target, monkeypatch,
                                                                                 source_kind):
    """Rows whose key was inserted since the last batch are COPYed into the target without a
    staging table (batches above the small-batch size); a key that is there after all (written
    into the mirror by someone else) undoes that COPY, the batch is upserted whole, and the
    next batch skips the direct insert.  Values with tabs, newlines and backslashes."""
    source, dest, calls = direct_insert_pair(make_target, monkeypatch, source_kind)
    text = "concat('t\\tab n\\nl b\\\\s ', {})" if source_kind == "mysql" else "E't\\tab n\\nl b\\\\s ' || {}"

    def insert(lo, hi):
        return f"INSERT INTO t (id, v) VALUES " + ", ".join(f"({i}, {text.format(i)})" for i in range(lo, hi))

    def check():
        assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])

    source.execute(insert(1, 301))
    call_command("pdr-reflect", verbosity=0)
    assert calls == [300]
    check()

    dest.execute("INSERT INTO t VALUES (1000, 'written into the mirror')")
    source.execute(insert(301, 601), insert(1000, 1001), "UPDATE t SET v = 'changed' WHERE id <= 5",
                   "DELETE FROM t WHERE id BETWEEN 6 AND 10")
    call_command("pdr-reflect", verbosity=0)
    assert calls == [300, None]  # key 1000 was there: upserted with the rest
    check()
    assert [r["v"] for r in rows(dest.engine, "t", ["id"]) if r["id"] == 1000] == ["t\tab n\nl b\\s 1000"]

    source.execute(insert(601, 901))
    call_command("pdr-reflect", verbosity=0)
    assert calls == [300, None]  # skipped once after a failure
    source.execute(insert(901, 1000), insert(1001, 1202), "UPDATE t SET v = NULL WHERE id = 700")
    call_command("pdr-reflect", verbosity=0)
    assert calls == [300, None, 300]  # back: 300 new rows straight in, the update upserted
    check()


@pytest.mark.parametrize("source_kind", ["postgresql", "mysql"])
def test_a_batch_of_new_rows_only_with_a_key_already_there_is_upserted_whole(make_target, monkeypatch,
                                                                             source_kind):
    """Every row of the batch is new (nothing left to stage but them) and one key is in the
    mirror already: the direct COPY is undone and all of them are upserted, none lost
    (over 64 KiB of them: more than one piece of COPY's input)."""
    source, dest, calls = direct_insert_pair(make_target, monkeypatch, source_kind)
    dest.execute("INSERT INTO t VALUES (150, 'written into the mirror')")
    source.execute("INSERT INTO t (id, v) VALUES " + ", ".join(f"({i}, '{i:050d}')" for i in range(1, 1501)))
    call_command("pdr-reflect", verbosity=0)
    assert calls == [None]
    got = rows(dest.engine, "t", ["id"])
    assert got == rows(source.engine, "t", ["id"]) and len(got) == 1500 and got[149]["v"] == f"{150:050d}"


@pytest.mark.parametrize("source_kind", ["postgresql", "sqlite"])
def test_events_of_the_next_batch_are_read_ahead_on_a_second_connection(make_target, settings, monkeypatch,
                                                                       source_kind):
    """While a batch's rows are read, the events of the batch after it are read by another
    thread on its own connection; every batch uses them (none is read twice) and the
    mirror ends equal to the source (the text path and the Python path)."""
    import threading

    from django_pdr.engine import stream

    settings.PDR = {"BATCH_SIZE": 100}
    reads, real = [], stream.Streaming._read_events

    def spy(runner, src, pos, limit, text):
        reads.append((threading.current_thread().name.split("_")[0], pos["c"]))
        return real(runner, src, pos, limit, text)

    monkeypatch.setattr(stream.Streaming, "_read_events", spy)
    if source_kind == "sqlite":  # (SQLite rows pass as text too: here the Python path's read-ahead)
        monkeypatch.setattr(reflect.ReflectionRunner, "_text_path_possible", lambda self: False)
    source, dest = make_target(source_kind), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))")
    reflection = Reflection.objects.create(source=watch(source.model("src"), "t"), destination=dest.model("dst"),
                                           destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    source.execute(*[f"INSERT INTO t VALUES ({i}, 'v{i}')" for i in range(1, 1001)],
                   "UPDATE t SET v = 'changed' WHERE id > 900", "DELETE FROM t WHERE id <= 50")
    reads.clear()
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
    ahead = [pos for thread, pos in reads if thread == "pdr-events"]
    assert len(ahead) >= 10, reads  # 1,150 events in batches of 100
    assert len({pos for _, pos in reads}) == len(reads), "a batch's events were read twice"
    assert runner_for(reflection).text_path == (source_kind == "postgresql")


def test_each_load_chunk_is_read_while_the_one_before_commits(make_target, settings, monkeypatch):
    """The initial load reads chunk N+1 in a helper thread while chunk N commits; each
    chunk is read once and the load ends equal to the source."""
    import threading

    from django_pdr.engine import load

    settings.PDR = {"LOAD_CHUNK_SIZE": 3}
    reads, real = [], load.Loading._load_text

    def spy(runner, src, after):
        reads.append((threading.current_thread().name.split("_")[0], after))
        return real(runner, src, after)

    monkeypatch.setattr(load.Loading, "_load_text", spy)
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)",
                   "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    Reflection.objects.create(source=watch(source.model("src"), "t"), destination=dest.model("dst"),
                              destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
    assert [after for _, after in reads] == [None, (3,), (6,), (9,)]
    assert [thread for thread, _ in reads][1:] == ["pdr-load"] * 3


def test_events_found_in_gaps_take_the_text_path_too(make_target, monkeypatch):
    """An event committed late under a lower id (a gap) is read with the batch's other
    events: the batch query then lists the gap's ids (an IN list, spelled into the COPY's
    SQL) and still takes the text path."""
    from django_pdr.engine.stream import Streaming
    from django_pdr.engine.textpath import TextPath

    source, dest = make_target("postgresql"), make_target("postgresql")
    for target in (source, dest):
        target.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40))")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    call_command("pdr-reflect", verbosity=0)
    slow = source.engine.connect()
    slow_tx = slow.begin()
    slow.exec_driver_sql("INSERT INTO t VALUES (1, 'late, lower id')")
    source.execute("INSERT INTO t VALUES (2, 'b')")
    call_command("pdr-reflect", verbosity=0)
    slow_tx.commit()
    slow.close()
    source.execute("INSERT INTO t VALUES (3, 'c')", "UPDATE t SET v = 'b2' WHERE id = 2")
    windows, python = [], []
    real_batch, real_python = TextPath._text_batch, Streaming.python_batch

    def text_batch(self, cursor, last_id, gap_ids, **kwargs):
        windows.append(sorted(gap_ids))
        return real_batch(self, cursor, last_id, gap_ids, **kwargs)

    def python_batch(self, *args, **kwargs):
        python.append(args)
        return real_python(self, *args, **kwargs)

    monkeypatch.setattr(TextPath, "_text_batch", text_batch)
    monkeypatch.setattr(Streaming, "python_batch", python_batch)
    call_command("pdr-reflect", verbosity=0)
    assert len(windows) == 1 and len(windows[0]) == 1 and not python, (windows, python)
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
    assert [r["v"] for r in rows(dest.engine, "t", ["id"])] == ["late, lower id", "b2", "c"]
