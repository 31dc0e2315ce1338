"""The only place SQLAlchemy engines are created and cached.

Engines are keyed by the Database row and its modification time, so editing a
connection in the admin takes effect at the next use.  Drivers are imported by
SQLAlchemy lazily, so a missing MySQL driver only matters to MySQL users.
"""
from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from . import conf
from .dialects import Dialect, dialect_for_kind, get_dialect
from .errors import ConnectionFailed

logger = logging.getLogger("django_pdr.connections")

_engines: dict = {}
_lock = threading.Lock()


def database_url(database) -> sa.engine.URL:
    """The SQLAlchemy URL of a ``Database`` (built by ``URL.create``, never by concatenation)."""
    return dialect_for_kind(database.kind).make_url(database)


#: Compiled statements SQLAlchemy keeps per engine (see create_engine).
QUERY_CACHE_SIZE = 100


def create_engine(database) -> sa.Engine:
    cls = dialect_for_kind(database.kind)
    engine = sa.create_engine(
        database_url(database),
        connect_args=cls.connect_args(int(conf.get("CONNECT_TIMEOUT"))),
        pool_pre_ping=True,
        # compiled statements kept per database (SQLAlchemy's default is 500): a worker
        # serving a thousand tables would keep 500 large ones; the busy tables' statements
        # stay in the cache, a quiet table's pass compiles its few again
        query_cache_size=QUERY_CACHE_SIZE,
        **cls.engine_kwargs(),
    )
    cls.prepare_engine(engine)
    statements = cls.on_connect_statements()
    if statements:
        @sa.event.listens_for(engine, "connect")
        def _session_settings(dbapi_connection, record):
            cursor = dbapi_connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()

    return engine


def get_engine(database) -> sa.Engine:
    """A cached engine for ``database`` (a ``Database`` model instance)."""
    key = (database.pk, database.modified_at, database.kind)
    with _lock:
        engine = _engines.get(database.pk)
        if engine is not None and engine.pdr_key == key:
            return engine
        if engine is not None:
            engine.dispose()
        engine = create_engine(database)
        engine.pdr_key = key
        if database.pk is not None:
            _engines[database.pk] = engine
        return engine


def connect(database) -> sa.Connection:
    """A connection to ``database``; ConnectionFailed (readable, no credential) if it cannot open."""
    try:
        return get_engine(database).connect()
    except Exception as exc:  # each driver has its own exception classes
        raise ConnectionFailed(describe_failure(database, exc)) from None


def begin(conn):
    """A new transaction on ``conn``, first ending a read left open by autobegin."""
    if conn.in_transaction():
        conn.rollback()
    return conn.begin()


def dispose_all():
    """Close every pooled connection (after a fork, at exit, between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dialect_of(database) -> Dialect:
    return get_dialect(get_engine(database))


def describe_failure(database, exc: BaseException) -> str:
    """A message that names the database and what to check, never a credential."""
    orig = getattr(exc, "orig", None) or exc
    cls = dialect_for_kind(database.kind)
    if isinstance(orig, ImportError):
        return (f"Cannot connect to {database.describe()}: its Python driver is not installed ({orig}). "
                f"{cls.install_hint}")
    text = str(orig).strip()
    text = text.splitlines()[0] if text else type(orig).__name__
    for secret in (database.password, database.username):
        if secret and len(secret) > 2:
            text = text.replace(secret, "***")
    hint = cls.unreachable_hint
    return f"Cannot connect to {database.describe()}: {text} ({hint})."


def check_connection(database) -> str:
    """Connect and run a trivial query; raise ConnectionFailed with a readable message."""
    try:
        with get_engine(database).connect() as conn:
            conn.execute(dialect_for_kind(database.kind).ping_query())
            version = conn.dialect.server_version_info
    except Exception as exc:  # each driver has its own exception classes
        raise ConnectionFailed(describe_failure(database, exc)) from None
    return "Connected" + (f" (server version {'.'.join(map(str, version))})" if version else "")
