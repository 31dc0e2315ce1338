"""Rows a destination rejected: recorded, held back, retried on request."""
from __future__ import annotations

from django.db.models import F
from django.utils import timezone

from . import keycodec
from .models import DeadLetter


def _hash(key) -> str:
    return keycodec.key_hash(tuple(key))


def record(reflection, key: tuple, error: str) -> DeadLetter:
    """Record (or count again) a rejected row of ``reflection``."""
    letter, created = DeadLetter.objects.get_or_create(
        reflection=reflection, key_hash=_hash(key),
        defaults={"key": keycodec.encode_key(key), "error": error},
    )
    if not created:
        DeadLetter.objects.filter(pk=letter.pk).update(
            attempts=F("attempts") + 1, error=error, last_seen=timezone.now(), retry_requested=False)
    return letter


def held_keys(reflection) -> set[str]:
    """Hashes of the keys whose events wait behind a dead letter."""
    return set(DeadLetter.objects.filter(reflection=reflection).values_list("key_hash", flat=True))


def requested(reflection):
    return list(DeadLetter.objects.filter(reflection=reflection, retry_requested=True))


def request_retry(reflection_ids=None) -> int:
    """Ask the worker to retry dead letters (of some reflections, or all); returns how many."""
    letters = DeadLetter.objects.all()
    if reflection_ids:
        letters = letters.filter(reflection_id__in=reflection_ids)
    return letters.update(retry_requested=True)


def resolve(letter: DeadLetter, error: str | None = None):
    """A retry succeeded (the letter is deleted) or failed again (counted)."""
    if error is None:
        letter.delete()
        return
    DeadLetter.objects.filter(pk=letter.pk).update(
        attempts=F("attempts") + 1, error=error, last_seen=timezone.now(), retry_requested=False)
