"""``manage.py pdr-export``: write the configuration (Databases, SourceTables, Reflections) as JSON."""
import json
import os

from django.core.management.base import BaseCommand, CommandError

from django_pdr.configio import dumps, export_config


class Command(BaseCommand):
    help = ("Write every Database, SourceTable and Reflection as JSON (to standard output, or --output "
            "FILE), for 'manage.py pdr-import'. Progress, checkpoints and errors are not exported. "
            "User names, passwords and secret-looking driver options are left out unless "
            "--include-secrets is given.")

    def add_arguments(self, parser):
        parser.add_argument("-o", "--output", metavar="FILE",
                            help="write to FILE instead of standard output")
        parser.add_argument("--include-secrets", action="store_true",
                            help="also export user names, passwords and secret driver options, in clear "
                                 "text (the file is created readable by its owner only)")

    def handle(self, *args, output=None, include_secrets=False, verbosity=1, **options):
        if include_secrets:
            self.stderr.write(self.style.WARNING(
                "Warning: the export contains database user names and passwords in clear text; "
                "keep it secret and delete it when done."))
        text = dumps(export_config(include_secrets=include_secrets))
        if not output or output == "-":
            self.stdout.write(text, ending="")
            return
        mode = 0o600 if include_secrets else 0o666
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with open(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}.")
        if include_secrets:
            os.chmod(output, 0o600)  # also when the file existed before
        if verbosity >= 1:
            config = json.loads(text)
            self.stderr.write(
                f"Exported {len(config['databases'])} database(s), {len(config['source_tables'])} "
                f"source table(s) and {len(config['reflections'])} reflection(s) to {output}.")
