"""What the topology asks Pub/Sub for, as plain comparable values (no client imports here)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.protocol import EVENTARC_SUBSCRIPTION_PREFIX
from relay.topology import Function, RetryPolicy, Subscription, Topology


@dataclass(frozen=True)
class PushSettings:
    """A subscription's push_config as relay manages it."""

    endpoint: str
    service_account: str
    audience: str
    attributes: tuple[tuple[str, str], ...]


# The completion topic keeps messages this long (Google's minimum), so a new task subscription can
# be sought back over the moment of its creation (relay.airflow.hooks.create_task_subscription).
COMPLETION_RETENTION_SECONDS = 10 * 60
# A terminal dead-letter subscription keeps what lands there as long as Google allows (7 days) and
# never expires, however long nobody pulls it: it is where an operator finds undeliverable requests.
TERMINAL_RETENTION_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class KeepSettings:
    """How long a subscription keeps unacknowledged messages, and whether it expires when idle."""

    retention_seconds: int
    expiration_ttl_seconds: int | None
    """None: the subscription never expires."""


DEFAULT_KEEP = KeepSettings(7 * 24 * 3600, 31 * 24 * 3600)
"""Google's values for a subscription that sets neither."""


@dataclass(frozen=True)
class TopicSettings:
    """The fields of a topic that `relay provision` owns: its message retention."""

    name: str
    retention_seconds: int | None
    """None: the topic retains nothing (Google's default)."""

    def differences(self, actual: TopicSettings) -> tuple[str, ...]:
        """`message_retention_duration: actual -> desired` when they differ."""
        if actual.retention_seconds == self.retention_seconds:
            return ()
        return (
            f"message_retention_duration: {_describe_retention(actual.retention_seconds)} -> "
            f"{_describe_retention(self.retention_seconds)}",
        )

    def summary(self) -> tuple[str, ...]:
        """What a create sets."""
        if self.retention_seconds is None:
            return ()
        return (f"message_retention_duration: {_describe_retention(self.retention_seconds)}",)


@dataclass(frozen=True)
class SubscriptionSettings:
    """The fields of a subscription that `relay provision` owns; everything else it leaves alone."""

    name: str
    topic: str
    ack_deadline_seconds: int
    push: PushSettings | None
    minimum_backoff: float
    """Seconds; -1 (with maximum_backoff -1) when the subscription has no retry policy."""
    maximum_backoff: float
    dead_letter_topic: str | None
    max_delivery_attempts: int
    keep: KeepSettings | None = None
    """Retention and expiry, managed on terminal subscriptions only (None: left as they are)."""

    def differences(self, actual: SubscriptionSettings) -> tuple[str, ...]:
        """One `field: actual -> desired` line per managed field that differs (topic excluded)."""
        pairs: tuple[tuple[str, object, object], ...] = (
            ("ack_deadline_seconds", actual.ack_deadline_seconds, self.ack_deadline_seconds),
            *_push_pairs(actual.push, self.push),
            (
                "retry_policy",
                _describe_retry(actual.minimum_backoff, actual.maximum_backoff),
                _describe_retry(self.minimum_backoff, self.maximum_backoff),
            ),
            (
                "dead_letter_policy",
                _describe_dead_letter(actual.dead_letter_topic, actual.max_delivery_attempts),
                _describe_dead_letter(self.dead_letter_topic, self.max_delivery_attempts),
            ),
        )
        if self.keep is not None:
            kept = zip(
                _describe_keep(actual.keep or DEFAULT_KEEP), _describe_keep(self.keep), strict=True
            )
            pairs += tuple((name, old, new) for (name, old), (_, new) in kept)
        return tuple(f"{name}: {old} -> {new}" for name, old, new in pairs if old != new)

    def summary(self) -> tuple[str, ...]:
        """The managed fields as `field: value` lines (what a create sets)."""
        return (
            f"topic: {self.topic.rpartition('/')[2]}",
            f"ack_deadline_seconds: {self.ack_deadline_seconds}",
            f"push_config: {_describe_push(self.push)}",
            f"retry_policy: {_describe_retry(self.minimum_backoff, self.maximum_backoff)}",
            "dead_letter_policy: "
            + _describe_dead_letter(self.dead_letter_topic, self.max_delivery_attempts),
            *(
                f"{name}: {value}"
                for name, value in (_describe_keep(self.keep) if self.keep else ())
            ),
        )

    def changed_fields(self, actual: SubscriptionSettings) -> tuple[str, ...]:
        """The update_mask paths of `differences` (top-level fields, each once)."""
        return update_mask(self.differences(actual))


def update_mask(differences: tuple[str, ...]) -> tuple[str, ...]:
    """Top-level field paths of `field[.sub]: old -> new` lines, in order, each once."""
    paths = (line.partition(":")[0].split(".")[0] for line in differences)
    return tuple(dict.fromkeys(paths))


def _push_pairs(
    actual: PushSettings | None, desired: PushSettings | None
) -> tuple[tuple[str, object, object], ...]:
    """push_config differences: per sub-field while both push, else the whole config."""
    if actual is None or desired is None:
        return (("push_config", _describe_push(actual), _describe_push(desired)),)
    return (
        ("push_config.push_endpoint", actual.endpoint, desired.endpoint),
        (
            "push_config.oidc_token.service_account_email",
            actual.service_account,
            desired.service_account,
        ),
        ("push_config.oidc_token.audience", actual.audience, desired.audience),
        ("push_config.attributes", dict(actual.attributes), dict(desired.attributes)),
    )


def _describe_keep(keep: KeepSettings) -> tuple[tuple[str, str], ...]:
    return (
        ("message_retention_duration", _describe_retention(keep.retention_seconds)),
        ("expiration_policy", _describe_expiration(keep)),
    )


def topic_path(project: str, topic: str) -> str:
    """`projects/P/topics/T`."""
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    """`projects/P/subscriptions/S`."""
    return f"projects/{project}/subscriptions/{subscription}"


def desired_topics(topology: Topology) -> tuple[TopicSettings, ...]:
    """Every topic, requests first; the completion topic retains messages for a while."""
    return tuple(
        TopicSettings(
            topic_path(topology.project, topic),
            COMPLETION_RETENTION_SECONDS if topic == topology.completion_topic else None,
        )
        for topic in topology.topics
    )


def desired_subscriptions(topology: Topology) -> tuple[SubscriptionSettings, ...]:
    """One subscription per function, the pull subscriptions on the completion topic, then one
    per terminal dead-letter topic (kept 7 days, never expiring)."""
    settings = [
        _for_function(topology, function)
        for function in topology.functions.values()
        if function.delivery != "eventarc"  # Eventarc creates its trigger's subscription
    ]
    settings.extend(_for_pull(topology, sub) for sub in topology.completion_subscriptions)
    terminal = KeepSettings(TERMINAL_RETENTION_SECONDS, None)
    settings.extend(_for_pull(topology, sub, terminal) for sub in topology.terminal_subscriptions)
    return tuple(settings)


def trigger_subscription_prefix(topology: Topology, function: Function) -> str:
    """How the subscription of `function`'s Eventarc trigger is named, up to its numbers:
    `projects/P/subscriptions/eventarc-REGION-FUNCTION-` (the trigger is FUNCTION-NNNNNN)."""
    return subscription_path(
        topology.project, f"{EVENTARC_SUBSCRIPTION_PREFIX}{function.region}-{function.name}-"
    )


def trigger_settings(
    topology: Topology, function: Function, name: str, push: PushSettings | None
) -> SubscriptionSettings:
    """What relay manages on an Eventarc trigger's subscription `name`: ack deadline, retry and
    dead-letter policy from the topology; its push config stays Eventarc's (`push`)."""
    return replace(_for_function(topology, function), name=name, push=push)


def _for_function(topology: Topology, function: Function) -> SubscriptionSettings:
    push = None
    if function.delivery == "push":
        push = PushSettings(
            endpoint=function.url,
            service_account=topology.push_service_account(function) or "",
            audience=function.url,
            attributes=(),
        )
    return SubscriptionSettings(
        name=subscription_path(topology.project, function.subscription),
        topic=topic_path(topology.project, function.topic),
        ack_deadline_seconds=function.ack_deadline_seconds,
        push=push,
        minimum_backoff=function.retry.minimum_backoff,
        maximum_backoff=function.retry.maximum_backoff,
        dead_letter_topic=(
            topic_path(topology.project, function.dead_letter_topic)
            if function.dead_letter_topic
            else None
        ),
        max_delivery_attempts=function.max_delivery_attempts if function.dead_letter_topic else 0,
    )


def _for_pull(
    topology: Topology, subscription: Subscription, keep: KeepSettings | None = None
) -> SubscriptionSettings:
    retry: RetryPolicy = subscription.retry
    return SubscriptionSettings(
        name=subscription_path(topology.project, subscription.name),
        topic=topic_path(topology.project, subscription.topic),
        ack_deadline_seconds=subscription.ack_deadline_seconds,
        push=None,
        minimum_backoff=retry.minimum_backoff,
        maximum_backoff=retry.maximum_backoff,
        dead_letter_topic=None,
        max_delivery_attempts=0,
        keep=keep,
    )


def _describe_push(push: PushSettings | None) -> str:
    if push is None:
        return "pull"
    attributes = ",".join(f"{key}={value}" for key, value in push.attributes)
    parts = [f"push to {push.endpoint}"]
    if push.service_account:
        parts.append(f"as {push.service_account}")
    if push.audience and push.audience != push.endpoint:
        parts.append(f"aud {push.audience}")
    if attributes:
        parts.append(f"[{attributes}]")
    return " ".join(parts)


def _describe_retention(seconds: int | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _describe_expiration(keep: KeepSettings) -> str:
    if keep.expiration_ttl_seconds is None:
        return "never"
    return f"after {_describe_retention(keep.expiration_ttl_seconds)} idle"


def _describe_retry(minimum: float, maximum: float) -> str:
    if minimum < 0:
        return "none (immediate redelivery)"
    return f"{minimum:g}s..{maximum:g}s"


def _describe_dead_letter(topic: str | None, attempts: int) -> str:
    if topic is None:
        return "none"
    return f"{topic.rpartition('/')[2]} after {attempts} attempts"
