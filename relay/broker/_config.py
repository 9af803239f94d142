"""Validate topics and subscriptions as Google does, fill in Google's defaults, derive settings.

Every rule is Google's (docs/broker.md, "Google's rules", has the table with sources) and is
checked on CreateX/UpdateX/ModifyPushConfig. Stored resources are read back with `stored=True`:
they were accepted when written, and a rule added later must not make a broker drop them.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import grpc

from relay.broker._errors import BrokerError, invalid, shown
from relay.broker._filter import FilterError, compile_filter
from relay.broker._labels import check_labels
from relay.broker._names import check_topic
from relay.broker._state import SubConfig

__all__ = [
    "DEFAULT_ACK_DEADLINE",
    "DEFAULT_EXPIRATION_TTL",
    "DEFAULT_RETENTION",
    "MAX_SUBSCRIPTION_RETENTION",
    "MAX_TOPIC_RETENTION",
    "MIN_EXPIRATION_TTL",
    "MIN_RETENTION",
    "is_loopback",
    "seconds",
    "subscription_config",
    "topic_config",
]

DEFAULT_ACK_DEADLINE = 10
DEFAULT_RETENTION = 7 * 24 * 3600
MIN_RETENTION = 10 * 60
MAX_SUBSCRIPTION_RETENTION = 7 * 24 * 3600
MAX_TOPIC_RETENTION = 31 * 24 * 3600
DEFAULT_EXPIRATION_TTL = 31 * 24 * 3600
MIN_EXPIRATION_TTL = 24 * 3600
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
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def seconds(duration: Any) -> float:
    """A google.protobuf.Duration as float seconds."""
    return float(duration.seconds + duration.nanos / 1e9)


def _retention(value: float, maximum: int, kind: str, *, stored: bool) -> float:
    if stored:
        return value
    if not MIN_RETENTION <= value <= maximum:
        raise invalid(
            f"Invalid message_retention_duration: {value:.9g} seconds; a {kind}'s retention must "
            f"be between 10 minutes ({MIN_RETENTION} s) and {maximum // 86400} days "
            f"({maximum} s)."
        )
    return value


def topic_config(pb: Any, *, stored: bool = False) -> float | None:
    """Check a Topic protobuf; return its message_retention_duration in seconds (None: unset)."""
    if not stored:
        check_labels(pb.labels)
    if not pb.HasField("message_retention_duration"):
        return None
    value = seconds(pb.message_retention_duration)
    return _retention(value, MAX_TOPIC_RETENTION, "topic", stored=stored)


def check_push_endpoint(endpoint: str) -> None:
    """Google takes only `https://` push endpoints (lowercase scheme); the broker also takes
    `http://` to a loopback host, which a local run needs (functions served on 127.0.0.1)."""
    try:
        host = urlsplit(endpoint).hostname or ""
    except ValueError:  # a malformed URL ("http://[::1", say)
        host = ""
    if not endpoint.isprintable():
        host = ""  # control characters: refused below
    if endpoint.startswith("https://") and host:
        return
    if endpoint.startswith("http://") and host and is_loopback(host):
        return
    raise invalid(
        f"Invalid push_config.push_endpoint: {shown(endpoint)}. Google requires an https:// URL "
        "(lowercase scheme, a host); the relay broker also accepts http:// to a loopback host "
        "(127.0.0.0/8, ::1, localhost) for local runs."
    )


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback: `localhost`, 127.0.0.0/8 or ::1."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def subscription_config(pb: Any, *, stored: bool = False) -> SubConfig:
    """Check a Subscription protobuf, write Google's defaults into it and derive its settings.

    Raises INVALID_ARGUMENT naming the bad field. Existence of referenced topics is the caller's
    job (NOT_FOUND). `stored`: a subscription read back from the store, already checked once.
    """
    for field, service in _UNDELIVERABLE.items():
        if pb.HasField(field):
            raise BrokerError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{service} subscriptions ({field}) are not supported: the relay broker cannot "
                f"deliver to {service}. Use a pull or push subscription instead.",
            )
    if not stored:
        check_labels(pb.labels)
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
        retention = _retention(
            seconds(pb.message_retention_duration),
            MAX_SUBSCRIPTION_RETENTION,
            "subscription",
            stored=stored,
        )
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
        if not stored:
            _check_push_config(pb)
        concurrency = pb.push_config.attributes.get(PUSH_CONCURRENCY_ATTRIBUTE)
        if concurrency is not None and not (
            concurrency.isascii()
            and concurrency.isdigit()
            and 1 <= len(concurrency) <= 6
            and int(concurrency) >= 1
        ):
            raise invalid(
                f"Invalid push_config.attributes[{PUSH_CONCURRENCY_ATTRIBUTE}]: "
                f"{shown(concurrency)}; need a positive integer."
            )

    ttl: float | None
    if pb.HasField("expiration_policy"):
        if pb.expiration_policy.HasField("ttl"):
            ttl = seconds(pb.expiration_policy.ttl)
            if not stored:
                _check_ttl(ttl, retention)
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
        exactly_once=pb.enable_exactly_once_delivery,
    )


def _check_ttl(ttl: float, retention: float) -> None:
    if ttl < MIN_EXPIRATION_TTL:
        raise invalid(
            f"Invalid expiration_policy.ttl: {ttl:.9g} seconds; the minimum is 1 day "
            f"({MIN_EXPIRATION_TTL} s). Leave ttl unset for a subscription that never expires."
        )
    if ttl < retention:
        raise invalid(
            f"Invalid expiration_policy.ttl: {ttl:.9g} seconds is less than the "
            f"message_retention_duration ({retention:.9g} s); the ttl must not be shorter."
        )


def _check_push_config(pb: Any) -> None:
    push_config = pb.push_config
    check_push_endpoint(push_config.push_endpoint)
    if pb.enable_exactly_once_delivery:
        raise invalid(
            "Invalid subscription: exactly-once delivery (enable_exactly_once_delivery) is "
            "supported for pull subscriptions only, not with a push_config.push_endpoint."
        )
