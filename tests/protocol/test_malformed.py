"""Malformed input: every case is a clear typed error naming the field, never a crash."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import (
    DataRefError,
    DecodeError,
    InvalidAttributeError,
    LocalBlobStore,
    MissingAttributeError,
    ProtocolError,
    SchemaValidationError,
    default_registry,
    from_binary,
    from_message,
    from_structured,
    new_request,
    to_binary,
    to_structured,
)

REQUEST = new_request(
    "dev.relay.example.csv.profile",
    {"uri": "gs://bucket/data.csv"},
    source="//airflow/dag/task",
    reply_to="projects/relay-test/topics/results",
)
BINARY = to_binary(REQUEST)
STRUCTURED = to_structured(REQUEST)
STRUCTURED_CT = {"content-type": "application/cloudevents+json"}
_INT_KEY: dict[object, object] = {5: "x"}
_INT_KEY.update(BINARY.attributes)


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in BINARY.attributes.items() if k != name}


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type"])
def test_missing_required_attribute_binary(name: str) -> None:
    with pytest.raises(MissingAttributeError) as info:
        from_message(BINARY.data, without(f"ce-{name}"))
    assert info.value.field == name
    assert name in str(info.value)
    assert info.value.event is None


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type"])
def test_missing_required_attribute_structured(name: str) -> None:
    body = json.loads(STRUCTURED.data)
    del body[name]
    with pytest.raises(MissingAttributeError) as info:
        from_message(json.dumps(body).encode(), STRUCTURED_CT)
    assert info.value.field == name
    body[name] = None
    with pytest.raises(MissingAttributeError):
        from_message(json.dumps({**body, name: None}).encode(), STRUCTURED_CT)


@pytest.mark.parametrize(("name", "value"), [("id", ""), ("source", ""), ("specversion", "0.3")])
def test_bad_required_attribute(name: str, value: str) -> None:
    with pytest.raises(InvalidAttributeError) as info:
        from_message(BINARY.data, {**BINARY.attributes, f"ce-{name}": value})
    assert info.value.field == name
    assert info.value.event is None


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("ce-time", "yesterday", "time"),
        ("ce-time", "2026-02-30T00:00:00Z", "time"),
        ("ce-replyto", "my-results-topic", "replyto"),
        ("ce-replyto", "projects/relay-test/topics/goog", "replyto"),
        ("ce-expirytime", "2026-11-26", "expirytime"),
        ("ce-Bad", "x", "Bad"),
        ("ce-waytoolongextensionname", "x", "waytoolongextensionname"),
        ("ce-dash-ed", "x", "dash-ed"),
        ("ce-data", "x", "data"),
        ("ce-subject", "", "subject"),
        ("ce-dataschema", "relative/path", "dataschema"),
    ],
)
def test_bad_optional_attribute_keeps_the_envelope(key: str, value: str, field: str) -> None:
    with pytest.raises(InvalidAttributeError) as info:
        from_message(BINARY.data, {**BINARY.attributes, key: value})
    error = info.value
    assert error.field == field
    assert field in str(error)
    assert error.event is not None
    assert error.event.id == REQUEST.id
    assert error.event.correlationid == REQUEST.correlationid
    assert error.event.data == BINARY.data  # left raw


def test_bad_optional_attribute_structured_keeps_the_envelope() -> None:
    body = {**json.loads(STRUCTURED.data), "time": "not-a-time", "flag": 1.5, "list": [1]}
    with pytest.raises(InvalidAttributeError) as info:
        from_message(json.dumps(body).encode(), STRUCTURED_CT)
    assert info.value.field in {"time", "flag", "list"}
    assert info.value.event is not None
    assert info.value.event.id == REQUEST.id


def test_uppercase_prefix_is_named() -> None:
    attributes = {k.upper() if k == "ce-id" else k: v for k, v in BINARY.attributes.items()}
    with pytest.raises(InvalidAttributeError) as info:
        from_message(BINARY.data, attributes)
    assert info.value.field == "CE-ID"


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"\xff\xfe\x00", b"NaN", b'{"a": Infinity}', b"[1,", b"1e400", b"[-1e999]"],
)
def test_invalid_json_data(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        from_message(data, BINARY.attributes)
    assert info.value.field == "data"
    assert info.value.event is not None
    assert info.value.event.id == REQUEST.id
    assert info.value.event.replyto == REQUEST.replyto
    assert info.value.event.data == data


def test_deeply_nested_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        from_message(b"[" * 100_000 + b"]" * 100_000, BINARY.attributes)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{bad", "event"),
        (b"[1, 2]", "event"),
        (b'"a string"', "event"),
        (b"", "event"),
    ],
)
def test_invalid_structured_body(data: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        from_message(data, STRUCTURED_CT)
    assert info.value.field == field


def test_structured_data_errors_keep_the_envelope() -> None:
    body = json.loads(STRUCTURED.data)
    both = {**body, "data_base64": base64.b64encode(b"{}").decode()}
    cases = [
        (both, "data"),
        ({**{k: v for k, v in body.items() if k != "data"}, "data_base64": "%%%"}, "data_base64"),
        ({**{k: v for k, v in body.items() if k != "data"}, "data_base64": 5}, "data_base64"),
        ({**body, "datacontenttype": "text/plain", "data": {"not": "text"}}, "data"),
        (
            {**{k: v for k, v in body.items() if k != "data"}, "data_base64": "e30K"[:2]},
            "data_base64",
        ),
    ]
    for case, field in cases:
        with pytest.raises(DecodeError) as info:
            from_message(json.dumps(case).encode(), STRUCTURED_CT)
        assert info.value.field == field, case
        assert info.value.event is not None
        assert info.value.event.id == REQUEST.id


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+xml",
        "application/cloudevents-batch+json",
        "application/cloudevents",
    ],
)
def test_unsupported_structured_formats(content_type: str) -> None:
    with pytest.raises(DecodeError) as info:
        from_message(STRUCTURED.data, {"content-type": content_type})
    assert info.value.field == "content-type"


def test_wrong_half() -> None:
    with pytest.raises(DecodeError) as info:
        from_binary(*STRUCTURED)
    assert info.value.field == "content-type"
    with pytest.raises(DecodeError) as info:
        from_structured(*BINARY)
    assert info.value.field == "content-type"


def test_wrong_content_type_for_a_schema() -> None:
    attributes = {**BINARY.attributes, "content-type": "text/csv"}
    assert from_message(b"a,b", attributes).data == b"a,b"  # no registry: fine
    with pytest.raises(DecodeError) as info:
        from_message(b"a,b", attributes, registry=default_registry())
    assert info.value.field == "datacontenttype"
    assert info.value.event is not None
    assert info.value.event.data == b"a,b"


def test_schema_errors_name_the_path() -> None:
    data = json.dumps({"uri": "https://x", "delimiter": ";;"}).encode()
    with pytest.raises(SchemaValidationError) as info:
        from_message(data, BINARY.attributes, registry=default_registry())
    assert info.value.field in ("$.uri", "$.delimiter")
    assert {path for path, _ in info.value.errors} == {"$.uri", "$.delimiter"}
    assert info.value.event is not None
    assert info.value.event.data == json.loads(data)


def test_unreadable_dataref(tmp_path: Path) -> None:
    missing = (tmp_path / ("0" * 64)).as_uri()
    attributes = {**BINARY.attributes, "ce-dataref": missing}
    with pytest.raises(DataRefError) as info:
        from_message(b"", attributes)
    assert info.value.field == "dataref"
    assert info.value.event is not None
    assert info.value.event.dataref == missing
    with pytest.raises(DataRefError):
        from_message(b"", attributes, blob_store=LocalBlobStore(tmp_path))
    body = {**json.loads(STRUCTURED.data), "dataref": missing}
    del body["data"]
    with pytest.raises(DataRefError):
        from_message(json.dumps(body).encode(), STRUCTURED_CT)


def test_dataref_with_tampered_content(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    message = to_binary(REQUEST, blob_store=store, offload_threshold=1)
    blob = next(tmp_path.iterdir())
    blob.write_bytes(b'{"uri": "gs://evil/x"}')
    with pytest.raises(DataRefError) as info:
        from_message(*message)
    assert "sha256" in str(info.value)


@pytest.mark.parametrize("uri", ["http://example.com/blob", "s3://bucket/key", "ftp://x/y"])
def test_dataref_with_unknown_scheme(uri: str) -> None:
    with pytest.raises(DataRefError) as info:
        from_message(b"", {**BINARY.attributes, "ce-dataref": uri})
    assert info.value.field == "dataref"
    assert info.value.event is not None


def test_dataref_outside_the_given_store(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"{}")
    store = LocalBlobStore(tmp_path / "store")
    with pytest.raises(DataRefError) as info:
        from_message(b"", {**BINARY.attributes, "ce-dataref": other.as_uri()}, blob_store=store)
    assert "outside" in str(info.value)


@pytest.mark.parametrize(
    ("data", "attributes"),
    [
        ("text", BINARY.attributes),
        (12, BINARY.attributes),
        (BINARY.data, [("ce-id", "x")]),
        (BINARY.data, {**BINARY.attributes, "ce-id": 5}),
        (BINARY.data, _INT_KEY),
    ],
)
def test_wrong_input_types(data: object, attributes: object) -> None:
    with pytest.raises(ProtocolError):
        from_message(data, attributes)  # type: ignore[arg-type]


def test_none_and_bytes_likes_are_accepted() -> None:
    assert from_message(bytearray(BINARY.data), BINARY.attributes) == REQUEST
    assert from_message(memoryview(BINARY.data), BINARY.attributes) == REQUEST
    with pytest.raises(MissingAttributeError):
        from_message(None, None)


# ------------------------------------------------------------------------------------- fuzzing

_KEYS = st.sampled_from(
    [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-replyto",
        "ce-expirytime",
        "ce-dataref",
        "ce-datacontenttype",
        "content-type",
        "ce-subject",
        "ce-dataschema",
        "ce-correlationid",
        "ce-X",
        "CE-ID",
    ]
) | st.text(max_size=30)
_VALUES = st.sampled_from(
    [
        "1.0",
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "text/plain",
        "2026-11-26T00:00:00Z",
        "projects/relay-test/topics/results",
        "file:///nonexistent/x",
        "gs://",
        "http://x",
        "file://remotehost/x",
        "",
    ]
) | st.text(max_size=40)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_BODIES = st.dictionaries(
    st.sampled_from(
        [
            "specversion",
            "id",
            "source",
            "type",
            "data",
            "data_base64",
            "time",
            "datacontenttype",
            "dataref",
            "replyto",
            "Bad",
            "x",
        ]
    ),
    st.recursive(
        _JSON_SCALARS,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=5,
    )
    | st.sampled_from(["1.0", "a", "application/json", "text/plain", "AAAA", "file:///nope"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=200) | _BODIES.map(lambda b: json.dumps(b).encode()),
    attributes=st.dictionaries(_KEYS, _VALUES, max_size=12),
    base=st.booleans(),
    validate=st.booleans(),
)
def test_from_message_only_raises_protocol_errors(
    data: bytes, attributes: dict[str, str], base: bool, validate: bool
) -> None:
    if base:  # start from a valid envelope so the fuzzing reaches the deeper stages
        attributes = {**BINARY.attributes, **attributes}
    registry = default_registry() if validate else None
    error: ProtocolError | None = None
    try:
        event = from_message(data, attributes, registry=registry)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert str(error)
        assert error.event is None or error.event.id
        return
    # whatever decodes, encodes again
    to_structured(event, offload_threshold=None)
    to_binary(event, offload_threshold=None)


def test_many_bad_attributes_are_linear() -> None:
    """A 10 MB structured body can hold a huge number of members: decoding must not go quadratic."""
    body = {**json.loads(STRUCTURED.data), **{f"Bad{i}": "x" for i in range(50_000)}}
    with pytest.raises(InvalidAttributeError) as info:
        from_message(json.dumps(body).encode(), STRUCTURED_CT)
    assert info.value.field == "Bad0"
    assert info.value.event is not None
    assert info.value.event.data == REQUEST.data
