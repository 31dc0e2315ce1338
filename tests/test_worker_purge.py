"""A running worker purges applied events at most every PURGE_INTERVAL; a one-shot pass at once."""
import pytest

from django_pdr import worker
from django_pdr.models import Reflection
from tests.targets import watch

pytestmark = [pytest.mark.django_db(transaction=True)]


def _events(source, st):
    with source.engine.connect() as conn:
        return conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}"').scalar()


def test_purges_are_spaced_by_the_interval(make_target, monkeypatch):
    monkeypatch.setattr(worker, "_last_purge", {})
    monkeypatch.setattr(worker, "_purge_due", set())
    source, dest = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    clock = [1000.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    worker.run_round(purge_interval=60)  # initial load
    source.execute("INSERT INTO t VALUES (0, 'x')")
    worker.run_round(purge_interval=60)
    assert _events(source, st) == 0  # the first purge: the clock starts
    source.execute("INSERT INTO t VALUES (1, 'x')")
    worker.run_round(purge_interval=60)
    assert _events(source, st) == 1  # applied, but the last purge was under a minute ago
    clock[0] += 30
    worker.run_round(purge_interval=60)  # an idle pass: still not due
    assert _events(source, st) == 1
    clock[0] += 31
    worker.run_round(purge_interval=60)  # an idle pass, now due: the pending purge happens
    assert _events(source, st) == 0
    source.execute("INSERT INTO t VALUES (2, 'x')")
    worker.run_round()  # a one-shot pass purges at once
    assert _events(source, st) == 0
