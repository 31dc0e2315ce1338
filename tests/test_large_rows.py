"""Rows of any size, memory bounded (``PDR["BATCH_BYTES"]``, engine/budget.py).

Unit tests of the budget's arithmetic, of the counted text reads and of the COPY
source that never copies a batch whole; live tests, per pair of engines, that a
backlog, an initial load and a surprise (small rows made large by one UPDATE) whose
rows pass BATCH_BYTES are replicated exactly, in batches that each hold no more than
the budget allows (the old code applied each of them in one batch)."""
import pytest
from django.core.management import call_command
from django.test import override_settings

from django.core.checks import run_checks

from django_pdr.dialects.base import TextCounter, TextTooLarge
from django_pdr.dialects.postgresql import _CopySource, copy_lines
from django_pdr.engine import budget as budget_module
from django_pdr.engine import runner as reflect
from django_pdr.engine.budget import BatchTooLarge, Budget, row_bytes, value_bytes
from django_pdr.models import Reflection
from tests.targets import watch


# -- unit: the arithmetic ---------------------------------------------------------------
@pytest.fixture
def budget():
    b = Budget(1000, key=("test", id(object())))
    yield b
    b.largest = 0


def test_without_an_estimate_the_count_limit_holds(budget):
    assert budget.rows(20000) == 20000
    assert budget.fits(20000)
    assert budget.cap(20000) == 1000 and budget.cap(1) is None


def test_the_largest_row_seen_sets_the_events_of_a_batch(budget):
    budget.observed(300)
    assert budget.rows(20000) == 3
    assert budget.rows(2) == 2  # the count limit still holds
    assert budget.fits(3) and not budget.fits(4)
    budget.observed(5000)  # a row larger than the budget: one event at a time
    assert budget.rows(20000) == 1 and not budget.fits(1)


def test_the_estimate_rises_at_once_and_decays_by_halves(budget):
    budget.observed(800)
    budget.observed(10)
    assert budget.largest == 400
    budget.observed(10)
    budget.observed(10)
    assert budget.largest == 100
    budget.surprised(50)  # a surprise never lowers it
    assert budget.largest == 100
    budget.surprised(900)
    assert budget.largest == 900


def test_a_refused_batch_is_read_again_strictly_shorter_down_to_one_event(budget):
    budget.surprised(10)  # a read refused after small rows: the estimate alone allows 100
    limit, events, seen = 20000, 20000, []
    while limit > 1:
        limit = budget.smaller(limit, events)
        events = limit
        seen.append(limit)
    assert seen[0] == 100 and seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    assert budget.cap(limit) is None  # one event is never refused
    # one event row carrying many keys (key arrays) read with limit 1: still 1, no loop
    assert budget.smaller(1, 1000) == 1


def test_the_estimate_is_kept_per_reflection_between_passes():
    first = Budget(1000, key=("test-r", 1))
    try:
        first.observed(250)
        assert Budget(1000, key=("test-r", 1)).rows(100) == 4
        assert Budget(1000, key=("test-r", 2)).rows(100) == 100
    finally:
        first.largest = 0
    assert ("test-r", 1) not in budget_module._LARGEST


def test_fetches_are_sized_by_the_largest_row(budget):
    assert budget.fetch_rows() == budget_module.MAX_FETCH_ROWS
    budget.observed(100)
    assert budget.fetch_rows() == 2  # 10 rows fit: a quarter of them per fetch
    budget.observed(5000)
    assert budget.fetch_rows() == 1


def test_row_bytes_counts_text_and_bytes_by_length():
    assert value_bytes("x" * 100) == 100 + budget_module.SMALL_VALUE
    assert value_bytes(memoryview(b"ab")) == 2 + budget_module.SMALL_VALUE
    assert row_bytes([1, None, b"abc"]) == 3 + 3 * budget_module.SMALL_VALUE


def test_text_counter_stops_past_the_limit_but_never_on_the_first_row():
    counter = TextCounter(100)
    counter.add(500)  # one row larger than the limit is read
    with pytest.raises(TextTooLarge) as info:
        counter.add(1)
    assert (info.value.largest, info.value.rows, info.value.size) == (500, 2, 501)
    unlimited = TextCounter(None)
    for _ in range(10):
        unlimited.add(10 ** 9)
    assert unlimited.largest == 10 ** 9


def test_copy_source_hands_out_the_text_in_pieces():
    big = "a\tb\n" * 300_000
    rows = ["1\tx\n", big, "2\ty\n"] * 3
    for data in (big, list(rows), copy_lines([(1, "x"), (2, b"\x00\xff")]), []):
        whole = data if isinstance(data, str) else "".join(data)
        source, pieces = _CopySource(list(data) if isinstance(data, list) else data), []
        while piece := source.read(8192):
            pieces.append(piece)
        assert "".join(pieces) == whole
        assert all(len(p) <= 5 * _CopySource.PIECE for p in pieces)


def test_copy_source_joins_runs_of_small_rows_and_hands_out_bytes_too():
    rows = [f"{i}\tv{i}\n" for i in range(50_000)]
    source, pieces = _CopySource(list(rows)), []
    while piece := source.read(8192):
        pieces.append(piece)
    assert "".join(pieces) == "".join(rows) and len(pieces) < 100
    assert all(len(p) <= _CopySource.PIECE for p in pieces)
    binary = [bytes([i % 256]) * 100 for i in range(2000)] + [b"x" * (5 * _CopySource.PIECE), b"tail"]
    source, pieces = _CopySource(list(binary)), []
    while piece := source.read(8192):
        pieces.append(piece)
    assert b"".join(pieces) == b"".join(binary) and all(isinstance(p, bytes) for p in pieces)


def test_binary_rows_lose_their_header_and_trailer_and_get_them_back():
    from django_pdr.dialects.postgresql import BINARY_HEADER, BINARY_TRAILER, _BinarySink, _BinarySource

    sink = _BinarySink(TextCounter(None))
    for part in (BINARY_HEADER + b"\x00\x01row1", b"\x00\x01row2", BINARY_TRAILER):
        sink.write(part)
    assert sink.rows() == [b"\x00\x01row1", b"\x00\x01row2"]
    source, out = _BinarySource([b"\x00\x01row1", b"\x00\x01row2"]), []
    while piece := source.read(8192):
        out.append(piece)
    assert b"".join(out) == BINARY_HEADER + b"\x00\x01row1\x00\x01row2" + BINARY_TRAILER
    empty = _BinarySink(TextCounter(None))
    empty.write(BINARY_HEADER + BINARY_TRAILER)  # no row: the header and the trailer in one message
    assert empty.rows() == []
    source, out = _BinarySource([]), []
    while piece := source.read(8192):
        out.append(piece)
    assert out == [BINARY_HEADER, BINARY_TRAILER]
    strange = _BinarySink(TextCounter(None))
    strange.write(b"PGCOPY\n\xff\r\n\x00\x00\x01\x00\x00" + bytes(4))  # (flags PostgreSQL does not send)
    with pytest.raises(NotImplementedError):
        strange.rows()


@pytest.mark.parametrize("value", [0, -1, "64MB", 1.5, True])
def test_batch_bytes_must_be_a_positive_integer(value):
    with override_settings(PDR={"BATCH_BYTES": value}):
        messages = [m for m in run_checks() if m.id == "django_pdr.E002"]
    assert len(messages) == 1 and "'BATCH_BYTES'] must be a positive integer" in messages[0].msg


# -- live: batches bounded by bytes -----------------------------------------------------
DDL = {
    "postgresql": "CREATE TABLE big (id int PRIMARY KEY, t text, b bytea, j json)",
    "mysql": "CREATE TABLE big (id int PRIMARY KEY, t longtext, b longblob, j json)",
    "sqlite": "CREATE TABLE big (id INTEGER PRIMARY KEY, t TEXT, b BLOB, j JSON)",
}
PAIRS = [("postgresql", "postgresql"), ("postgresql", "mysql"), ("mysql", "postgresql"),
         ("mysql", "mysql"), ("sqlite", "postgresql"), ("sqlite", "sqlite")]
ROWS = 10
SIZE = 30_000  # characters of each value: a row holds three (about 90 KB)
BUDGET = 300_000  # three rows


def value_row(i, size=SIZE):
    text = ("tab\there \\ newline\n é " * (size // 20 + 1))[:size]
    return {"id": i, "t": text, "b": (bytes(range(256)) * (size // 256 + 1))[:size],
            "j": '{"k": "' + "x\\\\y\\n" * (size // 6) + '"}'}


def insert(target, rows_, update=False):
    import sqlalchemy as sa

    table = sa.table("big", sa.column("id"), sa.column("t"), sa.column("b", sa.LargeBinary), sa.column("j"))
    with target.engine.begin() as conn:
        for row in rows_:
            if update:
                conn.execute(sa.update(table).where(table.c.id == row["id"])
                             .values(t=row["t"], b=row["b"], j=row["j"]))
            else:
                conn.execute(sa.insert(table).values(**row))


def contents(target):
    """(id, t, b, j) of every row; b as bytes (and checked to be bytes), j as its text."""
    j = "j::text" if target.kind == "postgresql" else "j"
    with target.engine.connect() as conn:
        out = []
        for id_, t, b, j_ in conn.exec_driver_sql(f"SELECT id, t, b, {j} FROM big ORDER BY id"):
            assert t is None or isinstance(t, str)
            assert b is None or isinstance(b, (bytes, memoryview))
            out.append((id_, t, None if b is None else bytes(b), j_))
    return out


class Commits:
    """Rows of each destination commit (Python rows or text), in order."""

    def __init__(self, monkeypatch):
        self.rows, self.loads, self.text = [], [], 0
        commit, commit_text = reflect.ReflectionRunner._commit, reflect.ReflectionRunner._commit_text

        def spy_commit(runner, dst, expected, new_state, upserts, deletes, removals=(), **kwargs):
            self.rows.append(len(upserts) + len(deletes) + len(removals))
            self.loads.append(kwargs.get("loading", False))
            return commit(runner, dst, expected, new_state, upserts, deletes, removals, **kwargs)

        def spy_commit_text(runner, dst, expected, new_state, text, **kwargs):
            self.rows.append(text.count)
            self.loads.append(not kwargs["marked"])
            self.text += 1
            return commit_text(runner, dst, expected, new_state, text, **kwargs)

        monkeypatch.setattr(reflect.ReflectionRunner, "_commit", spy_commit)
        monkeypatch.setattr(reflect.ReflectionRunner, "_commit_text", spy_commit_text)

    def data(self, load=False):
        """Rows of the commits that wrote any (of the initial load's chunks, given ``load``)."""
        return [n for n, loading in zip(self.rows, self.loads) if n and loading == load]


def make_pair(make_target, src_kind, dst_kind):
    source, dest = make_target(src_kind), make_target(dst_kind)
    source.execute(DDL[src_kind])
    if dst_kind != "sqlite" or src_kind == "sqlite":
        dest.execute(DDL[dst_kind])
    st = watch(source.model("src"), "big")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="big")
    return source, dest, reflection


@pytest.fixture(autouse=True)
def _forget_estimates():
    yield
    budget_module._LARGEST.clear()


@pytest.mark.django_db
@pytest.mark.live
@pytest.mark.parametrize("src_kind,dst_kind", PAIRS, ids=[f"{s}-{d}" for s, d in PAIRS])
def test_a_backlog_of_large_rows_goes_in_batches_within_the_budget(make_target, monkeypatch, src_kind,
                                                                   dst_kind):
    source, dest, reflection = make_pair(make_target, src_kind, dst_kind)
    with override_settings(PDR={"BATCH_BYTES": BUDGET}):
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)  # the empty load
        insert(source, [value_row(i) for i in range(1, ROWS + 1)])
        commits = Commits(monkeypatch)
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    assert contents(dest) == contents(source)
    reflection.refresh_from_db()
    assert reflection.status == "running" and reflection.events_applied == ROWS
    assert sum(commits.data()) == ROWS
    # three rows fit; a refused read is redone before anything commits, so no commit
    # holds more (the old code: one commit of ten rows)
    assert max(commits.data()) <= 3 and len(commits.data()) >= 4, commits.rows


@pytest.mark.django_db
@pytest.mark.live
@pytest.mark.parametrize("src_kind,dst_kind", PAIRS, ids=[f"{s}-{d}" for s, d in PAIRS])
def test_an_initial_load_of_large_rows_goes_in_chunks_within_the_budget(make_target, monkeypatch,
                                                                        src_kind, dst_kind):
    source, dest, reflection = make_pair(make_target, src_kind, dst_kind)
    insert(source, [value_row(i) for i in range(1, ROWS + 1)])
    commits = Commits(monkeypatch)
    with override_settings(PDR={"BATCH_BYTES": BUDGET}):
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    assert contents(dest) == contents(source)
    chunks = commits.data(load=True)
    # a chunk ends after the row that passes the budget: at most one row over it (the
    # events of the rows inserted before the load follow, in batches of three at most)
    assert sum(chunks) == ROWS and max(chunks) <= 4 and len(chunks) >= 3, commits.rows
    assert max(commits.data(), default=0) <= 3


@pytest.mark.django_db
@pytest.mark.live
@pytest.mark.parametrize("src_kind,dst_kind", PAIRS, ids=[f"{s}-{d}" for s, d in PAIRS])
def test_small_rows_made_large_by_one_update_are_a_surprise_the_batch_survives(make_target, monkeypatch,
                                                                               src_kind, dst_kind):
    source, dest, reflection = make_pair(make_target, src_kind, dst_kind)
    with override_settings(PDR={"BATCH_BYTES": BUDGET}):
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
        insert(source, [value_row(i, size=20) for i in range(1, ROWS + 1)])
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)  # small rows: one batch
        assert contents(dest) == contents(source)
        insert(source, [value_row(i) for i in range(1, ROWS + 1)], update=True)  # one transaction
        commits = Commits(monkeypatch)
        refused = []
        read = reflect.ReflectionRunner._read_batch

        def spy_read(runner, src, state, limit):
            try:
                return read(runner, src, state, limit)
            except BatchTooLarge as exc:
                refused.append((limit, exc.rows))
                raise

        monkeypatch.setattr(reflect.ReflectionRunner, "_read_batch", spy_read)
        call_command("pdr-reflect", reflections=[reflection.pk], verbosity=0)
    assert contents(dest) == contents(source)
    reflection.refresh_from_db()
    assert reflection.status == "running" and reflection.events_applied == 2 * ROWS
    assert refused and refused[0][0] > ROWS  # the first read expected small rows ...
    assert all(rows <= 4 for _, rows in refused)  # ... and stopped once past the budget
    assert max(commits.data()) <= 3 and sum(commits.data()) == ROWS, commits.rows
