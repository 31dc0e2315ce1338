"""Real processes: kill -9 during catch-up, and two workers sharing reflections."""
import os
import random
import signal
import time

import pytest
from django.db import connection

from tests.targets import watch
from django_pdr.models import Reflection, SourceTable
from tests.processes import Writer, django_env, kill_cycle, run_worker_once, start_worker, table_rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]

TABLE = "CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)"


def configure(source, dest, name="src", batch_size=None, dest_table="t"):
    st = SourceTable.objects.filter(database__name=name).first()
    if st is None:
        st = watch(source.model(name), "t")
    return Reflection.objects.create(source=st, destination=dest.model(f"dst-{dest.name}"),
                                     destination_table=dest_table, batch_size=batch_size)


@pytest.mark.parametrize("source_kind,dest_kind", [("postgresql", "postgresql"), ("postgresql", "mysql"),
                                                   ("mysql", "postgresql"),
                                                   ("sqlite", "postgresql")])
def test_kill_9_during_catch_up_loses_and_doubles_nothing(make_target, source_kind, dest_kind, tmp_path):
    source, dest = make_target(source_kind), make_target(dest_kind)
    source.execute(TABLE)
    configure(source, dest, batch_size=200)
    env = django_env(connection.settings_dict["NAME"])
    rng = random.Random(7)
    # a tenth of the transactions also change over 1,000 rows in one statement (key arrays
    # on PostgreSQL, read in batches of 200 events)
    writer = Writer(source.engine, seed=3, batch=25, pause=0.01, bulk=0.1)
    writer.start()
    with open(tmp_path / "workers.log", "w") as log:
        kills = kill_cycle(env, 10, rng, min_run=0.8, max_run=2.2, log=log)
    writer.stop()
    assert writer.error is None and writer.ops > 500 and writer.bulk_statements > 3
    result = run_worker_once(env)
    assert result.returncode == 0, result.stderr
    assert kills == 10
    assert table_rows(dest.engine) == table_rows(source.engine), (tmp_path / "workers.log").read_text()[-3000:]


def test_two_workers_share_reflections_and_never_apply_a_batch_twice(make_target, tmp_path):
    sources = [make_target("postgresql") for _ in range(3)]
    dest = make_target("postgresql")
    for i, source in enumerate(sources):
        source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
        dest.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY, v varchar(40), n int)")
    # every key is inserted once and never changed, so a second apply of any batch
    # would turn an insert into an update: the destination counts updates
    dest.execute("CREATE TABLE doubled (tbl text, id int)",
                 "CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN INSERT INTO doubled VALUES (TG_TABLE_NAME, NEW.id); RETURN NULL; END $$",
                 *[f"CREATE TRIGGER counted AFTER UPDATE ON t{i} FOR EACH ROW EXECUTE FUNCTION count_update()"
                   for i in range(3)])
    dest_db = dest.model("dst")
    for i, source in enumerate(sources):
        st = watch(source.model(f"src{i}"), "t")
        Reflection.objects.create(source=st, destination=dest_db, destination_table=f"t{i}", batch_size=37)
    env = django_env(connection.settings_dict["NAME"], PDR_TEST_LEASE_SECONDS=2)
    first = run_worker_once(env)  # initial loads (of empty tables) before any write
    assert first.returncode == 0, first.stderr
    logs = [open(tmp_path / f"worker{n}.log", "w+") for n in range(2)]
    workers = [start_worker(env, "-i", "0.05", "-v", "2", log=logs[n]) for n in range(2)]
    writers = []
    try:
        for i, source in enumerate(sources):
            writer = Writer(source.engine, seed=i, batch=20, pause=0.03)
            writer.random.random = lambda: 0.0  # inserts only
            writers.append(writer)
            writer.start()
        # the writers go on until both workers have applied batches, however fast or slow
        # the machine (a fixed number of writes could end before the second worker got any)
        deadline = time.time() + 60
        while not all("events, " in open(log.name).read() for log in logs):
            assert time.time() < deadline, "both workers must have applied batches"
            time.sleep(0.2)
        os.killpg(workers[0].pid, signal.SIGKILL)  # a worker dies mid-run: its leases expire
        workers[0].wait()
        time.sleep(1.0)  # writes go on while its leases expire
        for writer in writers:
            writer.stop()
            assert writer.error is None and writer.ops > 0
        deadline = time.time() + 90
        while time.time() < deadline:
            if all(table_rows(dest.engine, f"t{i}") == table_rows(source.engine) for i, source in enumerate(sources)):
                break
            time.sleep(0.5)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
    for i, source in enumerate(sources):
        assert table_rows(dest.engine, f"t{i}") == table_rows(source.engine)
    with dest.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM doubled").scalar() == 0
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
    assert all("events, " in text for text in texts), "both workers must have applied batches"
    assert workers[1].returncode == 0
