"""Forms of CloudEvents attribute values: names, RFC 3339 times, media types, topic paths, URIs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from relay.protocol._errors import InvalidAttributeError
from relay.protocol._names import PROJECT_RULE, RESOURCE_RULE, is_topic_path

SPECVERSION = "1.0"
# Context attributes of CloudEvents 1.0 itself; everything else is an extension.
CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
)
# Names that can never be extensions: the core attributes plus the data members of the JSON format.
RESERVED_NAMES = CORE_ATTRIBUTES | {"data"}

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;.*)?", re.DOTALL)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S*")


def check_extension_name(name: object) -> str:
    """Return `name` if it is a valid extension name: 1-20 lowercase letters/digits, not core."""
    if not isinstance(name, str) or not _EXTENSION_NAME.fullmatch(name):
        raise InvalidAttributeError(
            f"invalid CloudEvents extension name {name!r}: "
            "must be 1-20 lowercase letters or digits",
            field=str(name),
        )
    if name in RESERVED_NAMES:
        raise InvalidAttributeError(
            f"{name!r} is a core CloudEvents attribute, not an extension", field=name
        )
    return name


def check_string(name: str, value: object, *, empty_ok: bool = False) -> str:
    """`value` if it is a str Pub/Sub can carry (valid UTF-8), non-empty unless allowed."""
    if not isinstance(value, str):
        raise InvalidAttributeError(
            f"attribute {name!r} must be a string, got {type(value).__name__}", field=name
        )
    if not value and not empty_ok:
        raise InvalidAttributeError(f"attribute {name!r} must not be empty", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidAttributeError(
            f"attribute {name!r} is not valid Unicode text: {exc.reason}", field=name
        ) from None
    return value


def parse_time(name: str, value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime (leap second 60 read as 59.999999)."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidAttributeError(
            f"attribute {name!r} is not an RFC 3339 timestamp: {value!r}", field=name
        )
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if second == 60:  # RFC 3339 allows leap seconds, datetime does not
        second, micro = 59, 999_999
    try:
        tz: timezone
        if offset in ("Z", "z"):
            tz = UTC
        else:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise InvalidAttributeError(
            f"attribute {name!r} is not a valid RFC 3339 timestamp: {value!r} ({exc})", field=name
        ) from None


def check_time(name: str, value: object) -> datetime:
    """Return `value` if it is an aware datetime that RFC 3339 can express."""
    if not isinstance(value, datetime):
        raise InvalidAttributeError(
            f"attribute {name!r} must be a datetime, got {type(value).__name__}", field=name
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidAttributeError(
            f"attribute {name!r} must be timezone-aware (RFC 3339 needs an offset)", field=name
        )
    try:
        format_time(value)
    except (OverflowError, ValueError) as exc:
        raise InvalidAttributeError(
            f"attribute {name!r} cannot be expressed in RFC 3339: {exc}", field=name
        ) from None
    return value


def format_time(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC (`...Z`)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_topic_path(name: str, value: object) -> str:
    """Return `value` if it is a full Pub/Sub topic name `projects/<project>/topics/<topic>`."""
    text = check_string(name, value)
    if not is_topic_path(text):
        raise InvalidAttributeError(
            f"attribute {name!r} must be a Pub/Sub topic path 'projects/<project>/topics/<topic>' "
            f"(project id: {PROJECT_RULE}; topic: {RESOURCE_RULE}), got {text!r}",
            field=name,
        )
    return text


def check_media_type(name: str, value: object) -> str:
    """Return `value` if it looks like a media type `type/subtype[; params]`."""
    text = check_string(name, value)
    if not _MEDIA_TYPE.fullmatch(text):
        raise InvalidAttributeError(
            f"attribute {name!r} is not a media type (type/subtype): {text!r}", field=name
        )
    return text


def check_uri(name: str, value: object) -> str:
    """Return `value` if it is an absolute URI (`scheme:...`, no whitespace)."""
    text = check_string(name, value)
    if not _URI.fullmatch(text):
        raise InvalidAttributeError(
            f"attribute {name!r} is not an absolute URI: {text!r}", field=name
        )
    return text


def media_type(content_type: str) -> str:
    """The bare, lowercased `type/subtype` of a content type (parameters dropped)."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """True for JSON content types: application/json and anything `+json`."""
    if content_type is None:
        return True
    bare = media_type(content_type)
    return bare == "application/json" or bare.endswith("+json")


def is_structured(content_type: str | None) -> bool:
    """True when a message content type marks structured mode (`application/cloudevents...`)."""
    return content_type is not None and content_type.strip().lower().startswith(
        "application/cloudevents"
    )
