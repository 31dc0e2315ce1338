"""Waking an idle worker as soon as a source commits changes.

Sources whose engine has change notifications (PostgreSQL: the capture trigger
runs ``pg_notify``) get a listening connection; the worker sleeps in
``select()`` on those connections for at most the polling interval.  Other
engines are polled every interval.  A broken listener is dropped and rebuilt
at the next wait; correctness never depends on a notification, only latency.
"""
from __future__ import annotations

import logging
import select
import threading

from . import conf
from .connections import get_engine
from .dialects import get_dialect

logger = logging.getLogger("django_pdr.wakeup")


class Waker:
    def __init__(self):
        self._listeners: dict = {}  # database pk -> (modified_at, dialect, raw connection)

    def _refresh(self, databases):
        wanted = {}
        for database in databases:
            try:
                dialect = get_dialect(get_engine(database))
            except Exception:
                continue
            if dialect.supports_notify and conf.get("NOTIFY"):
                wanted[database.pk] = database
        for pk in list(self._listeners):
            if pk not in wanted or self._listeners[pk][0] != wanted[pk].modified_at:
                self._drop(pk)
        for pk, database in wanted.items():
            if pk in self._listeners:
                continue
            try:
                engine = get_engine(database)
                dialect = get_dialect(engine)
                raw = engine.raw_connection().dbapi_connection
                dialect.start_listening(raw)
                self._listeners[pk] = (database.modified_at, dialect, raw)
            except Exception as exc:  # polling still works
                logger.debug("cannot listen for changes on %s: %s", database, exc)

    def _drop(self, pk):
        _, _, raw = self._listeners.pop(pk)
        try:
            raw.close()
        except Exception:
            pass

    def wait(self, databases, timeout: float, stop_event: threading.Event | None = None) -> bool:
        """Sleep up to ``timeout`` s; return True when woken by a notification."""
        self._refresh(databases)
        if not self._listeners:
            if stop_event is not None:
                stop_event.wait(timeout)
            return False
        by_fd = {raw.fileno(): (pk, dialect, raw) for pk, (_, dialect, raw) in self._listeners.items()}
        try:
            ready, _, _ = select.select(list(by_fd), [], [], timeout)
        except (OSError, ValueError):
            for pk in list(self._listeners):
                self._drop(pk)
            return False
        woken = False
        for fd in ready:
            pk, dialect, raw = by_fd[fd]
            try:
                woken |= dialect.drain_notifications(raw) > 0
            except Exception:
                self._drop(pk)
        return woken

    def close(self):
        for pk in list(self._listeners):
            self._drop(pk)
