"""An idle worker wakes on a PostgreSQL source's notification, not at the end of its interval."""
import threading
import time

import pytest
from django.db import connection

from django_pdr import worker
from django_pdr.models import Reflection
from tests.targets import rows, watch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


def test_notification_wakes_an_idle_worker(make_target):
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()
    stop = threading.Event()

    def target():
        try:
            worker.run(interval=60, stop_event=stop)  # a poll would come only after a minute
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # the worker is now asleep
        latencies = []
        for i in range(5):
            started = time.time()
            source.execute(f"INSERT INTO t VALUES ({i}, 'x')")
            while len(rows(dest.engine, "t", ["id"])) <= i and time.time() - started < 10:
                time.sleep(0.01)
            latencies.append(time.time() - started)
            time.sleep(0.3)
    finally:
        stop.set()
        source.execute("INSERT INTO t VALUES (100, 'wake up to see the stop')")
        thread.join(timeout=90)
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])][:5] == [0, 1, 2, 3, 4]
    assert max(latencies) < 5, latencies


def test_without_notify_capture_sends_nothing_and_the_worker_polls(make_target, settings):
    from django_pdr import wakeup
    from django_pdr.models import Database

    settings.PDR = {"NOTIFY": False}
    source, dest = make_target("postgresql"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source.model("src"), "t")
    with source.engine.connect() as conn:
        body = conn.exec_driver_sql(
            "SELECT prosrc FROM pg_proc WHERE proname = %s", (f"{st.event_table[:-3]}_fn",)).scalar()
    assert body is not None and "pg_notify" not in body
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    waker = wakeup.Waker()
    try:
        assert waker.wait([Database.objects.get(name="src")], timeout=0.05) is False
        assert waker._listeners == {}  # nothing to listen to: the worker polls every interval
    finally:
        waker.close()
    source.execute("INSERT INTO t VALUES (1, 'x')")
    worker.run_round()
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1]
