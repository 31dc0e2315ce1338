"""Prometheus metrics (needs ``prometheus_client``: ``pip install "django-pdr[metrics]"``).

Two ways to expose them, documented in docs/operations.md ("Monitoring"):

- ``django_pdr.metrics.view`` in the project's URLconf: every reflection's state as the
  workers last recorded it in Django's database.  Readable by a staff user with the
  ``view_reflection`` permission, or with ``Authorization: Bearer <PDR["METRICS_TOKEN"]>``.
- ``pdr-reflect --metrics-port PORT``: the same, plus the worker process's own counters.

Each scrape runs three queries on Django's database, whatever the number of reflections.
"""
from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass

from django.db.models import Count
from django.http import HttpResponse

from . import conf


@dataclass
class WorkerStats:
    """Counters of the worker in this process (exposed by ``--metrics-port``)."""

    passes: int = 0
    reflection_passes: int = 0
    failures: int = 0
    events: int = 0
    rows: int = 0
    last_pass_at: float | None = None
    running: bool = False


#: The worker of this process counts here (``worker.run_round``).
STATS = WorkerStats()
_STATUSES = ("new", "loading", "running", "error")


def _require():
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        from .errors import ConfigurationError

        raise ConfigurationError('Metrics need prometheus_client: pip install "django-pdr[metrics]".') from None


class ReflectionCollector:
    """Reads every reflection at each scrape (a prometheus_client custom collector)."""

    def __init__(self, worker: bool = False):
        self.worker = worker

    def describe(self):
        return []  # no description at registration: collect() queries the database

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .models import DeadLetter, Reflection

        labels = ["reflection", "source", "destination"]
        families = {key: kind(name, text, labels=labels) for key, kind, name, text in (
            ("pending", GaugeMetricFamily, "pdr_reflection_pending_events",
             "Events captured and not yet applied (as last measured)"),
            ("lag", GaugeMetricFamily, "pdr_reflection_lag_seconds", "Age of the oldest pending event (as last measured)"),
            ("events", CounterMetricFamily, "pdr_reflection_events_applied", "Events applied to the destination"),
            ("rows", CounterMetricFamily, "pdr_reflection_rows_applied",
             "Rows written to the destination (loads included)"),
            ("failures", GaugeMetricFamily, "pdr_reflection_consecutive_failures",
             "Failed passes since the last successful one"),
            ("dead", GaugeMetricFamily, "pdr_reflection_dead_letters", "Rows the destination refused, set aside"),
            ("success", GaugeMetricFamily, "pdr_reflection_last_success_timestamp_seconds",
             "When the reflection last applied changes (Unix time)"),
            ("active", GaugeMetricFamily, "pdr_reflection_active", "1 when the reflection is active"))}
        families["status"] = GaugeMetricFamily("pdr_reflection_status", "1 for the reflection's current status",
                                               labels=[*labels, "status"])
        dead = {row["reflection"]: row["n"]
                for row in DeadLetter.objects.order_by().values("reflection").annotate(n=Count("id"))}
        query = Reflection.objects.select_related("source__database", "destination").order_by("id")
        for r in query:
            values = [str(r.pk), f"{r.source.database.name}:{r.source.qualified_name}",
                      f"{r.destination.name}:{r.destination_table}"]
            if r.pending_events is not None:
                families["pending"].add_metric(values, r.pending_events)
            if r.lag_seconds is not None:
                families["lag"].add_metric(values, r.lag_seconds)
            families["events"].add_metric(values, r.events_applied)
            families["rows"].add_metric(values, r.rows_applied)
            families["failures"].add_metric(values, r.failures)
            families["dead"].add_metric(values, dead.get(r.pk, 0))
            if r.last_applied_at is not None:
                families["success"].add_metric(values, r.last_applied_at.timestamp())
            families["active"].add_metric(values, 1 if r.active else 0)
            for status in _STATUSES:
                families["status"].add_metric([*values, status], 1 if r.status == status else 0)
        yield from families.values()
        if self.worker:
            yield CounterMetricFamily("pdr_worker_passes", "Rounds over the reflections", value=STATS.passes)
            yield CounterMetricFamily("pdr_worker_reflection_passes", "Passes of single reflections",
                                      value=STATS.reflection_passes)
            yield CounterMetricFamily("pdr_worker_failures", "Reflection passes that failed", value=STATS.failures)
            yield CounterMetricFamily("pdr_worker_events_applied", "Events applied by this worker",
                                      value=STATS.events)
            if STATS.last_pass_at is not None:
                yield GaugeMetricFamily("pdr_worker_last_pass_timestamp_seconds", "End of the last round (Unix time)",
                                        value=STATS.last_pass_at)


def registry(worker: bool = False):
    _require()
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(ReflectionCollector(worker=worker))
    return reg


def render(worker: bool = False) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry(worker)), CONTENT_TYPE_LATEST


def _authorised(request) -> bool:
    token = conf.get("METRICS_TOKEN")
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    user = getattr(request, "user", None)
    return bool(user and user.is_active and user.is_staff and user.has_perm("django_pdr.view_reflection"))


def view(request):
    """The metrics, in Prometheus' text format: ``path("pdr/metrics", django_pdr.metrics.view)``."""
    if not _authorised(request):
        response = HttpResponse("Forbidden: log in as staff, or send Authorization: Bearer <PDR METRICS_TOKEN>.\n",
                                status=403, content_type="text/plain")
        return response
    try:
        body, content_type = render()
    except Exception as exc:  # prometheus_client missing: say so, never a bare 500
        return HttpResponse(f"{exc}\n", status=501, content_type="text/plain")
    return HttpResponse(body, content_type=content_type)


def serve(port: int, address: str = ""):
    """Expose the worker's metrics on ``address:port`` (a daemon thread; ``--metrics-port``).  Each
    scrape reads Django's database on the HTTP thread, with a connection closed afterwards."""
    _require()
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from django import db

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                body, content_type = render(worker=True)
                status = 200
            except Exception as exc:
                body, content_type, status = f"{exc}\n".encode(), "text/plain", 500
            finally:
                db.connections.close_all()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="pdr-metrics", daemon=True).start()
    return server
