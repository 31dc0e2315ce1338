"""``manage.py pdr-status``: the health of every reflection, for people and monitoring systems."""
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from django_pdr import health
from django_pdr.models import Reflection


class Command(BaseCommand):
    help = ("Print the health of every reflection: status, pending events and lag (measured live in "
            "the source), dead letters and capture. Exit code 0 OK, 1 WARNING, 2 CRITICAL (a reflection "
            "in error, dead letters, capture missing or outdated, an unreadable source, a --critical-* "
            "threshold exceeded); WARNING for --max-lag/--max-pending exceeded or pending events no "
            "worker holds.")

    def add_arguments(self, parser):
        parser.add_argument("-r", "--reflection", type=int, action="append", dest="reflections",
                            metavar="ID", help="only this reflection (repeatable)")
        parser.add_argument("--max-lag", type=float, metavar="SECONDS", help="WARNING above this lag")
        parser.add_argument("--max-pending", type=int, metavar="EVENTS", help="WARNING above this many pending")
        parser.add_argument("--critical-lag", type=float, metavar="SECONDS", help="CRITICAL above this lag")
        parser.add_argument("--critical-pending", type=int, metavar="EVENTS",
                            help="CRITICAL above this many pending events")
        parser.add_argument("--no-capture", action="store_true",
                            help="do not read each source table's installed capture (one query less per table)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON document instead of a table")

    def handle(self, *args, reflections=None, as_json=False, **options):
        for name in ("max_lag", "max_pending", "critical_lag", "critical_pending"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must be zero or more.")
        if reflections:
            missing = set(reflections) - set(Reflection.objects.filter(pk__in=reflections)
                                             .values_list("pk", flat=True))
            if missing:
                raise CommandError(f"No reflection with id {', '.join(map(str, sorted(missing)))}.")
        limits = health.Thresholds(max_lag=options["max_lag"], max_pending=options["max_pending"],
                                   critical_lag=options["critical_lag"],
                                   critical_pending=options["critical_pending"], capture=not options["no_capture"])
        results = health.check_all(limits, reflections)
        level = health.overall(results)
        if as_json:
            self.stdout.write(json.dumps({"status": health.LEVEL_NAMES[level],
                                           "reflections": [h.as_json() for h in results]}, indent=2))
        else:
            self._table(results, level)
        sys.stdout.flush()
        if level:
            raise SystemExit(level)

    def _table(self, results, level):
        head = ("id", "level", "status", "pending", "lag s", "dead", "capture", "reflection")
        rows = [(str(h.id), health.LEVEL_NAMES[h.level], h.status,
                 "-" if h.pending is None else str(h.pending),
                 "-" if h.lag_seconds is None else f"{h.lag_seconds:.1f}",
                 str(h.dead_letters), h.capture or "-", h.reflection) for h in results]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            self.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        for h in results:
            for reason in h.reasons if h.level else ():
                self.stdout.write(f"reflection {h.id}: {health.LEVEL_NAMES[h.level]}: {reason}")
        style = {0: self.style.SUCCESS, 1: self.style.WARNING, 2: self.style.ERROR}[level]
        self.stdout.write(style(f"{health.LEVEL_NAMES[level]}: {len(results)} reflection(s)"))

