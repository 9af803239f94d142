"""Unwrap every way a request reaches a function into one shape: a Pub/Sub message + delivery facts.

Accepted (see docs/functions.md):
- Eventarc: a CloudEvent (binary or structured) of type
  google.cloud.pubsub.topic.v1.messagePublished whose data is MessagePublishedData
  `{"message": {...}, "subscription": ...}`;
- a Pub/Sub push with Google's JSON wrapper `{"message": {...}, "subscription", "deliveryAttempt"}`;
- a Pub/Sub push with no_wrapper: the body is the message data; with write_metadata the attributes
  arrive as headers of their own name and the metadata as `x-goog-pubsub-*` headers;
- a direct HTTP CloudEvent (binary: `ce-*` headers; structured: application/cloudevents+json).
The request event inside the message is decoded later by relay.protocol.from_message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.functions._errors import Unanswerable
from relay.protocol import Message

MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
_STRUCTURED = "application/cloudevents"
# Headers of the HTTP transport itself: never message attributes in no_wrapper mode.
_TRANSPORT_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "authorization",
        "connection",
        "content-length",
        "forwarded",
        "from",
        "host",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "user-agent",
        "x-cloud-trace-context",
        "x-forwarded-for",
        "x-forwarded-proto",
    }
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A Pub/Sub message (or its HTTP equivalent) plus what the transport said about it."""

    message: Message
    route: str  # "eventarc", "push", "push-no-wrapper", "http-binary", "http-structured"
    message_id: str | None = None
    subscription: str | None = None
    delivery_attempt: int | None = None


def from_http(headers: Mapping[str, str], body: bytes) -> Delivery:
    """Unwrap an HTTP request. Raises Unanswerable.

    `headers`: case-insensitive (werkzeug's request.headers, read without copying on the hot
    path) or a dict with lower-case keys.
    """
    content_type = headers.get("content-type", "")
    if "ce-specversion" in headers:
        if headers.get("ce-type") == MESSAGE_PUBLISHED:
            return _from_pubsub_json(_json_object(body, "Eventarc body"), "eventarc")
        return _binary_event(_lowered(headers), body)
    if content_type.startswith(_STRUCTURED):
        envelope = _json_object(body, "structured CloudEvent")
        if envelope.get("type") == MESSAGE_PUBLISHED:
            data = envelope.get("data")
            if not isinstance(data, dict):
                raise Unanswerable("messagePublished CloudEvent without MessagePublishedData")
            return _from_pubsub_json(data, "eventarc")
        return Delivery(Message(body, {"content-type": content_type}), "http-structured")
    message_id = headers.get("x-goog-pubsub-message-id")
    if message_id is not None:  # no_wrapper + write_metadata: attributes are headers
        return _no_wrapper(_lowered(headers), body)
    if body[:1] == b"{" or body.lstrip()[:1] == b"{":
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            document = None
        if isinstance(document, dict):
            if isinstance(document.get("message"), dict):
                return _from_pubsub_json(document, "push")
            if "specversion" in document:  # no_wrapper without metadata, structured message
                attributes = {"content-type": "application/cloudevents+json"}
                return Delivery(Message(body, attributes), "push-no-wrapper")
    raise Unanswerable(
        "not a CloudEvent, a Pub/Sub push or an Eventarc event "
        f"(content-type {content_type!r}, {len(body)} bytes)"
    )


def from_cloud_event(attributes: Mapping[str, Any], data: Any) -> Delivery:
    """Unwrap a CloudEvent already parsed by functions-framework (the fallback entry point)."""
    if attributes.get("type") == MESSAGE_PUBLISHED:
        if not isinstance(data, dict):
            raise Unanswerable("messagePublished CloudEvent without MessagePublishedData")
        return _from_pubsub_json(data, "eventarc")
    message_attributes: dict[str, str] = {}
    for name, value in attributes.items():
        if value is None:
            continue
        key = "content-type" if name == "datacontenttype" else f"ce-{name}"
        message_attributes[key] = value if isinstance(value, str) else str(value)
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        raw = data.encode("utf-8")
    elif data is None:
        raw = b""
    else:
        raw = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return Delivery(Message(raw, message_attributes), "http-binary")


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unanswerable(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Unanswerable(f"{what} is not a JSON object")
    return document


def _from_pubsub_json(document: Mapping[str, Any], route: str) -> Delivery:
    """Google's push wrapper or MessagePublishedData -> Delivery."""
    message = document.get("message")
    if not isinstance(message, dict):
        raise Unanswerable(f"{route} body has no message object")
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str):
        message_id = None
    encoded = message.get("data", "")
    if not isinstance(encoded, str):
        raise Unanswerable("message.data is not a base64 string", message_id=message_id)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Unanswerable("message.data is not valid base64", message_id=message_id) from None
    raw_attributes = message.get("attributes") or {}
    if not isinstance(raw_attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_attributes.items()
    ):
        raise Unanswerable("message.attributes is not a string map", message_id=message_id)
    subscription = document.get("subscription")
    attempt = document.get("deliveryAttempt")
    return Delivery(
        Message(data, dict(raw_attributes)),
        route,
        message_id=message_id,
        subscription=subscription if isinstance(subscription, str) else None,
        delivery_attempt=attempt if isinstance(attempt, int) and attempt > 0 else None,
    )


def _binary_event(headers: Mapping[str, str], body: bytes) -> Delivery:
    """A binary-mode request event: direct HTTP or no_wrapper push.

    `ce-*` values are taken verbatim, not percent-decoded as the CloudEvents HTTP binding asks:
    relay.airflow and cloudevents-python 1.x send them unencoded, and decoding would corrupt a
    correlation id or topic path that contains a "%".
    """
    if "x-goog-pubsub-message-id" in headers:
        return _no_wrapper(headers, body)
    attributes = {name: value for name, value in headers.items() if name.startswith("ce-")}
    content_type = headers.get("content-type")
    if content_type:
        attributes["content-type"] = content_type
    return Delivery(Message(body, attributes), "http-binary")


def _no_wrapper(headers: Mapping[str, str], body: bytes) -> Delivery:
    """no_wrapper + write_metadata: every non-transport header is a message attribute."""
    attributes = {
        name: value
        for name, value in headers.items()
        if name not in _TRANSPORT_HEADERS and not name.startswith("x-goog-pubsub-")
    }
    if attributes.get("content-type") == "application/octet-stream" and "ce-id" in attributes:
        # The push transport's own default content type, not the event's datacontenttype.
        del attributes["content-type"]
    attempt_header = headers.get("x-goog-pubsub-delivery-attempt", "")
    return Delivery(
        Message(body, attributes),
        "push-no-wrapper",
        message_id=headers.get("x-goog-pubsub-message-id"),
        subscription=headers.get("x-goog-pubsub-subscription-name"),
        delivery_attempt=int(attempt_header) if attempt_header.isdigit() else None,
    )
