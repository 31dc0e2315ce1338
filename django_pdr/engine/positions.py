"""Where a pass starts, and whether it may continue: the destination's checkpoint
against the source's capture registry (its incarnation and purged floor).  A checkpoint
of another incarnation, or one below the purged floor, is never continued.
"""
from __future__ import annotations

import logging

from .. import conf
from ..capture import inspect, registration
from ..errors import CaptureMissing, ConfigurationError
from .visibility import Position

logger = logging.getLogger("django_pdr.reflect")

LOAD, STREAM = "load", "stream"


class CaptureChanged(Exception):
    """The event table was installed anew, or events this reflection has not applied were
    purged, while a batch was read: the pass starts again (and resyncs)."""


class Reconciling:
    """The checkpoint read against the capture registry: where a pass starts.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    def read_state(self, dst) -> dict | None:
        return self.checkpoint.read(dst)

    def _check_capture(self, src):
        """The registry row of the event table, after checking that every change of the
        source table is being captured; CaptureMissing (an error) when not."""
        state = inspect(src, self.capture)
        src.rollback()
        registered, missing = state.registered, state.missing
        if missing is None and registered is None:
            missing = f"the capture of {self.capture.source.fullname!r} is not registered (it was removed)"
        if missing:
            raise CaptureMissing(
                f"Capture missing on {self.source_table}: {missing}. Changes made since then are not "
                f"captured: install the capture again (admin: Install capture, SourceTable.install()); "
                f"this reflection then reloads the destination.")
        return registered

    def _reconcile(self, state: dict | None, registered) -> tuple[dict, bool]:
        """(state to continue from, whether it is a fresh start).  A checkpoint of another
        incarnation of the event table, or one that has not applied events since purged
        (a destination restored from a backup), is never continued: resync (or, with
        PDR["ON_CAPTURE_RESET"] = "error", stop with an error)."""
        r = self.reflection
        self.incarnation = registered.incarnation
        reason = None
        if state is None or r.resync_requested:
            if r.resync_requested:
                type(r).objects.filter(pk=r.pk).update(resync_requested=False)
                r.resync_requested = False
            return self.start_state(registered), True
        if state.get("inc", registered.incarnation) != registered.incarnation:
            reason = (f"the capture on {self.source_table} was installed anew since the checkpoint was written "
                      f"(its event ids started again)")
        elif Position.from_json(state["pos"]).horizon < registered.purged_through:
            reason = (f"events up to id {registered.purged_through} were purged from {self.source_table}, but "
                      f"the destination's checkpoint has not applied those after id "
                      f"{Position.from_json(state['pos']).horizon} (was the destination restored from a backup?)")
        if reason is None:
            # as stored (the fence compares it); a checkpoint of an earlier release, without
            # an incarnation, adopts the current one with its next write
            return state, False
        if conf.get("ON_CAPTURE_RESET") == "error":
            raise ConfigurationError(
                f"{r}: {reason}. The destination may miss changes: request a resync (admin: Resync) to "
                f"reload it.")
        logger.warning("%s: %s: resyncing the destination", r, reason)
        return self.start_state(registered), True

    def _confirm_capture(self, src, position: Position, seen: tuple | None = None):
        """After reading events from ``position``: the event table is still the incarnation
        this pass started with, and nothing unread was purged meanwhile (a purge moves the
        registry in its own transaction, so a read that missed purged events is followed
        by this read of the registry seeing it).  ``seen``: (incarnation, purged floor)
        as the read's last statement saw them along with its events (EventReader.confirming):
        one snapshot, so a purge that removed events it should have found shows in them,
        and no read of the registry of its own is needed."""
        if seen is not None:
            incarnation, floor = seen
        else:
            registered = registration(src, self.capture)
            src.rollback()
            if registered is None:
                raise CaptureChanged()
            incarnation, floor = registered.incarnation, registered.purged_through
        if incarnation != self.incarnation or floor > position.horizon:
            raise CaptureChanged()

    def start_state(self, registered) -> dict:
        """A (re)load from the start, reading events after the purged floor."""
        position = self.reader.start_position(registered.purged_through)
        return {"phase": LOAD, "after": None, "pos": position.to_json(), "loaded": 0, "inc": registered.incarnation}
