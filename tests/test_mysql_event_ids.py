"""MariaDB event reads without keys (the text path's): the server joins the ids and the
operations into one row (``MySQLDialect.event_ids``).  Every read must give exactly the
rows the plain read gives, including when GROUP_CONCAT cuts its result short."""
import pytest
import sqlalchemy as sa

from django_pdr.dialects.base import Dialect
from django_pdr.dialects.mysql import MySQLDialect
from django_pdr.engine.visibility import EventReader, Gap, Position

pytestmark = [pytest.mark.live]


@pytest.fixture
def events(make_target):
    """A MariaDB event table made by the dialect: ids 1..3,000 without the multiples of 7
    (holes a read turns into gaps), operations I/U/D/T in turn; a plain reader beside it."""
    target = make_target("mysql")
    dialect = MySQLDialect(target.engine.dialect)
    source = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    table = dialect.event_table(sa.MetaData(), None, dialect.capture_names(None, "t"), [source.c.id])
    with target.engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"pdr_id": i, "pdr_op": "IUDT"[i % 4], "pdr_k0": i * 10}
                                      for i in range(1, 3001) if i % 7])

    class Plain(MySQLDialect):
        event_ids = Dialect.event_ids  # one row per event, as PyMySQL parses them

    statements = []
    conn = target.engine.connect()
    sa.event.listen(conn, "before_cursor_execute", lambda c, cur, sql, *a: statements.append(sql))
    plain = EventReader(Plain(target.engine.dialect), table, key_count=1)
    yield conn, EventReader(dialect, table, key_count=1), plain, statements
    conn.close()


POSITIONS = [Position(), Position(100), Position(2990), Position(3000),
             Position(400, [Gap(7, 7), Gap(14, 20), Gap(350, 399)])]


@pytest.mark.parametrize("limit", [1, 500, 5000])
@pytest.mark.parametrize("position", POSITIONS, ids=["start", "after-100", "near-end", "at-end", "gaps"])
def test_joined_event_ids_equal_the_plain_read(events, position, limit):
    conn, joined, plain, statements = events
    got, got_position = joined.read(conn, position, limit, keys=False)
    want, want_position = plain.read(conn, position, limit, keys=False)
    assert [tuple(e) for e in got] == [tuple(e) for e in want]
    # (a gap's proof is the transaction counter when read: it moves between the two reads)
    assert got_position.cursor == want_position.cursor
    assert [(g.lo, g.hi) for g in got_position.gaps] == [(g.lo, g.hi) for g in want_position.gaps]
    assert all(type(e[0]) is int and type(e[2]) is str for e in got)
    if want:
        assert any("GROUP_CONCAT" in s for s in statements), "the joined read did not run"


def test_a_result_cut_short_is_read_again_then_row_by_row(events, monkeypatch):
    conn, joined, plain, statements = events
    want, _ = plain.read(conn, Position(), 5000, keys=False)
    assert len(want) > 2000
    # the session's limit cuts the ids short (inside an id): read again after raising it
    conn.exec_driver_sql("SET SESSION group_concat_max_len = 1000")
    statements.clear()
    got, _ = joined.read(conn, Position(), 5000, keys=False)
    assert [tuple(e) for e in got] == [tuple(e) for e in want]
    assert sum("GROUP_CONCAT" in s for s in statements) == 2
    assert any(s == MySQLDialect.GROUP_LENGTH for s in statements)
    # cut inside the last id only: as many ids, the last one wrong (its length tells)
    full = len(",".join(str(e[0]) for e in want))
    conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {full - 2}")
    statements.clear()
    got, _ = joined.read(conn, Position(), 5000, keys=False)
    assert [tuple(e) for e in got] == [tuple(e) for e in want]
    assert sum("GROUP_CONCAT" in s for s in statements) == 2
    # still cut short after raising it: the plain read
    monkeypatch.setattr(MySQLDialect, "GROUP_LENGTH", "SET SESSION group_concat_max_len = 1000")
    conn.exec_driver_sql("SET SESSION group_concat_max_len = 1000")
    statements.clear()
    got, _ = joined.read(conn, Position(), 5000, keys=False)
    assert [tuple(e) for e in got] == [tuple(e) for e in want]
    assert sum("GROUP_CONCAT" in s for s in statements) == 2
    assert "GROUP_CONCAT" not in statements[-1] and "pdr_id" in statements[-1]  # one row per event
