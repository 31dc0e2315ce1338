"""A running worker purges a source's applied events once 1,000 wait (at most every
PURGE_INTERVAL) or after a minute; a one-shot pass at once."""
import pytest

from django_pdr import worker
from django_pdr.models import Reflection
from tests.targets import watch

pytestmark = [pytest.mark.django_db(transaction=True)]


def _events(source, st):
    with source.engine.connect() as conn:
        return conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}"').scalar()


def test_purges_wait_for_enough_events_or_time_and_the_interval(make_target, monkeypatch):
    monkeypatch.setattr(worker, "_last_purge", {})
    monkeypatch.setattr(worker, "_purge_due", {})
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    clock = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    worker.run_round(purge_interval=1)  # initial load
    source.execute("INSERT INTO t VALUES (0, 'x')")
    worker.run_round(purge_interval=1)
    assert _events(source, st) == 1  # one change of a quiet table: no purge of its own at once
    clock[0] += 30
    worker.run_round(purge_interval=1)  # an idle pass: still not due
    assert _events(source, st) == 1
    clock[0] += 31
    worker.run_round(purge_interval=1)  # an idle pass, 61 s after: the waiting purge happens
    assert _events(source, st) == 0

    source.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) "
                   "INSERT INTO t SELECT 100 + i, 'bulk' FROM n")
    worker.run_round(purge_interval=1)
    assert _events(source, st) == 1500  # enough events, but the last purge was under a second ago
    clock[0] += 1
    worker.run_round(purge_interval=1)  # the interval has passed: 1,500 events purged
    assert _events(source, st) == 0

    source.execute("INSERT INTO t VALUES (2, 'x')")
    worker.run_round()  # a one-shot pass purges at once
    assert _events(source, st) == 0
