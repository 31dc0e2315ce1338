"""Out-of-order commits on the live engines: nothing skipped, nothing stalls."""
import time

import pytest
import sqlalchemy as sa

from django_pdr import worker
from django_pdr.models import Reflection
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db, pytest.mark.live]


def setup_reflection(make_target, kind):
    source, dest = make_target(kind), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))")
    st = watch(source.model("src"), "t")
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()
    return source, dest, reflection


def ids(target):
    return [r["id"] for r in rows(target.engine, "t", ["id"])]


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "sqlite", "firebird"])
def test_late_commit_of_a_lower_event_id_is_replicated(make_target, kind):
    source, dest, reflection = setup_reflection(make_target, kind)
    if kind == "sqlite":
        # one writer at a time: a late commit cannot have a lower id; check the plain path
        source.execute("INSERT INTO t VALUES (1, 'a')")
        worker.run_round()
        assert ids(dest) == [1]
        return
    slow = source.engine.connect()
    slow_tx = slow.begin()
    slow.exec_driver_sql("INSERT INTO t VALUES (1, 'A: long transaction')")  # takes the lower event id
    source.execute("INSERT INTO t VALUES (2, 'B')")
    for round_ in range(3):  # at least three poll cycles while A stays open
        source.execute(f"INSERT INTO t VALUES ({10 + round_}, 'C')")
        worker.run_round()
        assert ids(dest) == [2] + list(range(10, 11 + round_))
    reflection.refresh_from_db()
    assert reflection.position["g"], "the open transaction's id must be held as a gap"
    slow_tx.commit()
    slow.close()
    worker.run_round()
    assert ids(dest) == [1, 2, 10, 11, 12]
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
    time.sleep(0.3)
    worker.run_round()  # the gap closes once A has ended
    reflection.refresh_from_db()
    assert reflection.position["g"] == []


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "firebird"])
def test_rolled_back_ids_do_not_stall_progress(make_target, kind):
    source, dest, reflection = setup_reflection(make_target, kind)
    doomed = source.engine.connect()
    doomed_tx = doomed.begin()
    doomed.exec_driver_sql("INSERT INTO t VALUES (1, 'never')")
    source.execute("INSERT INTO t VALUES (2, 'kept')")
    worker.run_round()
    doomed_tx.rollback()
    doomed.close()
    source.execute("INSERT INTO t VALUES (3, 'after')")
    worker.run_round()
    time.sleep(0.3)  # MariaDB's INNODB_TRX view is a cache refreshed every 0.1 s
    worker.run_round()
    assert ids(dest) == [2, 3]
    reflection.refresh_from_db()
    assert reflection.position["g"] == []
    # every event was applied, so every event was purged, up to the cursor (MariaDB: but
    # the last, kept so that a purge never reaches the row after it, see
    # Dialect.range_delete_locks_next_row)
    kept = 1 if kind == "mysql" else 0
    with source.engine.connect() as conn:
        left = conn.execute(sa.text(f"SELECT count(*) FROM {reflection.source.event_table}")).scalar()
    reflection.source.refresh_from_db()
    assert left == kept and reflection.source.purged_through == reflection.position["c"] - kept >= 2
