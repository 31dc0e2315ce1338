"""Throwaway databases on the live test servers (and SQLite files), for end-to-end tests.

The servers are started by ``tests/live_servers.py`` (README's test command),
which exports ``PDR_TEST_PG_*``, ``PDR_TEST_MYSQL_*`` and ``PDR_TEST_FB_*``.  Each
test gets fresh databases of its own, dropped afterwards (Firebird: a new database
file in the server's ``PDR_TEST_FB_DIR``).
"""
from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

KINDS = ("postgresql", "mysql", "sqlite", "firebird")
PAIRS = [(s, d) for s in KINDS for d in KINDS]
_ENV = {"postgresql": "PDR_TEST_PG", "mysql": "PDR_TEST_MYSQL", "firebird": "PDR_TEST_FB"}
_DRIVER = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql", "firebird": "firebird+firebird"}


def server_params(kind):
    prefix = _ENV[kind]
    if not os.environ.get(f"{prefix}_PORT"):
        return None
    return {
        "host": os.environ.get(f"{prefix}_HOST", "127.0.0.1"),
        "port": int(os.environ[f"{prefix}_PORT"]),
        "username": os.environ.get(f"{prefix}_USER", "pdr"),
        "password": os.environ.get(f"{prefix}_PASSWORD", "pdr"),
        "database": os.environ.get(f"{prefix}_DB", "pdr"),
    }


def require(kind):
    """Skip (outside CI) when a live server is not running; CI always runs them."""
    if kind != "sqlite" and server_params(kind) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{kind} test server not running: run the tests through README's test command")
        pytest.skip(f"{kind} test server not running (start it with tests/live_servers.py)")


def _url(kind, params, database):
    query = {"charset": "utf8mb4"} if kind == "mysql" else {"charset": "UTF8"} if kind == "firebird" else {}
    return sa.engine.URL.create(_DRIVER[kind], username=params["username"], password=params["password"],
                                host=params["host"], port=params["port"], database=database, query=query)


class Target:
    """One empty database: ``fields`` for a ``Database`` model, ``engine`` for the test's own SQL."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.name = f"pdr_t_{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            path = str(tmp_path / f"{self.name}.sqlite3")
            self.fields = {"kind": "sqlite", "database": path}
            self.engine = sa.create_engine(sa.engine.URL.create("sqlite+pysqlite", database=path))
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        params = server_params(kind)
        if kind == "firebird":
            self._firebird(params)
            return
        self._admin = sa.create_engine(_url(kind, params, params["database"]), isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            if kind == "mysql":
                conn.exec_driver_sql(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            else:
                conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.fields = {"kind": kind, "host": params["host"], "port": params["port"],
                       "username": params["username"], "password": params["password"],
                       "database": self.name}
        connect_args = {"options": "-c timezone=UTC"} if kind == "postgresql" else {"init_command":
                                                                                     "SET time_zone='+00:00'"}
        self.engine = sa.create_engine(_url(kind, params, self.name), connect_args=connect_args)

    def _firebird(self, params):
        """A new database file on the Firebird server; the test's engine is prepared as
        django-pdr prepares its own (DDL committed at once, READ COMMITTED)."""
        from firebird.driver import create_database

        from django_pdr.dialects import FirebirdDialect

        self.path = os.path.join(os.environ["PDR_TEST_FB_DIR"], f"{self.name}.fdb")
        dsn = f"{params['host']}/{params['port']}:{self.path}"
        create_database(dsn, user=params["username"], password=params["password"], charset="UTF8").close()
        self.fields = {"kind": "firebird", "host": params["host"], "port": params["port"],
                       "username": params["username"], "password": params["password"], "database": self.path}
        self.engine = sa.create_engine(_url("firebird", params, self.path))
        FirebirdDialect.prepare_engine(self.engine)
        self._dsn, self._params = dsn, params

    def model(self, name=None):
        from django_pdr.models import Database

        return Database.objects.create(name=name or self.name, **self.fields)

    def execute(self, *statements):
        with self.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def drop(self):
        self.engine.dispose()
        if self.kind == "sqlite":
            return
        from django_pdr.connections import dispose_all

        dispose_all()
        if self.kind == "firebird":
            from firebird.driver import connect

            with connect(self._dsn, user=self._params["username"], password=self._params["password"]) as con:
                con.drop_database()
            return
        with self._admin.connect() as conn:
            if self.kind == "mysql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{self.name}`")
            else:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.dispose()


@pytest.fixture
def make_target(tmp_path):
    made = []

    def make(kind):
        require(kind)
        target = Target(kind, tmp_path)
        made.append(target)
        return target

    yield make
    for target in made:
        target.drop()


def rows(engine, table, key, schema=None):
    """All rows of ``table`` as dicts, ordered by ``key`` (a list of column names)."""
    with engine.connect() as conn:
        t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=conn)
        for column in t.columns:
            if isinstance(column.type, sa.Float):
                column.type.asdecimal = False  # MySQL DOUBLE reflects as Decimal(10 places)
        query = sa.select(t).order_by(*[t.c[k] for k in key])
        return [dict(r) for r in conn.execute(query).mappings()]


def watch(database, table, schema=""):
    """A SourceTable for ``table`` of ``database`` (a Database row), validated, saved and
    with its capture installed, as the admin does on save."""
    from django_pdr.models import SourceTable

    source_table = SourceTable(database=database, schema=schema, table=table)
    source_table.full_clean()
    source_table.save()
    source_table.install()
    return source_table


def run_worker_thread(interval):
    """``worker.run(interval=...)`` in a daemon thread: (stop event, thread)."""
    import threading

    from django.db import connection

    from django_pdr import worker

    stop = threading.Event()

    def target():
        try:
            worker.run(interval=interval, stop_event=stop)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return stop, thread
