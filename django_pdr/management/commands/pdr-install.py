"""``manage.py pdr-install``: install or upgrade the capture of source tables.

The worker never changes a source schema: it reports capture that is missing or
outdated as an error.  Run this after creating source tables outside the admin
(``pdr-import``, the ORM) and after upgrading django-pdr, then restart the workers."""
from django.core.management.base import BaseCommand, CommandError

from django_pdr import capture
from django_pdr.errors import describe as error_message
from django_pdr.models import SourceTable


class Command(BaseCommand):
    help = ("Install or upgrade the capture (event table and triggers) of every source table that "
            "needs it. --check: only say what is missing or outdated (exit 1 if anything is); "
            "--dry-run: print the SQL it would run.")

    def add_arguments(self, parser):
        parser.add_argument("-s", "--source-table", type=int, action="append", dest="sources", metavar="ID",
                            help="only this source table (repeatable)")
        parser.add_argument("--check", action="store_true",
                            help="change nothing; exit 1 when a capture is missing or outdated")
        parser.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")

    def handle(self, *args, sources=None, check=False, dry_run=False, verbosity=1, **options):
        query = SourceTable.objects.select_related("database")
        if sources:
            query = query.filter(pk__in=sources)
        failed, pending = [], []
        for source_table in query:
            try:
                need = capture.needed(source_table)
                if need is None:
                    if verbosity > 1:
                        self.stdout.write(f"{source_table}: installed")
                    continue
                pending.append(source_table)
                if check:
                    self.stdout.write(f"{source_table}: {need}")
                elif dry_run:
                    self.stdout.write(f"-- {source_table}: {need}")
                    for statement in capture.statements(source_table):
                        self.stdout.write(statement.rstrip(";") + ";")
                else:
                    capture.install(source_table)
                    self.stdout.write(f"{source_table}: installed ({need})")
            except Exception as exc:  # one table's failure must not hide the others
                failed.append(source_table)
                self.stderr.write(f"{source_table}: {error_message(exc)}")
        if failed:
            raise CommandError(f"{len(failed)} source table(s) could not be checked or installed.")
        if check and pending:
            raise CommandError(f"{len(pending)} source table(s) need manage.py pdr-install.")
