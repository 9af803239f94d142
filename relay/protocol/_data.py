"""Event data <-> bytes: JSON content types carry a decoded JSON value, other types raw bytes."""

from __future__ import annotations

import json
import math
from typing import Any

from relay.protocol._attributes import is_json
from relay.protocol._errors import DecodeError, InvalidAttributeError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def dumps_json(value: Any, *, field: str = "data") -> bytes:
    """Compact strict JSON (no NaN/Infinity) as UTF-8; lone surrogates fall back to \\u escapes."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidAttributeError(
            f"{field} is not JSON-serialisable: {exc}", field=field
        ) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode("ascii")


def loads_json(raw: bytes | str, *, field: str = "data") -> Any:
    """Parse strict JSON (NaN/Infinity rejected); a DecodeError names the field and the position."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise DecodeError(f"{field} is nested too deeply to decode", field=field) from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DecodeError(f"{field} is not valid JSON: {exc}", field=field) from None


def encode_data(data: Any) -> bytes:
    """The bytes that travel for `data`: bytes as is, None as empty, JSON values encoded."""
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    return dumps_json(data)


def decode_data(raw: bytes, datacontenttype: str) -> Any:
    """Decode travelled bytes: JSON types -> Python value (empty -> None), others -> bytes."""
    if not is_json(datacontenttype):
        return raw
    if not raw:
        return None
    return loads_json(raw)
