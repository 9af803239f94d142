"""The CloudEvent: an immutable value, validated at construction, with views of its extensions."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from relay.protocol._attributes import (
    SPECVERSION,
    check_extension_name,
    check_media_type,
    check_string,
    check_time,
    check_topic_path,
    check_uri,
    format_time,
    is_json,
    is_structured,
    parse_time,
)
from relay.protocol._data import dumps_json
from relay.protocol._errors import InvalidAttributeError
from relay.protocol._names import check_correlation_id

RESULT_SUCCEEDED = "dev.relay.result.succeeded"
RESULT_FAILED = "dev.relay.result.failed"
PROGRESS = "dev.relay.progress"
EXAMPLE_ECHO = "dev.relay.example.echo"
EXAMPLE_CSV_PROFILE = "dev.relay.example.csv.profile"


def _check_correlation_id(name: str, value: object) -> str:
    return check_correlation_id(check_string(name, value))


# Extension values with a defined form, checked at construction.
_EXTENSION_CHECKS = {
    "replyto": check_topic_path,
    "dataref": check_uri,
    "correlationid": _check_correlation_id,
    "causationid": check_string,
}


@dataclass(frozen=True, eq=True, repr=False)
class Event:
    """A CloudEvents 1.0 event. `data` is a JSON value when `datacontenttype` is JSON, else bytes.

    Bytes data is sent verbatim whatever the content type (pre-encoded JSON is fine); a str given
    with a non-JSON content type is stored as its UTF-8 bytes. `extensions` are read-only strings.
    """

    id: str
    source: str
    type: str
    data: Any = None
    datacontenttype: str = "application/json"
    time: datetime | None = None
    subject: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    specversion: str = SPECVERSION

    def __post_init__(self) -> None:
        if self.specversion != SPECVERSION:
            raise InvalidAttributeError(
                f"attribute 'specversion' must be {SPECVERSION!r}, got {self.specversion!r}",
                field="specversion",
            )
        check_string("id", self.id)
        check_string("source", self.source)
        check_string("type", self.type)
        check_media_type("datacontenttype", self.datacontenttype)
        if is_structured(self.datacontenttype):
            raise InvalidAttributeError(
                f"datacontenttype {self.datacontenttype!r} is an event format, not a data type",
                field="datacontenttype",
            )
        if self.time is not None:
            check_time("time", self.time)
        if self.subject is not None:
            check_string("subject", self.subject)
        if self.dataschema is not None:
            check_uri("dataschema", self.dataschema)
        if not isinstance(self.extensions, Mapping):
            raise InvalidAttributeError("extensions must be a mapping", field="extensions")
        extensions = dict(self.extensions)
        for name, value in extensions.items():
            check_extension_name(name)
            _EXTENSION_CHECKS.get(name, _check_extension_value)(name, value)
            if name == "expirytime":
                parse_time(name, value)
        object.__setattr__(self, "extensions", MappingProxyType(extensions))
        object.__setattr__(self, "data", _check_data(self.data, self.datacontenttype))

    def __repr__(self) -> str:
        data = self.data
        shown = f"<{len(data)} bytes>" if isinstance(data, bytes) else _short(repr(data))
        return (
            f"Event(id={self.id!r}, source={self.source!r}, type={self.type!r}, "
            f"datacontenttype={self.datacontenttype!r}, extensions={dict(self.extensions)!r}, "
            f"data={shown})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only extensions view does not pickle: rebuild (re-validating) from plain fields.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["extensions"] = dict(self.extensions)
        return (_rebuild, (fields,))

    def with_extensions(self, **extensions: str | None) -> Event:
        """A copy with these extensions set (a value of None removes the extension)."""
        merged = dict(self.extensions)
        for name, value in extensions.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return dataclasses.replace(self, extensions=merged)

    @property
    def correlationid(self) -> str | None:
        """The key a waiting sensor matches results on."""
        return self.extensions.get("correlationid")

    @property
    def causationid(self) -> str | None:
        """In a result: the id of the request that caused it."""
        return self.extensions.get("causationid")

    @property
    def replyto(self) -> str | None:
        """In a request: the topic path results go to."""
        return self.extensions.get("replyto")

    @property
    def traceparent(self) -> str | None:
        """W3C trace context parent (passed through unvalidated, as W3C asks of receivers)."""
        return self.extensions.get("traceparent")

    @property
    def tracestate(self) -> str | None:
        """W3C trace context state."""
        return self.extensions.get("tracestate")

    @property
    def dataref(self) -> str | None:
        """Claim check: the URI of the blob holding the data, when it was offloaded."""
        return self.extensions.get("dataref")

    @property
    def expirytime(self) -> datetime | None:
        """The time after which no one waits for this request (aware datetime)."""
        value = self.extensions.get("expirytime")
        return None if value is None else parse_time("expirytime", value)

    def expired(self, now: datetime | None = None) -> bool:
        """True when the event has an expirytime and it has passed (`now` defaults to the clock)."""
        expiry = self.expirytime
        return expiry is not None and expiry <= (now if now is not None else datetime.now(UTC))


def _rebuild(fields: dict[str, Any]) -> Event:
    return Event(**fields)


def _check_extension_value(name: str, value: object) -> str:
    return check_string(name, value, empty_ok=True)


def _check_data(data: Any, datacontenttype: str) -> Any:
    """Normalise data: bytes-likes to bytes; for non-JSON types text to UTF-8 and None to b""."""
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, bytes):
        return data
    if is_json(datacontenttype):
        if data is not None:
            dumps_json(data)  # raises InvalidAttributeError(field="data") if not JSON-serialisable
        return data
    if data is None:
        return b""  # non-JSON data is always bytes; absent data travels as empty bytes
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidAttributeError(f"data is not valid text: {exc}", field="data") from None
    raise InvalidAttributeError(
        f"data for non-JSON datacontenttype {datacontenttype!r} must be bytes or str, "
        f"got {type(data).__name__}",
        field="data",
    )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def replace_data(event: Event, data: Any) -> Event:
    """A copy of `event` with already-validated data: nothing is validated or encoded again
    (the other fields were checked when `event` was built)."""
    clone = object.__new__(Event)
    clone.__dict__.update(event.__dict__, data=data)
    return clone


def format_expiry(value: datetime) -> str:
    """RFC 3339 text for an expiry datetime (must be aware)."""
    return format_time(check_time("expirytime", value))
