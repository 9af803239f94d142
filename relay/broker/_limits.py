"""Google's Pub/Sub publish limits: INVALID_ARGUMENT with a message naming the limit."""

from __future__ import annotations

from typing import Any, NamedTuple

from relay.broker._errors import invalid

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_MESSAGES_PER_PUBLISH",
    "MAX_MESSAGE_BYTES",
    "MAX_ORDERING_KEY_BYTES",
    "MAX_PUBLISH_BYTES",
    "CheckedMessages",
    "check_publish",
]

# Google's client library refuses a PublishRequest over 10,000,000 bytes, counted over the whole
# serialized request (topic and message framing included: `_SERVER_PUBLISH_MAX_BYTES` in
# google-cloud-pubsub's publisher/_batch/thread.py); a message cannot be bigger either.
MAX_MESSAGE_BYTES = 10_000_000
MAX_PUBLISH_BYTES = 10_000_000
MAX_MESSAGES_PER_PUBLISH = 1_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024


class CheckedMessages(NamedTuple):
    """What the broker keeps of a checked Publish request, read in one pass over its messages."""

    bodies: list[bytes]  # each message serialized
    ordering_keys: list[str]


def check_publish(topic: str, messages: Any) -> CheckedMessages:
    """Check the messages of one Publish request to `topic`; return them serialized, with keys.

    Serializing is the size check too (one pass over each message: reading protobuf fields again
    later costs as much as the checks); message_id and publish_time are the service's to set, so
    values a publisher put there are dropped.
    """
    count = len(messages)
    if count == 0:
        raise invalid("The publish request must contain at least one message.")
    if count > MAX_MESSAGES_PER_PUBLISH:
        raise invalid(
            f"The value for message_count is too large. You passed {count} in the request, "
            f"but the maximum value is {MAX_MESSAGES_PER_PUBLISH}."
        )
    bodies = []
    keys = []
    total = _field_size(len(topic.encode()))  # the PublishRequest's serialized size, in parts
    for index, message in enumerate(messages):
        if message.message_id or message.HasField("publish_time"):
            message.ClearField("message_id")
            message.ClearField("publish_time")
        body = message.SerializeToString()
        size = len(body)
        attributes = message.attributes
        if size > MAX_MESSAGE_BYTES:
            raise invalid(
                f"Message {index} is {size} bytes; the maximum message size is "
                f"{MAX_MESSAGE_BYTES} bytes."
            )
        if attributes:
            _check_attributes(index, attributes)
        elif not message.data:
            raise invalid(
                "Some messages in the publish request are empty. Each message must contain "
                "either non-empty data, or at least one attribute."
            )
        key = message.ordering_key
        if key and len(key.encode()) > MAX_ORDERING_KEY_BYTES:
            raise invalid(
                f"Message {index}: the ordering_key is longer than {MAX_ORDERING_KEY_BYTES} bytes."
            )
        # The message's field in the request: tag, length varint (< 2**28 bytes), the bytes.
        total += 2 + size + (size >= 0x80) + (size >= 0x4000) + (size >= 0x200000)
        bodies.append(body)
        keys.append(key)
    if total > MAX_PUBLISH_BYTES:
        raise invalid(
            f"Request payload size exceeds the limit: {MAX_PUBLISH_BYTES} bytes (this "
            f"PublishRequest serializes to {total} bytes, topic and message framing included)."
        )
    return CheckedMessages(bodies, keys)


def _field_size(length: int) -> int:
    """Bytes of a length-delimited protobuf field of `length` bytes (field number < 16)."""
    return 1 + max(1, (length.bit_length() + 6) // 7) + length


def _check_attributes(index: int, attributes: Any) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise invalid(
            f"Message {index} has {len(attributes)} attributes; the maximum is {MAX_ATTRIBUTES}."
        )
    for key, value in attributes.items():
        key_bytes = len(key.encode())
        if key_bytes > MAX_ATTRIBUTE_KEY_BYTES:
            raise invalid(
                f"Message {index}: attribute key {key[:40]!r}... is {key_bytes} bytes; the "
                f"maximum is {MAX_ATTRIBUTE_KEY_BYTES} bytes."
            )
        if not key:
            raise invalid(f"Message {index}: attribute keys must not be empty.")
        if key.lower().startswith("goog"):
            raise invalid(
                f"Message {index}: attribute key {key!r} is reserved (keys must not start with "
                "'goog')."
            )
        value_bytes = len(value.encode())
        if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES:
            raise invalid(
                f"Message {index}: the value of attribute {key!r} is {value_bytes} bytes; the "
                f"maximum is {MAX_ATTRIBUTE_VALUE_BYTES} bytes."
            )
