"""Python-value conversions between engines, chosen by the destination column type.

Rows are read with the source column types (so values are Python objects:
Decimal, datetime, UUID, dict...) and written with the destination types.
Where two engines represent a value differently, the converter for the
destination column makes the documented conversion (``docs/dialects.md``).
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid

import sqlalchemy as sa

from .dialects.base import JSONText


def _naive_utc(value):
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        return _naive_utc(dt.datetime.fromisoformat(value))
    return value


def _aware_utc(value):
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _date(value):
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    return value


def _time(value):
    if isinstance(value, dt.timedelta):  # MySQL TIME read without a type
        seconds = value.total_seconds()
        return (dt.datetime.min + dt.timedelta(seconds=seconds)).time()
    if isinstance(value, str):
        return dt.time.fromisoformat(value)
    if isinstance(value, dt.time) and value.tzinfo is not None:
        return value.replace(tzinfo=None)
    return value


def _json(value):
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value  # not JSON: let the destination reject it
    return value


def _text(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", errors="surrogateescape")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (int, float, decimal.Decimal, bool)) and not isinstance(value, str):
        return str(value)
    return value


def _uuid(value):
    if isinstance(value, str):
        return uuid.UUID(value)
    if isinstance(value, (bytes, memoryview)) and len(bytes(value)) == 16:
        return uuid.UUID(bytes=bytes(value))
    return value


def _bool(value):
    if isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool):
        return bool(value)
    return value


def _bytes(value):
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _decimal(value):
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    return value


def _integer(value):
    if isinstance(value, bool):
        return int(value)
    return value


def _json_text(value):
    """The JSON text of a value for a JSON column written as text (``JSONText``)."""
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # not JSON: refused there
    return json.dumps(value, ensure_ascii=False)


def converter_for(type_):
    """A function converting a Python value for a destination column of ``type_``, or None."""
    if isinstance(type_, JSONText):
        return _json_text
    if isinstance(type_, sa.JSON):
        return _json
    if isinstance(type_, sa.Uuid) and getattr(type_, "as_uuid", True):
        return _uuid
    if isinstance(type_, sa.DateTime):
        return _aware_utc if type_.timezone else _naive_utc
    if isinstance(type_, sa.Date):
        return _date
    if isinstance(type_, sa.Time):
        return _time
    if isinstance(type_, sa.Boolean):
        return _bool
    if isinstance(type_, sa.LargeBinary):
        return _bytes
    if isinstance(type_, sa.Float):
        return None
    if isinstance(type_, sa.Numeric):
        return _decimal
    if isinstance(type_, sa.Integer):
        return _integer
    if isinstance(type_, (sa.String, sa.Text)):
        return _text
    return None


#: Value types each converter returns unchanged (checked by exact type, before calling it).
_UNCHANGED = {_uuid: {uuid.UUID}, _date: {dt.date}, _bool: {bool}, _bytes: {bytes}, _integer: {int},
              _decimal: {decimal.Decimal, int}, _text: {str}, _json_text: {str}}


def row_converter(table: sa.Table, names: list[str]):
    """A function mapping a dict of values to the types of ``table``'s columns."""
    converters = [(name, converter_for(table.c[name].type)) for name in names]
    active = [(n, f, _UNCHANGED.get(f, ())) for n, f in converters if f is not None]

    def convert(row: dict) -> dict:
        for name, func, unchanged in active:
            value = row.get(name)
            if value is not None and type(value) not in unchanged:
                row[name] = func(value)
        return row

    return convert
