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


@pytest.mark.django_db
def test_mysql_to_postgresql_text_path_with_a_late_commit_and_a_reinstall(make_target, caplog, settings):
    """End to end on the path that reads events joined: a transaction holding a lower
    event id commits after higher ones were applied (a gap, filled later), and the purge
    meanwhile does not wait for its lock (InnoDB locks the row after a deleted range:
    the purge keeps the last applied event); then the capture is reinstalled under the
    reflection while changes wait (a resync)."""
    from django_pdr import worker
    from django_pdr.models import Reflection
    from tests.targets import rows, watch

    # a pass reads a batch after one of over CONFIRM_WITH_EVENTS_BELOW events: joined
    settings.PDR = {"BATCH_SIZE": 1200}
    source, dest = make_target("mysql"), make_target("postgresql")
    with source.engine.connect() as conn:  # a purge that waits fails in 2 s, not 50
        timeout = conn.exec_driver_sql("SELECT @@GLOBAL.innodb_lock_wait_timeout").scalar()
        conn.exec_driver_sql("SET GLOBAL innodb_lock_wait_timeout = 2")
    joined = []

    def spy(conn, cursor, statement, *args):
        if "GROUP_CONCAT" in statement:
            joined.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", spy)
    slow = None
    try:
        source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20), n bigint)")
        st = watch(source.model("src"), "t")
        reflection = Reflection.objects.create(source=st, destination=dest.model("dst"),
                                               destination_table="t")
        worker.run_round()
        source.execute("INSERT INTO t VALUES " + ", ".join(f"({i}, 'v{i}', {i * 3})" for i in range(1, 1501)))
        assert worker.run_round().failed == []
        # applied in the next pass and purged: the events right below the open transaction's
        source.execute("INSERT INTO t VALUES " + ", ".join(f"({i}, 'w{i}', {i})" for i in range(3001, 3101)))
        slow = source.engine.connect()
        slow_tx = slow.begin()
        slow.exec_driver_sql("INSERT INTO t VALUES (5000, 'late', 1)")  # takes the next event id
        source.execute("UPDATE t SET v = 'u' WHERE id <= 100", "DELETE FROM t WHERE id BETWEEN 201 AND 250")
        caplog.clear()
        assert worker.run_round().failed == []
        assert "purging events" not in caplog.text  # (it failed on a lock wait before)
        reflection.refresh_from_db()
        st.refresh_from_db()
        gap = reflection.position["g"][0][0]
        assert gap == 1601, "the open transaction's id must be held as a gap"
        assert st.purged_through == gap - 2  # the last event below the gap is kept
        assert 5000 not in [r["id"] for r in rows(dest.engine, "t", ["id"])]
        assert joined, "no event read was joined by the server"
        slow_tx.commit()
        worker.run_round()
        assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
        # reinstalled under the reflection while changes wait: resynced, equal
        source.execute("UPDATE t SET n = n + 1 WHERE MOD(id, 2) = 0")
        st.uninstall()
        source.execute("DELETE FROM t WHERE id = 3")  # uncaptured: the capture is off
        st.install()  # a new event table: its ids start at 1 again
        source.execute("INSERT INTO t VALUES (2000, 'after', 2)")
        assert worker.run_round().failed == []
        worker.run_round()
        assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
        reflection.refresh_from_db()
        assert reflection.status == "running"
    finally:
        if slow is not None:
            slow.close()
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", spy)
        with source.engine.connect() as conn:
            conn.exec_driver_sql(f"SET GLOBAL innodb_lock_wait_timeout = {int(timeout)}")
