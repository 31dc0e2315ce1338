"""A destination or source server stopped for 30 s mid-run: reported, backed off,
other reflections keep flowing, nothing lost after the restart."""
import contextlib
import time

import pytest
import sqlalchemy as sa

from tests.targets import run_worker_thread, watch
from django_pdr.models import Database, Reflection
from tests import live_servers
from tests.processes import Writer, table_rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]

OUTAGE_SECONDS = 30


@pytest.fixture
def own_server(request):
    """A server of our own that the test may stop and start again."""
    cls = {"postgresql": live_servers.PostgresServer, "mysql": live_servers.MariaDBServer}[request.param]
    live_servers.ensure_installed([cls.kind])
    server = cls()
    server.start()
    server.kind_name = request.param
    yield server
    server.stop()


def restart(server):
    server._spawn()
    server._wait_ready()


def server_database(server, name):
    return Database.objects.create(name=name, kind=server.kind_name, host="127.0.0.1", port=server.port,
                                   username=live_servers.USER, password=live_servers.PASSWORD,
                                   database=live_servers.DB)


def server_engine(server):
    driver = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}[server.kind_name]
    return sa.create_engine(sa.engine.URL.create(driver, username=live_servers.USER, password=live_servers.PASSWORD,
                                                 host="127.0.0.1", port=server.port, database=live_servers.DB),
                            pool_pre_ping=True)


@contextlib.contextmanager
def writing_while_a_worker_runs(writer, source_engine, dest_engine, interval=0.2):
    """Run ``writer`` and a worker thread for the ``with`` block; then stop the writer and
    wait until the destination equals the source."""
    stop, thread = run_worker_thread(interval)
    try:
        writer.start()
        yield
        writer.stop()
        assert writer.error is None
        assert wait_until(lambda: table_rows(dest_engine) == table_rows(source_engine), 60)
    finally:
        stop.set()
        thread.join(timeout=60)
        writer.stop()


def wait_until(condition, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return True
        except Exception:
            pass
        time.sleep(0.3)
    return False


@pytest.mark.parametrize("own_server", ["postgresql"], indirect=True)
def test_destination_outage(own_server, make_target, settings):
    settings.PDR = {"RETRY_BACKOFF": 0.5, "RETRY_BACKOFF_MAX": 4, "CONNECT_TIMEOUT": 2}
    source, other = make_target("sqlite"), make_target("sqlite")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
    st = watch(source.model("src"), "t")
    down = Reflection.objects.create(source=st, destination=server_database(own_server, "outage-dst"),
                                     destination_table="t")
    Reflection.objects.create(source=st, destination=other.model("steady"), destination_table="t")
    dest_engine = server_engine(own_server)
    writer = Writer(source.engine, seed=5, batch=10, pause=0.05)
    with writing_while_a_worker_runs(writer, source.engine, dest_engine):
        assert wait_until(lambda: len(table_rows(dest_engine)) > 50, 30)
        own_server.stop(remove=False)
        outage_started = time.time()
        time.sleep(OUTAGE_SECONDS / 2)
        down.refresh_from_db()
        assert down.status == "error" and down.last_error, "the outage must be reported on the reflection"
        failures_mid = down.failures
        # the other destination keeps up during the outage: a change written now reaches it
        # (the writer never touches negative ids; equality with a writing source is a race)
        source.execute("INSERT INTO t VALUES (-1, 'during the outage', 0)")
        assert wait_until(lambda: (-1, "during the outage", 0) in table_rows(other.engine), 15)
        time.sleep(max(0, OUTAGE_SECONDS - (time.time() - outage_started)))
        restart(own_server)
        outage = time.time() - outage_started
    down.refresh_from_db()
    assert outage >= OUTAGE_SECONDS
    # backed off: a handful of attempts in 30 s, not one per poll (0.2 s)
    assert 1 <= failures_mid <= 12
    assert down.status == "running" and down.last_error == ""
    assert table_rows(other.engine) == table_rows(source.engine)
    dest_engine.dispose()


@pytest.mark.parametrize("own_server", ["mysql"], indirect=True)
def test_source_outage(own_server, make_target, settings):
    settings.PDR = {"RETRY_BACKOFF": 0.5, "RETRY_BACKOFF_MAX": 4, "CONNECT_TIMEOUT": 2}
    steady_source, steady_dest, dest = make_target("sqlite"), make_target("sqlite"), make_target("postgresql")
    source_engine = server_engine(own_server)
    with source_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
    st = watch(server_database(own_server, "outage-src"), "t")
    down = Reflection.objects.create(source=st, destination=dest.model("dst"), destination_table="t")
    steady_source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
    steady = watch(steady_source.model("steady-src"), "t")
    Reflection.objects.create(source=steady, destination=steady_dest.model("steady-dst"), destination_table="t")
    writer = Writer(source_engine, seed=9, batch=10, pause=0.05, max_ops=400)
    steady_writer = Writer(steady_source.engine, seed=10, batch=10, pause=0.1)
    stop, thread = run_worker_thread(0.2)
    try:
        writer.start()
        writer.join(timeout=60)
        assert writer.error is None
        assert wait_until(lambda: table_rows(dest.engine) == table_rows(source_engine), 30)
        expected = table_rows(source_engine)
        # changes written just before the outage, not yet applied
        with source_engine.begin() as conn:
            conn.exec_driver_sql("UPDATE t SET v = 'before outage' WHERE id <= 20")
        source_engine.dispose()
        own_server.stop(remove=False)
        outage_started = time.time()
        steady_writer.start()
        time.sleep(OUTAGE_SECONDS)
        down.refresh_from_db()
        assert down.status == "error", down.last_error
        assert any(text in down.last_error for text in ("Cannot connect", "Lost connection", "MySQL server")), \
            down.last_error
        steady_source.execute("INSERT INTO t VALUES (-1, 'during the outage', 0)")  # see test_destination_outage
        assert wait_until(lambda: (-1, "during the outage", 0) in table_rows(steady_dest.engine), 15)
        restart(own_server)
        outage = time.time() - outage_started
        assert wait_until(lambda: table_rows(dest.engine) == table_rows(source_engine), 60)
    finally:
        stop.set()
        thread.join(timeout=60)
        steady_writer.stop()
    assert outage >= OUTAGE_SECONDS
    assert table_rows(dest.engine) != expected  # the update made before the outage arrived
    assert table_rows(dest.engine) == table_rows(source_engine)
    source_engine.dispose()


@pytest.mark.parametrize("own_server", ["postgresql"], indirect=True)
def test_destination_crash_loses_no_change_of_batches_committed_asynchronously(own_server, make_target, settings):
    """Small batches into PostgreSQL commit with synchronous_commit off (PDR
    ASYNCHRONOUS_COMMIT): the destination stopped the hard way (immediate shutdown: what
    its WAL buffers held is lost, as in a crash) loses such batches with their
    checkpoint; their events were not purged (positions are recorded after a flush), and
    after the restart the mirror is whole again."""
    import signal

    settings.PDR = {"RETRY_BACKOFF": 0.2, "RETRY_BACKOFF_MAX": 1, "CONNECT_TIMEOUT": 2, "PURGE_INTERVAL": 0.2}
    source = make_target("postgresql")
    source.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(40), n int)")
    st = watch(source.model("src"), "t")
    Reflection.objects.create(source=st, destination=server_database(own_server, "crash-dst"), destination_table="t")
    dest_engine = server_engine(own_server)
    writer = Writer(source.engine, seed=7, batch=5, pause=0.002)
    with writing_while_a_worker_runs(writer, source.engine, dest_engine):
        assert wait_until(lambda: len(table_rows(dest_engine)) > 300, 30)
        for _ in range(3):  # crashes while changes stream in
            time.sleep(2)
            own_server._signal(signal.SIGQUIT)  # immediate shutdown: no flush of the WAL buffers
            assert own_server._wait_exit(10)
            restart(own_server)
        time.sleep(2)
    with source.engine.connect() as conn:  # purges did go on meanwhile
        assert conn.exec_driver_sql(f'SELECT count(*) FROM "{st.event_table}"').scalar() < writer.changes
    dest_engine.dispose()
