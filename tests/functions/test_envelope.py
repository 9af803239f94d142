"""Every way a request arrives is unwrapped into the same Pub/Sub message (_envelope)."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.http import CloudEvent

from relay.functions._envelope import MESSAGE_PUBLISHED, from_cloud_event, from_http
from relay.functions._errors import Unanswerable
from relay.protocol import from_message, new_request, to_binary, to_structured

REQUEST = new_request(
    "dev.relay.example.echo",
    {"text": "hé"},
    source="/tests",
    reply_to="projects/relay-test/topics/results",
)
BINARY = to_binary(REQUEST)


def _wrapped(attempt: int | None = 3) -> dict[str, object]:
    body: dict[str, object] = {
        "message": {
            "data": base64.b64encode(BINARY.data).decode(),
            "attributes": BINARY.attributes,
            "messageId": "m-1",
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/relay-test/subscriptions/s",
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return body


def test_push_wrapper_keeps_subscription_and_attempt() -> None:
    delivery = from_http({"content-type": "application/json"}, json.dumps(_wrapped()).encode())
    assert delivery.route == "push"
    assert delivery.message == BINARY
    assert (delivery.message_id, delivery.delivery_attempt) == ("m-1", 3)
    assert delivery.subscription == "projects/relay-test/subscriptions/s"


def test_eventarc_binary_and_structured() -> None:
    body = _wrapped(attempt=None)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "//pubsub.googleapis.com/projects/relay-test/topics/t",
        "ce-type": MESSAGE_PUBLISHED,
        "content-type": "application/json",
    }
    delivery = from_http(headers, json.dumps(body).encode())
    assert (delivery.route, delivery.message, delivery.delivery_attempt) == (
        "eventarc",
        BINARY,
        None,
    )
    structured = {"specversion": "1.0", "id": "e-1", "source": "s", "type": MESSAGE_PUBLISHED}
    structured["data"] = body  # type: ignore[assignment]
    delivery = from_http(
        {"content-type": "application/cloudevents+json"}, json.dumps(structured).encode()
    )
    assert delivery.message == BINARY


def test_direct_http_binary_takes_header_values_verbatim() -> None:
    headers = {k: v for k, v in BINARY.attributes.items()}
    headers["ce-replyto"] = "projects/relay-test/topics/batch%2F42"  # % is allowed in topic ids
    delivery = from_http(headers, BINARY.data)
    assert delivery.route == "http-binary"
    assert delivery.message.attributes["ce-replyto"] == "projects/relay-test/topics/batch%2F42"
    assert from_message(*delivery.message).data == {"text": "hé"}


def test_direct_http_structured() -> None:
    message = to_structured(REQUEST)
    delivery = from_http({"content-type": "application/cloudevents+json"}, message.data)
    assert from_message(*delivery.message) == REQUEST


def test_no_wrapper_with_metadata_reads_headers() -> None:
    headers = dict(BINARY.attributes)
    headers.update(
        {
            "x-goog-pubsub-message-id": "m-9",
            "x-goog-pubsub-subscription-name": "projects/relay-test/subscriptions/raw",
            "x-goog-pubsub-delivery-attempt": "2",
            "user-agent": "push",
            "custom": "kept",
        }
    )
    delivery = from_http(headers, BINARY.data)
    assert delivery.route == "push-no-wrapper"
    assert (delivery.message_id, delivery.delivery_attempt) == ("m-9", 2)
    assert delivery.message.attributes["custom"] == "kept"
    assert "user-agent" not in delivery.message.attributes
    assert from_message(*delivery.message).data == {"text": "hé"}


def test_no_wrapper_structured_without_metadata() -> None:
    delivery = from_http({"content-type": "application/octet-stream"}, to_structured(REQUEST).data)
    assert from_message(*delivery.message) == REQUEST


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b""),
        ({"content-type": "text/plain"}, b"garbage \x00\xff"),
        ({"content-type": "application/json"}, b"{not json"),
        ({"content-type": "application/json"}, b"[1, 2]"),
        ({"content-type": "application/json"}, b'{"message": {"data": "!!notbase64"}}'),
        ({"content-type": "application/json"}, b'{"message": {"data": "", "attributes": [1]}}'),
        ({"content-type": "application/json"}, b'{"message": {"data": 5}}'),
        ({"ce-specversion": "1.0", "ce-type": MESSAGE_PUBLISHED}, b"not json"),
        ({"content-type": "application/cloudevents+json"}, b"\xff\xfe"),
    ],
)
def test_garbage_is_unanswerable(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(Unanswerable):
        from_http(headers, body)


def test_unanswerable_keeps_the_message_id() -> None:
    body = b'{"message": {"data": "%%%", "messageId": "m-7"}}'
    with pytest.raises(Unanswerable) as caught:
        from_http({"content-type": "application/json"}, body)
    assert caught.value.message_id == "m-7"


def test_from_cloud_event_request_and_message_published() -> None:
    event = CloudEvent(
        {
            "id": REQUEST.id,
            "source": REQUEST.source,
            "type": REQUEST.type,
            "correlationid": REQUEST.id,
            "replyto": "projects/relay-test/topics/results",
            "datacontenttype": "application/json",
        },
        {"text": "x"},
    )
    delivery = from_cloud_event(event.get_attributes(), event.get_data())
    decoded = from_message(*delivery.message)
    assert (decoded.id, decoded.data, decoded.replyto) == (
        REQUEST.id,
        {"text": "x"},
        REQUEST.replyto,
    )
    published = CloudEvent({"type": MESSAGE_PUBLISHED, "source": "s"}, _wrapped())
    delivery = from_cloud_event(published.get_attributes(), published.get_data())
    assert delivery.message == BINARY
