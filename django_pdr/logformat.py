"""``pdr-reflect --log-format json``: one JSON object per log line, for log collectors."""
from __future__ import annotations

import datetime as dt
import json
import logging

#: Context the worker attaches to its records (``extra=``), copied into each object when present.
FIELDS = ("reflection", "source", "destination", "events", "rows", "loaded", "seconds", "caught_up",
          "error", "retry_in")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
