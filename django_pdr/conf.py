"""Settings: one ``PDR`` dict in the project's settings, merged over these defaults.

Read every setting through :func:`get`, never from ``django.conf.settings``
directly, so defaults live in one place and ``override_settings`` works.
"""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS = {
    # Events read, collapsed and applied per destination transaction.
    "BATCH_SIZE": 20000,
    # Bytes of source rows a batch or load chunk holds at most (about: the lengths of
    # their text and bytes values): fewer events are read when rows are large (the
    # largest row seen sets how many), and a read that passes it stops and is redone
    # shorter.  One row larger than this still goes, alone.
    "BATCH_BYTES": 32 * 1024 * 1024,
    # Rows per chunk of an initial load or resync (a transaction each); a chunk read as
    # Python values (not on the text path) holds at most 10,000 of them.
    "LOAD_CHUNK_SIZE": 50000,
    # Seconds a failed reflection waits before its next try; doubles up to the cap.
    "RETRY_BACKOFF": 1.0,
    "RETRY_BACKOFF_MAX": 60.0,
    # Seconds a reflection with a backlog works before the worker turns to the others (a
    # running worker then probes every source again and serves quiet tables first).
    "TIME_SLICE": 0.5,
    # Seconds a running worker's streaming table (one whose last pass applied changes) keeps
    # looking for new ones once caught up, on the worker's busy thread: a table that
    # changes all the time is applied as its changes commit, not a worker round later.
    # 0: never (each pass ends when caught up).
    "STREAM_LINGER": 0.05,
    # Passes a running worker runs at once in a round (threads): the tables with a few new
    # events then wait for the slowest of them, not for all of them one after another.
    # Passes into one destination table still run one after another.
    "PASS_THREADS": 4,
    # A running worker skips reflections whose event tables hold nothing new and whose
    # triggers are in place (one probe per source database per round); each still gets a
    # full pass (destination checkpoint read, tables described afresh) about this often, in
    # seconds, spread over the interval.
    "FULL_PASS_INTERVAL": 3600.0,
    # Small batches of a streaming table (those applied in one statement) and load chunks
    # on the text path commit without waiting for the destination to flush them to disk,
    # as PostgreSQL's own subscriptions do (PostgreSQL destinations: synchronous_commit
    # off for them).  Before a position is
    # recorded where purges read it, the destination is made durable up to it: a
    # destination crash loses at most such batches, which are applied again from the
    # events, never purged meanwhile.  False: every batch waits for its flush.
    "ASYNCHRONOUS_COMMIT": True,
    # Name of the checkpoint table PDR creates in each destination database.
    "CHECKPOINT_TABLE": "pdr_checkpoint",
    # Seconds a connection may take to open before the database counts as unreachable.
    "CONNECT_TIMEOUT": 10,
    # Seconds a worker's claim on a reflection lasts without renewal (several workers).
    "LEASE_SECONDS": 30,
    # Events deleted per statement when purging applied events from an event table.
    "PURGE_CHUNK": 10000,
    # Seconds between two purges of a source's applied events by a running worker (-i):
    # each purge is a write transaction on the source, which live replication would
    # otherwise make after every pass.  A one-shot run purges after every pass.
    "PURGE_INTERVAL": 1.0,
    # Seconds between two lag/throughput samples of a reflection (dashboard history).
    "SAMPLE_INTERVAL": 10,
    # PostgreSQL sources: the capture trigger NOTIFYs idle workers, which then wake at once
    # instead of at the next poll (-i).  Costs commit throughput under concurrent writers:
    # PostgreSQL serialises the commits of notifying transactions.  Changing it makes
    # installed capture outdated; the worker reinstalls it.
    "NOTIFY": True,
    # Days of samples kept.
    "SAMPLE_RETENTION_DAYS": 7,
    # What a reflection does when its checkpoint cannot be continued: the source's capture
    # was installed anew (event ids started again), or events it has not applied were
    # purged (a destination restored from a backup).  "resync": reload the destination;
    # "error": stop with an error until a resync is requested.
    "ON_CAPTURE_RESET": "resync",
    # Bearer token that may read django_pdr.metrics.view without a staff login ("": none;
    # Prometheus then needs a staff session).  Keep it out of version control.
    "METRICS_TOKEN": "",
}

#: Allowed values of the settings that take one of a few words.
CHOICES = {"ON_CAPTURE_RESET": ("resync", "error")}


@lru_cache(maxsize=None)
def _config() -> dict:
    merged = dict(DEFAULTS)
    user = getattr(settings, "PDR", {}) or {}
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"Unknown key(s) in settings.PDR: {', '.join(sorted(unknown))}. "
            f"Known keys: {', '.join(sorted(DEFAULTS))}."
        )
    merged.update(user)
    return merged


def get(name: str):
    """The value of setting ``name`` (a key of :data:`DEFAULTS`)."""
    return _config()[name]


def _reset(*, setting, **kwargs):
    if setting == "PDR":
        _config.cache_clear()


setting_changed.connect(_reset)
