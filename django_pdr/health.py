"""Health of every reflection, for ``manage.py pdr-status`` and monitoring systems.

Pending events and lag are measured live in each source database, not taken from
what the worker last reported: a stopped worker reports nothing, and its
reflections' lag must still grow.  Levels follow the monitoring-plugin convention:
OK (0), WARNING (1), CRITICAL (2).

CRITICAL: a reflection in error, rows set aside as dead letters, capture that is
missing, partial or outdated, a source that cannot be read, or a threshold given
with ``critical_lag`` / ``critical_pending`` exceeded.  WARNING: ``max_lag`` or
``max_pending`` exceeded, or pending events that no worker holds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.utils import timezone

from . import capture
from .connections import connect
from .errors import PdrError
from .errors import describe as describe_error
from .maintenance import measure
from .models import DeadLetter, Reflection

OK, WARNING, CRITICAL = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


@dataclass
class Thresholds:
    max_lag: float | None = None  # seconds: WARNING above
    max_pending: int | None = None  # events: WARNING above
    critical_lag: float | None = None
    critical_pending: int | None = None
    capture: bool = True  # read each source table's installed capture


@dataclass
class Health:
    id: int
    reflection: str
    active: bool
    status: str
    pending: int | None = None
    lag_seconds: float | None = None
    dead_letters: int = 0
    capture: str | None = None
    level: int = OK
    reasons: list = field(default_factory=list)

    def flag(self, level: int, reason: str):
        self.level = max(self.level, level)
        self.reasons.append(reason)

    def as_json(self) -> dict:
        return {**asdict(self), "level": LEVEL_NAMES[self.level]}


def _measure_live(reflection) -> tuple[int, float | None]:
    from .engine.runner import event_reader

    with connect(reflection.source.database) as src:
        return measure(reflection, src, event_reader(src, reflection.source))


def check(reflection, limits: Thresholds, capture_states: dict) -> Health:
    """The health of one reflection (``capture_states`` caches capture status per source table)."""
    h = Health(reflection.pk, str(reflection), reflection.active, reflection.status)
    h.dead_letters = DeadLetter.objects.filter(reflection=reflection).count()
    if not reflection.active:
        h.reasons.append("inactive")
        return h
    if reflection.status == "error":
        h.flag(CRITICAL, f"error: {reflection.last_error or 'no message'}")
    if h.dead_letters:
        h.flag(CRITICAL, f"{h.dead_letters} row(s) set aside as dead letters")
    if limits.capture:
        source = reflection.source
        if source.pk not in capture_states:
            try:
                capture_states[source.pk] = capture.status(source)
            except PdrError as exc:
                capture_states[source.pk] = f"unreadable: {exc}"
            except Exception as exc:  # an engine error the library did not classify
                capture_states[source.pk] = f"unreadable: {describe_error(exc)}"
        h.capture = capture_states[source.pk]
        if h.capture != capture.INSTALLED:
            h.flag(CRITICAL, f"capture {h.capture} on {source} (run manage.py pdr-install)"
                   if not h.capture.startswith("unreadable") else f"source {h.capture}")
    if h.capture is None or not h.capture.startswith("unreadable"):
        try:
            h.pending, h.lag_seconds = _measure_live(reflection)
        except Exception as exc:  # reported, never raised: the other reflections are checked too
            h.flag(CRITICAL, f"cannot measure pending events: {describe_error(exc)}")
    if h.pending is not None:
        for value, warn, crit, what in (
                (h.lag_seconds, limits.max_lag, limits.critical_lag, "lag {v:.1f} s > {l:g} s"),
                (h.pending, limits.max_pending, limits.critical_pending, "{v} pending events > {l}")):
            if value is None:
                continue
            if crit is not None and value > crit:
                h.flag(CRITICAL, what.format(v=value, l=crit))
            elif warn is not None and value > warn:
                h.flag(WARNING, what.format(v=value, l=warn))
        leased = reflection.lease_expires_at and reflection.lease_expires_at > timezone.now()
        if h.pending and not leased and reflection.status != "error":
            h.flag(WARNING, "events are pending and no worker holds this reflection (is pdr-reflect running?)")
    return h


def check_all(limits: Thresholds, ids=None) -> list[Health]:
    query = Reflection.objects.select_related("source__database", "destination").order_by("id")
    if ids:
        query = query.filter(pk__in=ids)
    states: dict = {}
    return [check(r, limits, states) for r in query]


def overall(results: list[Health]) -> int:
    return max((h.level for h in results), default=OK)
