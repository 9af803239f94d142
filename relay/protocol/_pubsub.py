"""Google's CloudEvents Pub/Sub protocol binding: events to and from messages in both modes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from relay.protocol._attributes import (
    CORE_ATTRIBUTES,
    SPECVERSION,
    format_time,
    is_json,
    is_structured,
    media_type,
    parse_time,
)
from relay.protocol._blobs import BlobStore, blob_store_for
from relay.protocol._data import decode_data, dumps_json, encode_data, loads_json
from relay.protocol._errors import (
    DataRefError,
    DataRefRefusedError,
    DecodeError,
    InvalidAttributeError,
    LimitError,
    MissingAttributeError,
    ProtocolError,
)
from relay.protocol._event import Event, replace_data
from relay.protocol._limits import DEFAULT_OFFLOAD_THRESHOLD, check_attributes, check_message
from relay.protocol._names import ATTRIBUTE_PREFIX
from relay.protocol._schemas import SchemaRegistry

CONTENT_TYPE = "content-type"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_REQUIRED = ("specversion", "id", "source", "type")
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


class Message(NamedTuple):
    """The neutral Pub/Sub message shape: data bytes and string attributes."""

    data: bytes
    attributes: dict[str, str]


# ------------------------------------------------------------------------------------------- encode


def to_binary(
    event: Event,
    *,
    blob_store: BlobStore | None = None,
    offload_threshold: int | None = DEFAULT_OFFLOAD_THRESHOLD,
    registry: SchemaRegistry | None = None,
) -> Message:
    """Binary mode: data is the encoded data, attributes `ce-<name>`, datacontenttype content-type.

    Every limit is checked first. Data over `offload_threshold` bytes (None: never offload) goes to
    `blob_store` under its sha256 and the message carries `ce-dataref` with empty data.
    """
    if registry is not None:
        _validate(registry, event)
    strings = _attribute_strings(event)
    attributes = {ATTRIBUTE_PREFIX + name: value for name, value in strings.items()}
    attributes[CONTENT_TYPE] = event.datacontenttype
    data = encode_data(event.data)
    if offload_threshold is not None and len(data) > offload_threshold:
        attributes.pop(ATTRIBUTE_PREFIX + "dataref", None)
        check_attributes(attributes, reserve=1)
        attributes[ATTRIBUTE_PREFIX + "dataref"] = _offload(data, blob_store, offload_threshold)
        data = b""
    check_message(data, attributes)
    return Message(data, attributes)


def to_structured(
    event: Event,
    *,
    blob_store: BlobStore | None = None,
    offload_threshold: int | None = DEFAULT_OFFLOAD_THRESHOLD,
    registry: SchemaRegistry | None = None,
) -> Message:
    """Structured mode: `content-type: application/cloudevents+json`, the event as JSON in data.

    JSON data travels as `data`, bytes as `data_base64`; offloading works as in `to_binary`.
    """
    if registry is not None:
        _validate(registry, event)
    body: dict[str, Any] = dict(_attribute_strings(event))
    body["datacontenttype"] = event.datacontenttype
    encoded = encode_data(event.data)
    if offload_threshold is not None and len(encoded) > offload_threshold:
        body["dataref"] = _offload(encoded, blob_store, offload_threshold)
    elif event.data is not None:
        if isinstance(event.data, bytes):
            body["data_base64"] = base64.b64encode(event.data).decode("ascii")
        else:
            body["data"] = event.data
    attributes = {CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}
    data = dumps_json(body, field="event")
    check_message(data, attributes)
    return Message(data, attributes)


def _attribute_strings(event: Event) -> dict[str, str]:
    """Every context attribute of `event` in its string form (datacontenttype excluded)."""
    out = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    if event.time is not None:
        out["time"] = format_time(event.time)
    if event.subject is not None:
        out["subject"] = event.subject
    if event.dataschema is not None:
        out["dataschema"] = event.dataschema
    out.update(event.extensions)
    return out


def _offload(data: bytes, blob_store: BlobStore | None, threshold: int) -> str:
    if blob_store is None:
        raise LimitError(
            f"data is {len(data)} bytes, over the offload threshold of {threshold} bytes, "
            "and no blob store was given to offload it to",
            field="data",
            limit=threshold,
            actual=len(data),
        )
    try:
        return blob_store.put(hashlib.sha256(data).hexdigest(), data)
    except ProtocolError:
        raise
    except Exception as exc:
        raise DataRefError(
            f"cannot offload data to {blob_store!r}: {exc}", field="dataref"
        ) from exc


# ------------------------------------------------------------------------------------------- decode


def from_message(
    data: bytes | bytearray | memoryview | None,
    attributes: Mapping[str, str] | None,
    *,
    registry: SchemaRegistry | None = None,
    blob_store: BlobStore | None = None,
    check_envelope: Callable[[Event], object] | None = None,
) -> Event:
    """Decode a message in either mode (structured if content-type is application/cloudevents*).

    `check_envelope` sees the envelope before its data is read or decoded (a `dataref` resolved),
    and may raise to refuse the message there.
    """
    raw, attrs = _check_input(data, attributes)
    if is_structured(attrs.get(CONTENT_TYPE)):
        return _from_structured(
            raw, attrs, registry=registry, blob_store=blob_store, check_envelope=check_envelope
        )
    return _from_binary(
        raw, attrs, registry=registry, blob_store=blob_store, check_envelope=check_envelope
    )


def from_binary(
    data: bytes | bytearray | memoryview | None,
    attributes: Mapping[str, str] | None,
    *,
    registry: SchemaRegistry | None = None,
    blob_store: BlobStore | None = None,
) -> Event:
    """Decode a binary-mode message (`ce-*` attributes, data = event data)."""
    raw, attrs = _check_input(data, attributes)
    return _from_binary(raw, attrs, registry=registry, blob_store=blob_store)


def from_structured(
    data: bytes | bytearray | memoryview | None,
    attributes: Mapping[str, str] | None,
    *,
    registry: SchemaRegistry | None = None,
    blob_store: BlobStore | None = None,
) -> Event:
    """Decode a structured-mode message (the whole event as JSON in data)."""
    raw, attrs = _check_input(data, attributes)
    return _from_structured(raw, attrs, registry=registry, blob_store=blob_store)


def _check_input(data: object, attributes: object) -> tuple[bytes, dict[str, str]]:
    if data is None:
        data = b""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"message data must be bytes, got {type(data).__name__}", field="data")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, Mapping):
        raise InvalidAttributeError(
            f"message attributes must be a mapping, got {type(attributes).__name__}",
            field="attributes",
        )
    attrs: dict[str, str] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidAttributeError(
                f"message attribute {key!r} must map a str to a str", field=str(key)
            )
        attrs[key] = value
    return bytes(data), attrs


def _from_binary(
    raw: bytes,
    attrs: dict[str, str],
    *,
    registry: SchemaRegistry | None,
    blob_store: BlobStore | None,
    check_envelope: Callable[[Event], object] | None = None,
) -> Event:
    content_type = attrs.get(CONTENT_TYPE, attrs.get(ATTRIBUTE_PREFIX + "datacontenttype"))
    if is_structured(content_type):
        raise DecodeError(
            f"content-type {content_type!r} marks a structured-mode message, not binary mode",
            field=CONTENT_TYPE,
        )
    fields: dict[str, object] = {}
    for key, value in attrs.items():
        if key[:3].lower() != ATTRIBUTE_PREFIX:
            continue  # not a CloudEvents attribute (e.g. a publisher's own attribute)
        if not key.startswith(ATTRIBUTE_PREFIX):
            raise InvalidAttributeError(
                f"attribute {key!r}: the 'ce-' prefix and CloudEvents names are lowercase",
                field=key,
            )
        name = key[len(ATTRIBUTE_PREFIX) :]
        if name != "datacontenttype":
            fields[name] = value
    if content_type is not None:
        fields["datacontenttype"] = content_type
    envelope = _envelope(fields, raw)
    if check_envelope is not None:
        check_envelope(envelope)
    if not raw and envelope.dataref is not None:
        raw = _resolve(envelope, blob_store)
    return _finish(envelope, raw, registry)


def _from_structured(
    raw: bytes,
    attrs: dict[str, str],
    *,
    registry: SchemaRegistry | None,
    blob_store: BlobStore | None,
    check_envelope: Callable[[Event], object] | None = None,
) -> Event:
    content_type = attrs.get(CONTENT_TYPE)
    bare = media_type(content_type) if content_type is not None else None
    if bare != STRUCTURED_CONTENT_TYPE:
        problem = (
            "batch mode is not supported"
            if bare is not None and bare.startswith("application/cloudevents-batch")
            else "only application/cloudevents+json is supported"
        )
        raise DecodeError(
            f"not a structured-mode JSON message (content-type {content_type!r}): {problem}",
            field=CONTENT_TYPE,
        )
    body = loads_json(raw, field="event")
    if not isinstance(body, dict):
        raise DecodeError(
            f"a structured-mode event must be a JSON object, got {type(body).__name__}",
            field="event",
        )
    fields: dict[str, object] = {}
    for name, value in body.items():
        if name in ("data", "data_base64") or value is None:
            continue  # null attributes are absent
        if name in CORE_ATTRIBUTES:
            fields[name] = value
        elif isinstance(value, bool):
            fields[name] = "true" if value else "false"  # CloudEvents canonical string forms
        elif isinstance(value, int):
            fields[name] = str(value)
        else:
            fields[name] = value  # rejected below if not a string
    try:
        envelope = _envelope(fields, None)
    except ProtocolError as exc:
        if exc.event is not None and is_json(exc.event.datacontenttype) and "data" in body:
            exc.event = replace_data(exc.event, body["data"])  # already decoded JSON: keep it
        raise
    if check_envelope is not None:
        check_envelope(envelope)
    has_data, has_base64 = body.get("data") is not None, body.get("data_base64") is not None
    if has_data and has_base64:
        raise DecodeError("event has both 'data' and 'data_base64'", field="data", event=envelope)
    content_type_data = envelope.datacontenttype
    if has_base64:
        encoded = body["data_base64"]
        try:
            if not isinstance(encoded, str):
                raise ValueError("not a string")
            raw_data = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise DecodeError(
                f"'data_base64' is not valid base64: {exc}", field="data_base64", event=envelope
            ) from None
        return _finish(envelope, raw_data, registry)
    if has_data:
        value = body["data"]
        if is_json(content_type_data):
            return _checked(replace_data(envelope, value), registry)
        if not isinstance(value, str):
            raise DecodeError(
                f"'data' for non-JSON datacontenttype {content_type_data!r} must be a string "
                "(binary data travels as 'data_base64')",
                field="data",
                event=envelope,
            )
        return _checked(replace_data(envelope, value.encode("utf-8", "surrogatepass")), registry)
    if envelope.dataref is not None:
        return _finish(envelope, _resolve(envelope, blob_store), registry)
    return _finish(envelope, b"", registry)


def _envelope(fields: dict[str, object], raw: bytes | None) -> Event:
    """Build the event from attribute values, data left raw; raise the first problem with envelope.

    A bad optional attribute is dropped to build the envelope attached to the error, so a function
    can still answer a request whose `time` (say) is malformed; bad required ones leave no envelope.
    """
    for name in _REQUIRED:
        if fields.get(name) is None:
            raise MissingAttributeError(f"required attribute {name!r} is missing", field=name)
    if fields["specversion"] != SPECVERSION:
        raise InvalidAttributeError(
            f"attribute 'specversion' must be {SPECVERSION!r}, got {fields['specversion']!r}",
            field="specversion",
        )
    try:  # the common case: every attribute is fine, one construction
        return _construct(fields, raw)
    except ProtocolError:
        pass
    required = {name: fields[name] for name in _REQUIRED}
    _construct(required, None)  # a bad required attribute leaves no envelope
    good: dict[str, object] = {}
    first: ProtocolError | None = None
    for name, value in fields.items():
        if name in required:
            continue
        try:  # each optional attribute on its own: linear in the number of attributes
            _construct({**required, name: value}, None)
        except ProtocolError as exc:
            first = first or exc
            continue
        good[name] = value
    event = _construct({**required, **good}, raw)
    if first is not None:
        first.event = event
        raise first
    return event


def _construct(fields: dict[str, object], raw: bytes | None) -> Event:
    core: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    for name, value in fields.items():
        if name in CORE_ATTRIBUTES:
            core[name] = value
        else:
            extensions[name] = value
    time = core.pop("time", None)
    if time is not None:
        if not isinstance(time, str):
            raise InvalidAttributeError("attribute 'time' must be a string", field="time")
        core["time"] = parse_time("time", time)
    core.setdefault("datacontenttype", "application/json")
    return Event(data=raw, extensions=extensions, **core)


def _resolve(envelope: Event, blob_store: BlobStore | None) -> bytes:
    uri = envelope.dataref
    assert uri is not None
    name = urlsplit(uri).path.rsplit("/", 1)[-1]
    content_addressed = _SHA256_NAME.fullmatch(name) is not None
    if blob_store is None and uri.startswith("file:") and not content_addressed:
        # Without a configured store, a message must not make us read arbitrary local files.
        raise DataRefRefusedError(
            f"dataref {uri!r}: a file:// blob read without a configured blob store must be named "
            "by the sha256 of its content",
            field="dataref",
            event=envelope,
        )
    try:
        store = blob_store if blob_store is not None else blob_store_for(uri)
        data = store.get(uri)
    except ProtocolError as exc:
        exc.event = envelope
        raise
    except Exception as exc:
        raise DataRefError(
            f"cannot read dataref {uri!r}: {exc}", field="dataref", event=envelope
        ) from exc
    if not isinstance(data, bytes):
        raise DataRefError(
            f"blob store returned {type(data).__name__}, not bytes", field="dataref", event=envelope
        )
    if content_addressed and hashlib.sha256(data).hexdigest() != name:
        raise DataRefRefusedError(
            f"dataref {uri!r}: content does not match its sha256 name",
            field="dataref",
            event=envelope,
        )
    return data


def _finish(envelope: Event, raw: bytes, registry: SchemaRegistry | None) -> Event:
    try:
        data = decode_data(raw, envelope.datacontenttype)
    except ProtocolError as exc:
        exc.event = replace_data(envelope, raw)
        raise
    return _checked(replace_data(envelope, data), registry)


def _checked(event: Event, registry: SchemaRegistry | None) -> Event:
    if registry is not None:
        try:
            _validate(registry, event)
        except ProtocolError as exc:
            exc.event = event
            raise
    return event


def _validate(registry: SchemaRegistry, event: Event) -> None:
    """Validate event data against its type's schema (which requires JSON data)."""
    if event.type not in registry:
        return
    data = event.data
    if isinstance(data, bytes):
        if not is_json(event.datacontenttype):
            raise DecodeError(
                f"type {event.type!r} has a JSON schema but datacontenttype is "
                f"{event.datacontenttype!r}",
                field="datacontenttype",
            )
        data = loads_json(data) if data else None
    registry.validate(event.type, data)
