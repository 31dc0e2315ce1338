"""Per-engine SQL.  ``get_dialect(engine_or_sa_dialect)`` returns the PDR dialect.

Every difference between database engines lives in this package; the rest of
django-pdr asks these classes for SQL and never tests an engine's name.
"""
from __future__ import annotations

from .base import CAPTURE_VERSION, CHECKPOINT_TABLE, REGISTRY_TABLE, CaptureNames, Dialect, event_key_name
from .firebird import FirebirdDialect
from .mysql import MySQLDialect
from .postgresql import PostgreSQLDialect
from .sqlite import SQLiteDialect

__all__ = ["CAPTURE_VERSION", "CHECKPOINT_TABLE", "REGISTRY_TABLE", "CaptureNames", "Dialect", "event_key_name",
           "get_dialect", "dialect_for_kind", "kind_for_url", "KINDS"]

_CLASSES = [PostgreSQLDialect, MySQLDialect, SQLiteDialect, FirebirdDialect]

#: Database kinds a user can choose: (kind, label, dialect class)
KINDS = {
    "postgresql": PostgreSQLDialect,
    "mysql": MySQLDialect,
    "sqlite": SQLiteDialect,
    "firebird": FirebirdDialect,
}


def dialect_class(sa_name: str) -> type[Dialect]:
    for cls in _CLASSES:
        if sa_name in cls.names:
            return cls
    raise NotImplementedError(
        f"django-pdr has no support for the {sa_name!r} database engine; "
        f"supported: {', '.join(sorted(KINDS))}"
    )


def get_dialect(obj) -> Dialect:
    """The PDR dialect for a SQLAlchemy Engine, Connection or Dialect."""
    sa_dialect = getattr(obj, "dialect", obj)
    return dialect_class(sa_dialect.name)(sa_dialect)


def dialect_for_kind(kind: str) -> type[Dialect]:
    try:
        return KINDS[kind]
    except KeyError:
        raise NotImplementedError(f"unknown database kind {kind!r}; choose one of {', '.join(KINDS)}")


def kind_for_url(url) -> str | None:
    """The ``Database.kind`` of a SQLAlchemy URL ("mariadb+pymysql://…" → "mysql"), or None.
    Only the backend counts: django-pdr connects with its own driver for each kind."""
    backend = url.get_backend_name()
    for kind, cls in KINDS.items():
        if backend in cls.names:
            return kind
    return None
