"""Validate topics and subscriptions as Google does, fill in Google's defaults, derive settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import grpc

from relay.broker._errors import BrokerError, invalid
from relay.broker._filter import FilterError, compile_filter
from relay.broker._names import check_topic
from relay.broker._state import SubConfig

__all__ = [
    "DEFAULT_ACK_DEADLINE",
    "DEFAULT_EXPIRATION_TTL",
    "DEFAULT_RETENTION",
    "MAX_RETENTION",
    "seconds",
    "subscription_config",
    "topic_retention",
]

DEFAULT_ACK_DEADLINE = 10
DEFAULT_RETENTION = 7 * 24 * 3600
MAX_RETENTION = 31 * 24 * 3600
DEFAULT_EXPIRATION_TTL = 31 * 24 * 3600
DEFAULT_MIN_BACKOFF = 10.0
DEFAULT_MAX_BACKOFF = 600.0
PUSH_CONCURRENCY_ATTRIBUTE = "x-relay-push-concurrency"
# Export subscriptions: Google writes their messages to another service, which a local broker
# cannot reach; refused (UNIMPLEMENTED) rather than stored as a configuration that does nothing.
_UNDELIVERABLE = {
    "bigquery_config": "BigQuery",
    "cloud_storage_config": "Cloud Storage",
    "bigtable_config": "Bigtable",
}


def seconds(duration: Any) -> float:
    """A google.protobuf.Duration as float seconds."""
    return float(duration.seconds + duration.nanos / 1e9)


def _retention(value: float, what: str) -> float:
    if not 0 < value <= MAX_RETENTION:
        raise invalid(
            f"Invalid {what}: {value:g} seconds; it must be positive and at most 31 days."
        )
    return value


def topic_retention(pb: Any) -> float | None:
    """The topic's message_retention_duration in seconds (None when unset); validated."""
    if not pb.HasField("message_retention_duration"):
        return None
    return _retention(seconds(pb.message_retention_duration), "message_retention_duration")


def subscription_config(pb: Any) -> SubConfig:
    """Check a Subscription protobuf, write Google's defaults into it and derive its settings.

    Raises INVALID_ARGUMENT naming the bad field. Existence of referenced topics is the caller's
    job (NOT_FOUND).
    """
    for field, service in _UNDELIVERABLE.items():
        if pb.HasField(field):
            raise BrokerError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{service} subscriptions ({field}) are not supported: the relay broker cannot "
                f"deliver to {service}. Use a pull or push subscription instead.",
            )
    ack = pb.ack_deadline_seconds or DEFAULT_ACK_DEADLINE
    if not 10 <= ack <= 600:
        raise invalid(
            f"Invalid ack_deadline_seconds: {pb.ack_deadline_seconds}; it must be between 10 and "
            "600 seconds."
        )
    pb.ack_deadline_seconds = ack

    try:
        predicate = compile_filter(pb.filter) if pb.filter.strip() else None
    except FilterError as exc:
        raise invalid(f"Invalid filter: {exc}") from exc

    if pb.HasField("message_retention_duration"):
        retention = _retention(seconds(pb.message_retention_duration), "message_retention_duration")
    else:
        retention = float(DEFAULT_RETENTION)
        pb.message_retention_duration.seconds = DEFAULT_RETENTION

    dead_letter_topic: str | None = None
    max_attempts = 0
    if pb.HasField("dead_letter_policy") and pb.dead_letter_policy.dead_letter_topic:
        policy = pb.dead_letter_policy
        dead_letter_topic = check_topic(policy.dead_letter_topic)
        max_attempts = policy.max_delivery_attempts or 5
        if not 5 <= max_attempts <= 100:
            raise invalid(
                f"Invalid dead_letter_policy.max_delivery_attempts: "
                f"{policy.max_delivery_attempts}; it must be between 5 and 100."
            )
        policy.max_delivery_attempts = max_attempts
    elif pb.HasField("dead_letter_policy"):
        pb.ClearField("dead_letter_policy")

    min_backoff: float | None = None
    max_backoff = DEFAULT_MAX_BACKOFF
    if pb.HasField("retry_policy"):
        policy = pb.retry_policy
        min_backoff = (
            seconds(policy.minimum_backoff)
            if policy.HasField("minimum_backoff")
            else DEFAULT_MIN_BACKOFF
        )
        max_backoff = (
            seconds(policy.maximum_backoff)
            if policy.HasField("maximum_backoff")
            else DEFAULT_MAX_BACKOFF
        )
        if not 0 <= min_backoff <= 600 or not 0 <= max_backoff <= 600:
            raise invalid("Invalid retry_policy: backoffs must be between 0 and 600 seconds.")
        if min_backoff > max_backoff:
            raise invalid("Invalid retry_policy: minimum_backoff must not exceed maximum_backoff.")
        policy.minimum_backoff.seconds = int(min_backoff)
        policy.minimum_backoff.nanos = round((min_backoff % 1) * 1e9)
        policy.maximum_backoff.seconds = int(max_backoff)
        policy.maximum_backoff.nanos = round((max_backoff % 1) * 1e9)

    endpoint = pb.push_config.push_endpoint
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise invalid(f"Invalid push_config.push_endpoint: {endpoint!r}; need an http(s) URL.")
        concurrency = pb.push_config.attributes.get(PUSH_CONCURRENCY_ATTRIBUTE)
        if concurrency is not None and (not concurrency.isdigit() or int(concurrency) < 1):
            raise invalid(
                f"Invalid push_config.attributes[{PUSH_CONCURRENCY_ATTRIBUTE}]: {concurrency!r}; "
                "need a positive integer."
            )

    ttl: float | None
    if pb.HasField("expiration_policy"):
        if pb.expiration_policy.HasField("ttl"):
            ttl = seconds(pb.expiration_policy.ttl)
            if ttl <= 0:
                raise invalid("Invalid expiration_policy.ttl: it must be positive.")
        else:
            ttl = None
    else:
        ttl = float(DEFAULT_EXPIRATION_TTL)
        pb.expiration_policy.ttl.seconds = DEFAULT_EXPIRATION_TTL

    return SubConfig(
        ack_deadline=float(ack),
        predicate=predicate,
        ordered=pb.enable_message_ordering,
        retain_acked=pb.retain_acked_messages,
        retention_s=retention,
        dead_letter_topic=dead_letter_topic,
        max_attempts=max_attempts,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        push_endpoint=endpoint,
        expiration_ttl=ttl,
    )
