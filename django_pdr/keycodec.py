"""JSON encoding of key values (checkpoints store the last key of a load chunk)."""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import uuid


def encode(value):
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return {"$d": str(value)}
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$t": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot store a key value of type {type(value).__name__} in a checkpoint")


def decode(value):
    if isinstance(value, dict) and len(value) == 1:
        (tag, text), = value.items()
        if tag == "$d":
            return decimal.Decimal(text)
        if tag == "$dt":
            return dt.datetime.fromisoformat(text)
        if tag == "$date":
            return dt.date.fromisoformat(text)
        if tag == "$t":
            return dt.time.fromisoformat(text)
        if tag == "$u":
            return uuid.UUID(text)
        if tag == "$b":
            return base64.b64decode(text)
    return value


def encode_key(key) -> list | None:
    return None if key is None else [encode(v) for v in key]


def decode_key(data) -> tuple | None:
    return None if data is None else tuple(decode(v) for v in data)


def key_hash(key: tuple) -> str:
    """A fixed-size identity of a source key (dead letters are looked up by it)."""
    return hashlib.sha256(json.dumps(encode_key(key), sort_keys=True).encode()).hexdigest()
