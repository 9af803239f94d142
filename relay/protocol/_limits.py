"""Pub/Sub message limits, checked before anything is sent so a publish never fails half-way."""

from __future__ import annotations

from collections.abc import Mapping

from relay.protocol._errors import LimitError

MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
# Pub/Sub accepts publish requests up to 10 MB: 10 * 1000 * 1000, as the client library has it.
MAX_MESSAGE_BYTES = 10_000_000
DEFAULT_OFFLOAD_THRESHOLD = 1_048_576


def check_attributes(attributes: Mapping[str, str], *, reserve: int = 0) -> int:
    """Check count, key and value sizes; return their total bytes. `reserve` keeps slots free."""
    count = len(attributes) + reserve
    if count > MAX_ATTRIBUTES:
        raise LimitError(
            f"too many attributes: {count} (at most {MAX_ATTRIBUTES})",
            field="attributes",
            limit=MAX_ATTRIBUTES,
            actual=count,
        )
    total = 0
    for key, value in attributes.items():
        key_size = len(key.encode("utf-8"))
        if key_size > MAX_ATTRIBUTE_KEY_BYTES:
            raise LimitError(
                f"attribute key {key[:40]!r}... is {key_size} bytes "
                f"(at most {MAX_ATTRIBUTE_KEY_BYTES})",
                field=key,
                limit=MAX_ATTRIBUTE_KEY_BYTES,
                actual=key_size,
            )
        value_size = len(value.encode("utf-8"))
        if value_size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise LimitError(
                f"attribute {key!r} value is {value_size} bytes "
                f"(at most {MAX_ATTRIBUTE_VALUE_BYTES})",
                field=key,
                limit=MAX_ATTRIBUTE_VALUE_BYTES,
                actual=value_size,
            )
        total += key_size + value_size
    return total


def check_message(data: bytes, attributes: Mapping[str, str]) -> None:
    """Check every limit of one Pub/Sub message: attributes, then data plus attributes <= 10 MB."""
    size = check_attributes(attributes) + len(data)
    if size > MAX_MESSAGE_BYTES:
        raise LimitError(
            f"message is {size} bytes, data plus attribute keys and values "
            f"(at most {MAX_MESSAGE_BYTES})",
            field="message",
            limit=MAX_MESSAGE_BYTES,
            actual=size,
        )


# Google's bounds of a subscription's settings (the same in relay broker).
MIN_EXPIRATION_TTL_SECONDS = 24 * 3600
MIN_RETENTION_SECONDS = 10 * 60
MAX_SUBSCRIPTION_RETENTION_SECONDS = 7 * 24 * 3600


def check_subscription_lifetime(ttl_seconds: float | None, retention_seconds: float) -> None:
    """Check an expiration TTL (None: never expires) and a message retention against Google's
    bounds: TTL at least a day, retention 10 minutes to 7 days and not above the TTL."""
    if ttl_seconds is not None and ttl_seconds < MIN_EXPIRATION_TTL_SECONDS:
        raise LimitError(
            f"subscription expiration TTL {ttl_seconds:g} s is below Google's minimum of 1 day "
            "(or set it to never expire)",
            field="subscription_ttl",
            limit=MIN_EXPIRATION_TTL_SECONDS,
            actual=int(ttl_seconds),
        )
    if not MIN_RETENTION_SECONDS <= retention_seconds <= MAX_SUBSCRIPTION_RETENTION_SECONDS:
        raise LimitError(
            f"subscription message retention {retention_seconds:g} s is outside Google's range "
            "of 10 minutes to 7 days",
            field="subscription_retention",
            limit=MAX_SUBSCRIPTION_RETENTION_SECONDS,
            actual=int(retention_seconds),
        )
    if ttl_seconds is not None and retention_seconds > ttl_seconds:
        raise LimitError(
            f"subscription message retention {retention_seconds:g} s is above its expiration "
            f"TTL {ttl_seconds:g} s (Google refuses that)",
            field="subscription_retention",
            limit=int(ttl_seconds),
            actual=int(retention_seconds),
        )
