"""``manage.py pdr-sync-schema``: accept a source table's new structure."""
from django.core.management.base import BaseCommand, CommandError

from django_pdr.models import SourceTable
from django_pdr.schemasync import sync
from django_pdr.errors import describe as error_message


class Command(BaseCommand):
    help = ("Record the current structure of source tables; add columns new at the source to the "
            "destination tables of exact-mirror reflections (which are then resynced).")

    def add_arguments(self, parser):
        parser.add_argument("-s", "--source-table", type=int, action="append", dest="sources", metavar="ID")
        parser.add_argument("--no-alter", action="store_true", help="only record the new structure")

    def handle(self, *args, sources=None, no_alter=False, **options):
        query = SourceTable.objects.select_related("database")
        if sources:
            query = query.filter(pk__in=sources)
        failed = 0
        for source_table in query:
            try:
                done = sync(source_table, add_to_destinations=not no_alter)
            except Exception as exc:
                failed += 1
                self.stderr.write(f"{source_table}: {error_message(exc)}")
                continue
            if done["added"] or done["removed"]:
                self.stdout.write(f"{source_table}: added {done['added'] or 'none'}, removed "
                                  f"{done['removed'] or 'none'}; destination columns added: "
                                  f"{done['altered'] or 'none'}")
            elif options["verbosity"] > 1:
                self.stdout.write(f"{source_table}: unchanged")
        if failed:
            raise CommandError(f"{failed} source table(s) could not be synchronised.")
