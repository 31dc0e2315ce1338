"""``manage.py pdr-import FILE``: create or update the configuration written by ``pdr-export``."""
import sys

from django.core.management.base import BaseCommand, CommandError

from django_pdr.configio import ConfigFileError, import_config, loads


class Command(BaseCommand):
    help = ("Create or update Databases (by name), SourceTables (by database, schema and table) and "
            "Reflections (by uid) from a file written by 'manage.py pdr-export' ('-' reads standard "
            "input). All or nothing: one transaction. Credentials missing from the file keep their "
            "stored values. Capture triggers are installed by the worker (or the admin), not here.")

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE", help="the JSON file to import, or - for standard input")
        parser.add_argument("--dry-run", action="store_true",
                            help="validate and report what would change, then roll back")

    def handle(self, *args, file, dry_run=False, verbosity=1, **options):
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as handle:
                    text = handle.read()
        except FileNotFoundError:
            raise CommandError(f"No such file: {file}.")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {getattr(exc, 'strerror', None) or exc}.")
        try:
            result = import_config(loads(text), dry_run=dry_run)
        except ConfigFileError as exc:
            raise CommandError(f"{file}: {exc} Nothing was imported.")
        if verbosity >= 1:
            prefix = "Dry run, rolled back: " if dry_run else "Imported: "
            self.stdout.write(self.style.SUCCESS(prefix + result.summary() + "."))
        for name in result.without_credentials:
            self.stderr.write(self.style.WARNING(
                f"Database {name!r} was created without a password: set its credentials in the admin."))
