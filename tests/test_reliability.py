"""Reliability on live engines: bad rows, purging, workers, signals, loads under writes."""
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from django.core.management import call_command
from django.core.management.base import CommandError

from django_pdr import worker
from django_pdr.models import DeadLetter, Reflection
from tests.targets import watch as shared_watch
from tests.processes import wait_started
from tests.targets import rows

pytestmark = [pytest.mark.django_db, pytest.mark.live]


def watch(source, table="t"):
    st = shared_watch(source.model(f"src-{source.name}"), table)
    return st


@pytest.mark.parametrize("dest_kind", ["postgresql", "mysql", "sqlite"])
def test_bad_row_is_dead_lettered_and_the_rest_flows(make_target, dest_kind):
    source, dest = make_target("postgresql"), make_target(dest_kind)
    source.execute("CREATE TABLE t (id int PRIMARY KEY, amount int)")
    dest.execute("CREATE TABLE t (id int PRIMARY KEY, amount int CHECK (amount >= 0))")
    st = watch(source)
    reflection = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()
    source.execute("INSERT INTO t VALUES (1, 10), (2, -5), (3, 30)")
    result = worker.run_round()
    assert not result.failed
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 3]
    letter = DeadLetter.objects.get(reflection=reflection)
    assert letter.key == [2] and "CHECK" in letter.error.upper() or "constraint" in letter.error.lower()

    # later events for key 2 wait behind the dead letter; other keys go on
    source.execute("UPDATE t SET amount = -6 WHERE id = 2", "INSERT INTO t VALUES (4, 40)")
    worker.run_round()
    assert [r["id"] for r in rows(dest.engine, "t", ["id"])] == [1, 3, 4]
    assert DeadLetter.objects.get(reflection=reflection).attempts == 1

    # a retry that still fails counts an attempt; a run that leaves a row aside exits non-zero
    with pytest.raises(CommandError, match=r"1 row\(s\) refused by the destination are set aside"):
        call_command("pdr-reflect", retry_dead_letters=True, verbosity=0)
    letter = DeadLetter.objects.get(reflection=reflection)
    assert letter.attempts == 2 and not letter.retry_requested

    # the user fixes the cause; the retry applies the current row
    source.execute("UPDATE t SET amount = 20 WHERE id = 2")
    with pytest.raises(CommandError, match="dead letters"):
        call_command("pdr-reflect", verbosity=0)
    assert DeadLetter.objects.filter(reflection=reflection).count() == 1  # still held until retried
    call_command("pdr-reflect", retry_dead_letters=True, verbosity=0)
    assert not DeadLetter.objects.filter(reflection=reflection).exists()
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])


def test_failure_of_one_reflection_does_not_stop_others(make_target):
    source, good, bad = make_target("sqlite"), make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    st = watch(source)
    bad_db = bad.model("bad")
    Reflection.objects.create(source=st, destination=bad_db, destination_table="t")
    Reflection.objects.create(source=st, destination=good.model("good"), destination_table="t")
    bad_db.database = "/nonexistent/dir/x.sqlite3"
    bad_db.save()
    source.execute("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(CommandError) as info:
        call_command("pdr-reflect", verbosity=0)
    assert "1 reflection(s) failed" in str(info.value) and "Cannot connect to bad" in str(info.value)
    assert rows(good.engine, "t", ["id"]) == [{"id": 1, "v": "a"}]
    failed = Reflection.objects.get(destination=bad_db)
    assert failed.status == "error" and failed.failures == 1 and failed.next_attempt_at is not None


def test_event_table_stays_bounded_under_steady_writes(make_target):
    source, dest = make_target("postgresql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    st = watch(source)
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    worker.run_round()
    sizes = []
    for round_ in range(20):
        source.execute(f"INSERT INTO t SELECT g, {round_} FROM generate_series({round_ * 500 + 1}, "
                       f"{round_ * 500 + 500}) g", f"UPDATE t SET v = v + 1 WHERE mod(id, 7) = {round_ % 7}")
        worker.run_round()
        with source.engine.connect() as conn:
            sizes.append(conn.execute(sa.text(f"SELECT count(*) FROM {st.event_table}")).scalar())
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])
    assert max(sizes) == 0, sizes  # everything applied is purged at the end of each pass
    st.refresh_from_db()
    assert st.purged_through >= 10000


def test_initial_load_does_not_lose_changes_made_during_the_copy(make_target, settings):
    settings.PDR = {"LOAD_CHUNK_SIZE": 10}
    source, dest = make_target("mysql"), make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))",
                   "INSERT INTO t VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(1, 101)))
    st = watch(source)
    Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    from django_pdr.engine import runner as reflect

    real = reflect.ReflectionRunner.load_chunk_once
    calls = []

    def chunk_then_write(self, src, dst, state, expected):
        new_state = real(self, src, dst, state, expected)
        calls.append(1)
        n = len(calls)
        # change rows already copied, rows not yet copied, and delete one of each
        source.execute(f"UPDATE t SET v = 'changed{n}' WHERE id IN ({n}, {100 - n})",
                       f"DELETE FROM t WHERE id = {50 + n}", f"INSERT INTO t VALUES ({1000 + n}, 'new')")
        return new_state

    reflect.ReflectionRunner.load_chunk_once = chunk_then_write
    try:
        worker.run_round()
    finally:
        del reflect.ReflectionRunner.load_chunk_once  # inherited again (from engine.load.Loading)
    assert len(calls) >= 10
    worker.run_round()
    assert rows(dest.engine, "t", ["id"]) == rows(source.engine, "t", ["id"])


def _django_env(tmp_path):
    env = dict(os.environ)
    env["PDR_TEST_SQLITE_PATH"] = str(tmp_path / "django.sqlite3")
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = os.getcwd()
    return env


def _manage(env, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "django", *args], env=env, **kwargs)


@pytest.mark.django_db(transaction=True)
def test_sigterm_finishes_cleanly(make_target, tmp_path):
    env = _django_env(tmp_path)
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], env=env, check=True)
    proc = _manage(env, "pdr-reflect", "-i", "0.2", stderr=subprocess.PIPE, text=True)
    wait_started(proc)  # a fixed wait was too short under load
    time.sleep(0.5)  # into its loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
