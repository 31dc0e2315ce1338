"""Waking an idle worker as soon as a source commits changes.

Sources whose engine has change notifications (PostgreSQL: the capture trigger
runs ``pg_notify``) get a listening connection; the worker sleeps in
``select()`` on those connections for at most the polling interval.  Other
engines are polled every interval.  A broken listener is dropped and rebuilt
at the next wait; correctness never depends on a notification, only latency.

Writers notify only while a worker sleeps, so that a busy worker does not cost
them the commit serialisation of ``NOTIFY``.  Before sleeping, the worker *arms*
each listener (tells the source it sleeps); arming succeeds only when no
capturing transaction is in flight, so after a successful arm the worker looks
once more (``wait`` returns at once) and every commit it could have missed is
visible to that look; later writers notify.  While writes are in flight arming
fails and the worker looks again after a short pause that doubles up to the
interval (a long capturing transaction makes it a poller meanwhile).  A wake-up
disarms its listener, and so does finding work.  A second worker on the same
source database finds the arm taken and sleeps on it ("shared"): every
notification reaches every listener, and a worker that disarms without having
been notified (it found work) notifies the others itself; a sharer re-arms after
each wake-up or timeout.
"""
from __future__ import annotations

import logging
import select
import threading

from . import conf
from .connections import get_engine
from .dialects import get_dialect

logger = logging.getLogger("django_pdr.wakeup")


#: First pause after a failed arming attempt (seconds); it doubles up to the interval.
ARM_RETRY_FIRST = 0.005


class Waker:
    def __init__(self):
        self._listeners: dict = {}  # database pk -> (modified_at, dialect, raw connection)
        self._armed: dict = {}  # database pk -> token of an armed listener
        self._retry = ARM_RETRY_FIRST
        #: Databases the last ``wait`` proved quiet: this worker held their arm for the
        #: whole wait and no notification came, so no capturing transaction committed.
        self.quiet: set = set()

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
                # a connection of its own, out of the pool: it listens in autocommit mode
                # and holds the arm's session lock, neither of which a pooled user expects
                pooled = engine.raw_connection()
                pooled.detach()
                raw = pooled.dbapi_connection
                try:
                    dialect.start_listening(raw)
                except Exception:
                    raw.close()
                    raise
                self._listeners[pk] = (database.modified_at, dialect, raw)
            except Exception as exc:  # polling still works
                logger.debug("cannot listen for changes on %s: %s", database, exc)

    def _drop(self, pk):
        if self._armed.get(pk) == "held":
            self._disarm(pk, wake_others=True)  # closing would release it, silently
        self._armed.pop(pk, None)
        listener = self._listeners.pop(pk, None)
        if listener is None:  # the failed disarm dropped it already
            return
        raw = listener[2]
        try:
            raw.close()
        except Exception:
            pass

    def _arm(self) -> tuple[bool, bool]:
        """Arm every listener not armed yet; return (any armed just now, any left unarmed)."""
        newly = unarmed = False
        for pk, (_, dialect, raw) in list(self._listeners.items()):
            if pk in self._armed:
                continue
            try:
                token = dialect.arm_wakeups(raw)
            except Exception as exc:
                logger.debug("cannot arm the listener of database %s: %s", pk, exc)
                self._drop(pk)
                continue
            if token is None:
                unarmed = True
            else:
                self._armed[pk] = token
                newly = True
        return newly, unarmed

    def _disarm(self, pk, wake_others=False):
        token = self._armed.pop(pk, None)
        if token is None:
            return
        _, dialect, raw = self._listeners[pk]
        try:
            dialect.disarm_wakeups(raw, token, wake_others)
        except Exception as exc:
            logger.debug("cannot disarm the listener of database %s: %s", pk, exc)
            self._drop(pk)

    def wait(self, databases, timeout: float, stop_event: threading.Event | None = None) -> bool:
        """Sleep up to ``timeout`` s; return True when woken by a notification, or at once
        (also True) after arming a listener: the caller must look for work again first."""
        self.quiet = set()
        self._refresh(databases)
        if not self._listeners:
            if stop_event is not None:
                stop_event.wait(timeout)
            return False
        newly, unarmed = self._arm()
        if newly:
            self._retry = ARM_RETRY_FIRST
            return True
        if unarmed:  # writers in flight do not notify: look again soon
            timeout = min(timeout, self._retry)
            self._retry *= 2
        by_fd = {raw.fileno(): (pk, dialect, raw) for pk, (_, dialect, raw) in self._listeners.items()}
        held = {pk for pk, token in self._armed.items() if token == "held"}
        try:
            ready, _, _ = select.select(list(by_fd), [], [], timeout)
        except (OSError, ValueError):
            for pk in list(self._listeners):
                self._drop(pk)
            return False
        woken = False
        for fd in ready:
            pk, dialect, raw = by_fd[fd]
            held.discard(pk)
            try:
                woken |= dialect.drain_notifications(raw) > 0
            except Exception:
                self._drop(pk)
                continue
            self._disarm(pk)  # awake: writers may stop notifying
        for pk, token in list(self._armed.items()):
            if token == "shared":  # the other worker may have stopped: look at the arm again
                self._armed.pop(pk)
        # (a shared arm proves nothing: its holder may have died without a word, and then
        # writers stopped notifying)
        self.quiet = {pk for pk in held if self._armed.get(pk) == "held"}
        return woken

    def busy(self):
        """The worker found work: disarm, so that writers stop notifying while it works
        (it looks again before it sleeps)."""
        self._retry = ARM_RETRY_FIRST
        self.quiet = set()
        for pk in list(self._armed):
            self._disarm(pk, wake_others=True)

    def close(self):
        for pk in list(self._listeners):
            self._drop(pk)
