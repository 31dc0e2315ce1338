"""The replication loop behind ``manage.py pdr-reflect``.

Each active reflection gets a pass; an error in one is logged, recorded on it
with an exponential back-off, and the others go on.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from . import conf
from .errors import PdrError
from .models import Reflection
from .reflect import ReflectionRunner

logger = logging.getLogger("django_pdr.worker")


@dataclass
class RoundResult:
    ok: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    events: int = 0
    rows: int = 0


def error_message(exc: BaseException) -> str:
    """A one-paragraph message for a failed pass: no traceback, no credential."""
    if isinstance(exc, PdrError):
        return str(exc)
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return f"{type(orig or exc).__name__}: {text.splitlines()[0] if text else ''}"


def backoff_seconds(failures: int) -> float:
    base = float(conf.get("RETRY_BACKOFF"))
    cap = float(conf.get("RETRY_BACKOFF_MAX"))
    return min(cap, base * (2 ** max(0, failures)))


def due_reflections(ids=None):
    query = (Reflection.objects.filter(active=True)
             .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
             .select_related("source__database", "destination"))
    if ids:
        query = query.filter(pk__in=ids)
    return list(query.order_by("id"))


def run_round(ids=None, stop=lambda: False, max_seconds_each: float | None = 30.0) -> RoundResult:
    """One pass over every due reflection."""
    result = RoundResult()
    for reflection in due_reflections(ids):
        if stop():
            break
        try:
            outcome = ReflectionRunner(reflection).run(stop=stop, max_seconds=max_seconds_each)
        except Exception as exc:  # one reflection's failure must not stop the others
            message = error_message(exc)
            delay = backoff_seconds(reflection.failures)
            logger.error("reflection %s (%s) failed: %s; next try in %.0f s", reflection.pk, reflection,
                         message, delay, exc_info=True)
            reflection.record_error(message, delay)
            result.failed.append((reflection, message))
            continue
        result.ok.append(reflection)
        result.events += outcome.events
        result.rows += outcome.rows
        if outcome.events or outcome.loaded:
            logger.info("reflection %s: %d events, %d rows applied%s", reflection.pk, outcome.events,
                        outcome.rows, "" if outcome.caught_up else " (more pending)")
    return result


def run(ids=None, interval: float | None = None, stop_event: threading.Event | None = None) -> RoundResult:
    """Run once (``interval`` None) or forever, sleeping ``interval`` seconds when idle."""
    stop_event = stop_event or threading.Event()
    while True:
        result = run_round(ids, stop=stop_event.is_set)
        if interval is None or stop_event.is_set():
            return result
        if result.events == 0:
            stop_event.wait(interval)
        if stop_event.is_set():
            return result
