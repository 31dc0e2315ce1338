"""``manage.py pdr-verify``: compare destinations with their sources; ``--repair`` fixes them."""
from django.core.management.base import BaseCommand, CommandError

from django_pdr.models import Reflection
from django_pdr.verify import verify
from django_pdr.errors import describe as error_message


class Command(BaseCommand):
    help = ("Compare each reflection's destination with its source by key (chunk hashes, then rows) "
            "and report every difference; --repair makes the destination equal to the source. "
            "Exits non-zero when differences remain.")

    def add_arguments(self, parser):
        parser.add_argument("-r", "--reflection", type=int, action="append", dest="reflections",
                            metavar="ID", help="only this reflection (repeatable)")
        parser.add_argument("--repair", action="store_true", help="fix the differences found")
        parser.add_argument("--chunk-size", type=int, default=None, help="rows per compared chunk")
        parser.add_argument("--max-report", type=int, default=50, help="differences printed per reflection")

    def handle(self, *args, reflections=None, repair=False, chunk_size=None, max_report=50, **options):
        query = Reflection.objects.select_related("source__database", "destination").order_by("id")
        if reflections:
            query = query.filter(pk__in=reflections)
            missing = set(reflections) - set(query.values_list("pk", flat=True))
            if missing:
                raise CommandError(f"No reflection with id {', '.join(map(str, sorted(missing)))}.")
        unresolved, failed = 0, 0
        for reflection in query:
            try:
                report = verify(reflection, repair=repair, chunk_size=chunk_size)
            except Exception as exc:
                failed += 1
                self.stderr.write(f"reflection {reflection.pk} ({reflection}): {error_message(exc)}")
                continue
            style = self.style.SUCCESS if not report.differences else self.style.WARNING
            self.stdout.write(style(
                f"reflection {reflection.pk} ({reflection}): {report.rows_compared} rows compared in "
                f"{report.chunks} chunks, {len(report.differences)} difference(s)"
                + (f", {report.repaired} repaired" if repair else "")))
            for difference in report.differences[:max_report]:
                self.stdout.write(f"  {difference.describe()}")
            if len(report.differences) > max_report:
                self.stdout.write(f"  ... and {len(report.differences) - max_report} more")
            unresolved += len(report.unresolved) - (report.repaired if repair else 0)
        if failed:
            raise CommandError(f"{failed} reflection(s) could not be verified.")
        if unresolved:
            raise CommandError(f"{unresolved} difference(s) remain; run with --repair to fix them.")
