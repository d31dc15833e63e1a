"""Opaque keyset cursors: the sort key of the last row seen, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from papo.errors import BadRequest

# What a cursor's timestamp may be: nothing papo stores is outside it, and PostgreSQL, the driver
# and papo_activity_minute() handle everything inside it.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def encode_cursor(*values: Any) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, uuid.UUID):
            return str(value)
        return value

    raw = json.dumps([plain(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, *kinds: type) -> list[Any]:
    """Decode a cursor whose parts have the given types (datetime, uuid.UUID, float, str; object: as is)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("wrong arity")
        decoded: list[Any] = []
        for kind, value in zip(kinds, values, strict=True):
            if kind in (datetime, uuid.UUID) and not isinstance(value, str):
                raise ValueError("not a string")
            if kind is datetime:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError("naive timestamp")
                if not EARLIEST <= parsed < LATEST:  # the driver sends the extremes as ±infinity
                    raise ValueError("timestamp out of range")
                decoded.append(parsed)
            elif kind is uuid.UUID:
                decoded.append(uuid.UUID(value))
            elif kind is object:
                decoded.append(value)
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError("not a number")
                decoded.append(float(value))
            else:
                decoded.append(kind(value))
        return decoded
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("invalid cursor; use the cursor from a previous page unchanged") from exc
