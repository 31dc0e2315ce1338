"""``manage.py pdr-reflect``: apply captured changes to every destination."""
import logging
import signal
import sys
import threading

from django.core.management.base import BaseCommand, CommandError

from django_pdr import worker

LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = ("Apply pending changes of every active reflection. Without --interval: one pass, "
            "then exit (non-zero if a reflection failed). With --interval: run until SIGINT/SIGTERM.")

    def add_arguments(self, parser):
        parser.add_argument("-i", "--interval", type=float, default=None, metavar="SECONDS",
                            help="keep running; wait this long between passes when idle")
        parser.add_argument("-r", "--reflection", type=int, action="append", dest="reflections",
                            metavar="ID", help="only this reflection (repeatable)")
        parser.add_argument("--retry-dead-letters", action="store_true",
                            help="re-apply the rows the destination rejected (after fixing the cause)")
        parser.add_argument("--log-format", choices=("text", "json"), default="text",
                            help="json: one JSON object per line (reflection, source, destination, event "
                                 "and row counts, durations)")
        parser.add_argument("--metrics-port", type=int, metavar="PORT",
                            help="serve Prometheus metrics on this port (needs django-pdr[metrics])")
        parser.add_argument("--metrics-address", default="", metavar="ADDRESS",
                            help="address of the metrics server (default: all interfaces)")

    def handle(self, *args, interval=None, reflections=None, verbosity=1, **options):
        if interval is not None and interval < 0:
            raise CommandError("--interval must be zero or more seconds.")
        self._configure_logging(verbosity, options.get("log_format") or "text")
        if options.get("metrics_port") is not None:
            from django_pdr import metrics
            from django_pdr.errors import ConfigurationError

            try:
                metrics.serve(options["metrics_port"], options.get("metrics_address") or "")
            except (ConfigurationError, OSError) as exc:
                raise CommandError(f"Cannot serve metrics on port {options['metrics_port']}: {exc}")
        if options.get("retry_dead_letters"):
            from django_pdr.deadletters import request_retry

            count = request_retry(reflections)
            logging.getLogger("django_pdr.worker").info("%d dead-lettered row(s) queued for retry", count)
        stop = threading.Event()

        def request_stop(signum, frame):
            logging.getLogger("django_pdr.worker").info(
                "signal %s: finishing the current batch, then exiting", signum)
            stop.set()

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = worker.run(reflections, interval=interval, stop_event=stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if interval is None and result.failed:
            names = "; ".join(f"reflection {r.pk}: {message}" for r, message in result.failed)
            raise CommandError(f"{len(result.failed)} reflection(s) failed: {names}")

    def _configure_logging(self, verbosity, log_format):
        from django_pdr.logformat import formatter

        logger = logging.getLogger("django_pdr")
        handler = next((h for h in logger.handlers if getattr(h, "_pdr_command", False)), None)
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler._pdr_command = True
            logger.addHandler(handler)
        handler.setFormatter(formatter(log_format))
        logger.setLevel(LEVELS.get(verbosity, logging.INFO))
