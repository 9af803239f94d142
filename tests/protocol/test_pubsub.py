"""The Pub/Sub binding: binary and structured round trips, mode detection, data, dataref."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import (
    DataRefError,
    Event,
    LocalBlobStore,
    Message,
    from_binary,
    from_message,
    from_structured,
    to_binary,
    to_structured,
)

from .strategies import events

_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EVENT = Event(
    id="req-1",
    source="//airflow/dags/d/tasks/t",
    type="dev.relay.example.echo",
    data={"hello": "wörld", "n": [1, 2.5, None, True]},
    time=datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC),
    subject="sub",
    dataschema="https://relay.dev/schemas/dev.relay.example.echo.json",
    extensions={"correlationid": "c-1", "replyto": "projects/relay-test/topics/results"},
)


def test_binary_layout() -> None:
    message = to_binary(EVENT)
    assert isinstance(message, Message)
    assert json.loads(message.data) == EVENT.data
    assert message.attributes == {
        "ce-specversion": "1.0",
        "ce-id": "req-1",
        "ce-source": "//airflow/dags/d/tasks/t",
        "ce-type": "dev.relay.example.echo",
        "ce-time": "2026-11-26T12:00:00.123456Z",
        "ce-subject": "sub",
        "ce-dataschema": "https://relay.dev/schemas/dev.relay.example.echo.json",
        "ce-correlationid": "c-1",
        "ce-replyto": "projects/relay-test/topics/results",
        "content-type": "application/json",
    }


def test_structured_layout() -> None:
    message = to_structured(EVENT)
    assert message.attributes == {"content-type": "application/cloudevents+json"}
    body = json.loads(message.data)
    assert body["data"] == EVENT.data
    assert body["id"] == "req-1"
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["correlationid"] == "c-1"
    assert body["time"] == "2026-11-26T12:00:00.123456Z"


def test_structured_binary_data_uses_base64() -> None:
    event = Event("1", "s", "t", data=b"\x00\xffraw", datacontenttype="application/octet-stream")
    body = json.loads(to_structured(event).data)
    assert "data" not in body
    assert base64.b64decode(body["data_base64"]) == b"\x00\xffraw"
    assert from_message(*to_structured(event)) == event


@pytest.mark.parametrize("encode", [to_binary, to_structured])
def test_round_trip_examples(encode: object) -> None:
    message = encode(EVENT)  # type: ignore[operator]
    assert from_message(message.data, message.attributes) == EVENT
    assert from_message(*message) == EVENT


def test_from_binary_and_from_structured_halves() -> None:
    assert from_binary(*to_binary(EVENT)) == EVENT
    assert from_structured(*to_structured(EVENT)) == EVENT


@_FAST
@given(event=events, structured=st.booleans())
def test_round_trip_property(event: Event, structured: bool) -> None:
    message = (to_structured if structured else to_binary)(event)
    decoded = from_message(*message)
    assert decoded == event
    # and the decoded event encodes to the same message
    again = (to_structured if structured else to_binary)(decoded)
    assert again == message


@_FAST
@given(event=events, structured=st.booleans(), threshold=st.sampled_from([0, 8, 64]))
def test_round_trip_property_with_dataref(
    event: Event, structured: bool, threshold: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = LocalBlobStore(tmp_path_factory.getbasetemp() / "blobs")
    encode = to_structured if structured else to_binary
    message = encode(event, blob_store=store, offload_threshold=threshold)
    decoded = from_message(*message)
    if structured:
        offloaded = json.loads(message.data).get("dataref")
    else:
        offloaded = message.attributes.get("ce-dataref")
    if offloaded is None:
        assert decoded == event
    else:
        assert decoded == event.with_extensions(dataref=offloaded)
        assert offloaded.startswith("file://")
    # with an explicit store too
    assert from_message(*message, blob_store=store) == decoded


def test_offload_binary(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = {"blob": "x" * 5000}
    event = dataclasses.replace(EVENT, data=data)
    message = to_binary(event, blob_store=store, offload_threshold=1000)
    assert message.data == b""
    uri = message.attributes["ce-dataref"]
    encoded = json.dumps(data, separators=(",", ":")).encode()
    assert uri == (tmp_path / hashlib.sha256(encoded).hexdigest()).as_uri()
    assert message.attributes["content-type"] == "application/json"
    decoded = from_message(*message)
    assert decoded.data == data
    assert decoded.dataref == uri
    # publish retries are idempotent: same key, same URI
    assert to_binary(event, blob_store=store, offload_threshold=1000) == message
    assert len(list(tmp_path.iterdir())) == 1


def test_offload_replaces_a_stale_dataref(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    event = EVENT.with_extensions(dataref="file:///elsewhere/old")
    message = to_binary(event, blob_store=store, offload_threshold=1)
    assert message.attributes["ce-dataref"].startswith(tmp_path.as_uri())


def test_inline_data_wins_over_dataref() -> None:
    """A message carrying data and a dataref: the data is used and nothing is fetched."""
    event = EVENT.with_extensions(dataref="file:///does/not/exist")
    assert from_message(*to_binary(event)) == event
    assert from_message(*to_structured(event)) == event


def test_user_claim_check_is_resolved(tmp_path: Path) -> None:
    """A producer that uploaded the data itself sends only the dataref."""
    blob = tmp_path / "payload.json"
    blob.write_bytes(b'{"big": true}')
    message = Message(
        b"",
        {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "s",
            "ce-type": "t",
            "ce-dataref": blob.as_uri(),
            "content-type": "application/json",
        },
    )
    assert from_message(*message, blob_store=LocalBlobStore(tmp_path)).data == {"big": True}


def test_arbitrary_local_files_are_not_read_without_a_store(tmp_path: Path) -> None:
    """A message must not make a function read (and echo back) any file it can see."""
    secret = tmp_path / "secret.json"
    secret.write_bytes(b'{"password": 1}')
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "s",
        "ce-type": "t",
        "ce-dataref": secret.as_uri(),
    }
    with pytest.raises(DataRefError) as info:
        from_message(b"", attributes)
    assert "sha256" in str(info.value)
    named = tmp_path / hashlib.sha256(b"{}").hexdigest()
    named.write_bytes(b"{}")
    assert from_message(b"", {**attributes, "ce-dataref": named.as_uri()}).data == {}


def test_real_pubsub_message_attributes() -> None:
    """The client library's attribute map (a protobuf ScalarMap) is accepted as is."""
    from google.pubsub_v1.types import PubsubMessage

    message = to_binary(EVENT)
    proto = PubsubMessage.pb(PubsubMessage(data=message.data, attributes=message.attributes))
    assert from_message(proto.data, proto.attributes) == EVENT


def test_ce_datacontenttype_accepted_when_reading() -> None:
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "s",
        "ce-type": "t",
        "ce-datacontenttype": "text/plain",
    }
    event = from_message(b"hi", attributes)
    assert event.datacontenttype == "text/plain"
    assert event.data == b"hi"
    # content-type wins when both are there
    event = from_message(b"{}", {**attributes, "content-type": "application/json"})
    assert event.data == {}


def test_missing_content_type_means_json() -> None:
    attributes = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
    event = from_message(b'{"a": 1}', attributes)
    assert event.data == {"a": 1}
    assert event.datacontenttype == "application/json"
    assert from_message(b"", attributes).data is None


def test_foreign_attributes_are_ignored() -> None:
    message = to_binary(EVENT)
    attributes = {**message.attributes, "googclient_schemaencoding": "JSON", "origin": "x"}
    assert from_message(message.data, attributes) == EVENT


def test_json_content_types() -> None:
    for content_type in (
        "application/json",
        "application/ld+json",
        "APPLICATION/JSON; charset=utf-8",
    ):
        event = Event("1", "s", "t", data=[1], datacontenttype=content_type)
        assert from_message(*to_binary(event)).data == [1]
    event = Event("1", "s", "t", data=b"[1]", datacontenttype="text/json")
    assert from_message(*to_binary(event)).data == b"[1]"  # text/json is not a JSON type here


def test_pre_encoded_json_bytes_are_sent_verbatim() -> None:
    event = Event("1", "s", "t", data=b'{"a":  1}')
    message = to_binary(event)
    assert message.data == b'{"a":  1}'
    assert from_message(*message).data == {"a": 1}
    assert from_message(*to_structured(event)).data == {"a": 1}


def test_structured_details() -> None:
    body = {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "subject": None,  # null is absent
        "sequence": 42,  # CloudEvents Integer
        "flag": True,  # CloudEvents Boolean
        "data": "plain text",
        "datacontenttype": "text/plain",
    }
    attributes = {"content-type": "application/cloudevents+json; charset=UTF-8"}
    event = from_message(json.dumps(body).encode(), attributes)
    assert event.subject is None
    assert dict(event.extensions) == {"sequence": "42", "flag": "true"}
    assert event.data == b"plain text"
    no_type = {k: v for k, v in body.items() if k not in ("datacontenttype", "data")}
    event = from_message(json.dumps({**no_type, "data": {"x": 1}}).encode(), attributes)
    assert event.datacontenttype == "application/json"
    assert event.data == {"x": 1}
    event = from_message(
        json.dumps({**no_type, "data_base64": base64.b64encode(b'{"y":2}').decode()}).encode(),
        attributes,
    )
    assert event.data == {"y": 2}


def test_events_pickle_and_copy() -> None:
    for event in (EVENT, Event("1", "s", "t", data=b"\x00", datacontenttype="image/png")):
        assert pickle.loads(pickle.dumps(event)) == event
        assert copy.deepcopy(event) == event
        assert copy.copy(event) == event
