"""The initial load (and a resync): key-ordered chunks of the source's current rows,
each committed with its checkpoint; the first clears the destination (fan-in: only this
reflection's columns).
"""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .. import keycodec
from ..connections import begin
from .positions import STREAM
from .textpath import TextPathFailed
from .visibility import Position

logger = logging.getLogger("django_pdr.reflect")


class Loading:
    """The initial load and resync.

    A part of ``ReflectionRunner`` (runner.py), whose state it shares."""

    def _load_python(self, src, after):
        """The next chunk as Python rows: (rows read, last key or None at the end, upserts, filtered)."""
        query = self.mapping.select(self.source).order_by(*self.source_key_columns).limit(self.load_chunk)
        if after is not None:
            query = query.where(self.src_dialect.key_after(self.source_key_columns, after))
        rows = [dict(r) for r in src.execute(query).mappings().all()]
        src.rollback()
        keyed = [(tuple(r[n] for n in self.source_key), r) for r in rows]
        upserts, filtered = self._dest_rows(keyed)
        last = keyed[-1][0] if len(rows) >= self.load_chunk else None
        return len(rows), last, upserts, filtered

    def _load_text(self, src, after):
        """The next chunk as text: (rows copied, last key or None at the end, text), or None."""
        columns = self.source_key_columns
        bounds = [self.src_dialect.key_after(columns, after)] if after is not None else []
        upper = src.execute(sa.select(*columns).where(*bounds).order_by(*columns)
                            .offset(self.load_chunk - 1).limit(1)).first()
        src.rollback()
        if upper is not None:
            upper = tuple(upper)
            bounds.append(sa.not_(self.src_dialect.key_after(columns, upper)))
        out = self._copy_out(src, [self._text_rows_query(*bounds)])
        if out is None:
            return None
        return out[0].count, upper, out[0]

    def _load_state(self, state, count, last):
        new_state = dict(state)
        new_state["loaded"] = state.get("loaded", 0) + count
        if last is None:
            return {"phase": STREAM, "pos": state["pos"], "loaded": new_state["loaded"], "inc": self.incarnation}
        new_state["after"] = keycodec.encode_key(last)
        return new_state

    def load_chunk_once(self, src, dst, state: dict, expected: dict | None) -> dict:
        """Copy the next key-ordered chunk of source rows; return the new state."""
        after = keycodec.decode_key(state.get("after"))
        if after is None:
            # A (re)load starts from a clean slate: rows deleted at the source while no
            # checkpoint existed must not survive it.  A table shared with other
            # reflections (fan-in) only loses this reflection's own columns.
            with begin(dst):
                self.checkpoint.fence(dst, expected)
                if self.statement:
                    pass  # a custom statement owns its target: nothing to clear
                elif self.partners:
                    values = {c: None for c in self.mapping.value_columns}
                    if values:
                        dst.execute(sa.update(self.dest).values(**values))
                else:
                    dst.execute(sa.delete(self.dest))
                self.checkpoint.write(dst, state)
            expected = state
        text = self._load_text(src, after) if self._use_text() else None
        if text is not None:
            count, last, rows_text = text
            new_state = self._load_state(state, count, last)
            try:
                self._commit_text(dst, expected, new_state, rows_text, marked=False)
                return new_state
            except TextPathFailed:
                pass  # the same chunk as Python rows, below
        count, last, upserts, filtered = self._load_python(src, after)
        new_state = self._load_state(state, count, last)
        self._commit(dst, expected, new_state, upserts, [], filtered, loading=True)
        if last is None:  # the load is complete: its events follow from the start position
            self._confirm_capture(src, Position.from_json(state["pos"]))
        return new_state
