"""Extra admin pages: connection test, table lists, preview, dashboard (with a server-side SVG plot).

Each view presents and dispatches to the library; nothing here runs SQL or
long work (loads and resyncs are only *requested*; ``pdr-reflect`` does them).
"""
from __future__ import annotations

import datetime as dt
import logging

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from ..errors import PdrError
from ..errors import describe as describe_error
from ..models import Database, Reflection, Sample

logger = logging.getLogger("django_pdr.admin")

UNREACHABLE = "unreachable"


# -- Database ----------------------------------------------------------------
def check_database(database) -> tuple[bool, str]:
    """Connect to ``database``; record and return (ok, message)."""
    from ..connections import check_connection, describe_failure

    try:
        ok, message = True, check_connection(database)
    except PdrError as exc:
        ok, message = False, str(exc)
    except Exception as exc:  # e.g. invalid driver options rejected before connecting
        ok, message = False, describe_failure(database, exc)
    # update() leaves modified_at alone, so the cached engine stays valid
    Database.objects.filter(pk=database.pk).update(last_checked_at=timezone.now(), last_check_ok=ok,
                                                   last_check_message=message)
    database.last_check_ok, database.last_check_message = ok, message
    return ok, message


def report_connection(request, database):
    ok, message = check_database(database)
    if ok:
        # never a message that starts with a user's name: the admin capitalises a message's first letter
        messages.success(request, f"Database {database.name}: {message}.")
    else:
        messages.error(request, message)


def test_connection_view(model_admin, request, object_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    database = get_object_or_404(Database, pk=object_id)
    if not model_admin.has_view_or_change_permission(request, database):
        raise PermissionDenied
    report_connection(request, database)
    return HttpResponseRedirect(reverse(f"{model_admin.admin_site.name}:django_pdr_database_change",
                                        args=[database.pk]))


def tables_json(model_admin, request):
    """``{"tables": [{"value", "label"}]}`` of the database ``?database=ID`` (or ``{"error": ...}``)."""
    from ..introspect import list_tables

    user = request.user
    if not (user.has_perm("django_pdr.add_sourcetable") or user.has_perm("django_pdr.change_sourcetable")
            or user.has_perm("django_pdr.add_reflection") or user.has_perm("django_pdr.change_reflection")):
        raise PermissionDenied
    try:
        database = Database.objects.get(pk=int(request.GET.get("database", "")))
    except (ValueError, Database.DoesNotExist):
        return JsonResponse({"error": "Choose a database."}, status=404)
    try:
        tables = list_tables(database)
    except PdrError as exc:
        return JsonResponse({"error": str(exc)})
    return JsonResponse({"tables": [{"value": t.value, "label": t.label} for t in tables]})


# -- Reflection state ----------------------------------------------------------
def live_lag(reflection) -> dict:
    """Pending events (counted now on the source) and seconds behind, for display.

    Falls back to the copy the worker stored when the source cannot be read."""
    from ..engine.runner import pending_events

    try:
        pending = pending_events(reflection)
    except Exception:  # e.g. capture not installed: no event table to count
        logger.debug("cannot count pending events of %s", reflection.pk, exc_info=True)
        pending = None
    live = pending is not None
    if pending is None:
        pending = reflection.pending_events
    lag = reflection.lag_seconds
    if pending == 0:
        lag = 0.0
    return {"pending": pending, "lag": lag, "live": live}


def progress_text(reflection) -> str:
    progress = reflection.load_progress or {}
    loaded = progress.get("loaded")
    if reflection.resync_requested:
        return "resync requested: waiting for pdr-reflect"
    if reflection.status == "loading" or progress.get("phase") == "load":
        return f"initial load: {loaded or 0} rows copied"
    if reflection.status == "new":
        return "waiting for pdr-reflect"
    if loaded is not None:
        return f"initial load done ({loaded} rows)"
    return ""


def format_lag(seconds) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return "0 s" if seconds == 0 else f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _reflection(model_admin, request, object_id, *, change=False):
    reflection = get_object_or_404(Reflection.objects.select_related("source__database", "destination"),
                                   pk=object_id)
    allowed = (model_admin.has_change_permission(request, reflection) if change
               else model_admin.has_view_or_change_permission(request, reflection))
    if not allowed:
        raise PermissionDenied
    return reflection


def dead_letters_url(site, reflection) -> str:
    """The dead-letter list filtered to ``reflection``."""
    return (reverse(f"{site.name}:django_pdr_deadletter_changelist")
            + f"?reflection__id__exact={reflection.pk}")


def _change_url(model_admin, reflection):
    return reverse(f"{model_admin.admin_site.name}:django_pdr_reflection_change", args=[reflection.pk])


def preview_view(model_admin, request, object_id):
    from .preview import MAX_ROWS, preview

    reflection = _reflection(model_admin, request, object_id)
    try:
        limit = max(1, min(int(request.GET.get("n", 20)), MAX_ROWS))
    except ValueError:
        limit = 20
    result, error = None, ""
    try:
        result = preview(reflection, limit)
    except Exception as exc:  # every failure is a message on the page
        error = describe_error(exc)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Reflection._meta, "title": f"Preview: {reflection}", "reflection": reflection,
        "result": result, "error": error, "limit": limit, "change_url": _change_url(model_admin, reflection),
        "sizes": [10, 20, 50, 100, 200],
        "headers": [(c, result.types.get(c, ""), c in result.key) for c in result.columns] if result else [],
    }
    return TemplateResponse(request, "django_pdr/admin/preview.html", context)


def resync_view(model_admin, request, object_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    reflection = _reflection(model_admin, request, object_id, change=True)
    request_resync(Reflection.objects.filter(pk=reflection.pk))
    messages.success(request, f"Initial load / resync of {reflection} requested: "
                              f"pdr-reflect will carry it out.")
    return HttpResponseRedirect(_change_url(model_admin, reflection))


def retry_view(model_admin, request, object_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    reflection = _reflection(model_admin, request, object_id, change=True)
    count = reflection.dead_letters.update(retry_requested=True)
    messages.success(request, f"{count} dead-lettered row(s) of {reflection} will be retried by pdr-reflect.")
    return HttpResponseRedirect(_change_url(model_admin, reflection))


def request_resync(queryset) -> int:
    """Ask the worker to reload the destination from scratch (the admin does no copying)."""
    return queryset.update(resync_requested=True)


# -- Dashboard ----------------------------------------------------------------
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
WINDOWS = {"15m": dt.timedelta(minutes=15), "1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24),
           "7d": dt.timedelta(days=7)}


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def svg_chart(series, *, title: str, unit: str, start, end, width: int = 420, height: int = 220) -> str:
    """An inline SVG line chart. ``series``: [(label, color, [(datetime, value or None)])]."""
    values = [v for _, _, points in series for _, v in points if v is not None]
    left, right, top, bottom = 56, 24, 26, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max((end - start).total_seconds(), 1.0)
    y_max = _nice_max(max(values) if values else 0.0)

    def x(at):
        return left + plot_w * max(0.0, min(1.0, (at - start).total_seconds() / span))

    def y(value):
        return top + plot_h * (1 - value / y_max)

    parts = [f'<svg class="pdr-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" style="font-weight:bold;font-size:12px">{escape(title)}</text>']
    for i in range(5):
        value = y_max * i / 4
        ypos = y(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{ypos:.1f}" y2="{ypos:.1f}" '
                     f'stroke="#e5e5e5"/>')
        label = f"{value:g}" if value < 1000 else f"{value:,.0f}"
        parts.append(f'<text x="{left - 6}" y="{ypos + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.0f}" transform="rotate(-90 12 {top + plot_h / 2:.0f})" '
                 f'text-anchor="middle">{escape(unit)}</text>')
    local = timezone.localtime
    fmt = "%H:%M" if span <= 86400 else "%d %b %H:%M"
    for i in range(5):
        at = start + (end - start) * (i / 4)
        parts.append(f'<text x="{x(at):.1f}" y="{height - 8}" text-anchor="middle">'
                     f'{escape(local(at).strftime(fmt))}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>')
    for label, color, points in series:
        coords = [(x(at), y(v)) for at, v in points if v is not None]
        if len(coords) == 1:
            cx, cy = coords[0]
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{color}"><title>{escape(label)}'
                         f'</title></circle>')
        elif coords:
            text = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{text}">'
                         f'<title>{escape(label)}</title></polyline>')
    if not values:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
                     f'fill="#999">no samples in this period</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text went through escape()


def chart_series(reflections, since, now):
    """(lag series, throughput series) from Sample rows, one line per reflection."""
    lag, throughput = [], []
    samples = Sample.objects.filter(reflection__in=reflections, at__gte=since, at__lte=now).order_by("at")
    by_reflection: dict[int, list] = {}
    for sample in samples.only("reflection_id", "at", "lag_seconds", "events"):
        by_reflection.setdefault(sample.reflection_id, []).append(sample)
    for index, reflection in enumerate(reflections):
        color = PALETTE[index % len(PALETTE)]
        rows = by_reflection.get(reflection.pk, [])
        label = f"#{reflection.pk} {reflection.destination.name}.{reflection.destination_table}"
        lag.append((label, color, [(s.at, s.lag_seconds) for s in rows]))
        rates = []
        for previous, sample in zip(rows, rows[1:]):
            seconds = (sample.at - previous.at).total_seconds()
            if seconds > 0:
                rates.append((sample.at, sample.events * 60.0 / seconds))
        throughput.append((label, color, rates))
    return lag, throughput


def dashboard_view(model_admin, request):
    if not model_admin.has_view_or_change_permission(request):
        raise PermissionDenied
    window = request.GET.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"
    now = timezone.now()
    since = now - WINDOWS[window]
    reflections = list(Reflection.objects.select_related("source__database", "destination")
                       .annotate(dead=Count("dead_letters")).order_by("id"))
    rows = []
    for index, reflection in enumerate(reflections):
        lag = live_lag(reflection) if reflection.active else {"pending": reflection.pending_events,
                                                             "lag": reflection.lag_seconds, "live": False}
        rows.append({"r": reflection, "color": PALETTE[index % len(PALETTE)], "pending": lag["pending"],
                     "lag": format_lag(lag["lag"]), "progress": progress_text(reflection),
                     "url": _change_url(model_admin, reflection),
                     "dead_url": dead_letters_url(model_admin.admin_site, reflection)})
    lag_series, rate_series = chart_series(reflections, since, now)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Reflection._meta, "title": "Replication dashboard", "rows": rows, "window": window,
        "windows": list(WINDOWS), "now": now,
        "lag_chart": svg_chart(lag_series, title="Lag (seconds behind)", unit="seconds", start=since,
                               end=now),
        "rate_chart": svg_chart(rate_series, title="Throughput (events per minute)", unit="events/min",
                                start=since, end=now),
        "legend": [(label, color) for label, color, _ in lag_series],
    }
    return TemplateResponse(request, "django_pdr/admin/dashboard.html", context)


def status_badge(status: str, text: str | None = None) -> str:
    return format_html('<span class="pdr-status pdr-status-{}">{}</span>', status, text or status)
