"""Resource names: topic/subscription paths, per-wait completion subscriptions, their filters and
ack deadline.

A wait's completion subscription is named from a hash of (completion topic, correlation id), so the
publisher (worker) and a trigger resumed from its kwargs always agree on it, and re-creating it is
idempotent.
"""

from __future__ import annotations

import hashlib
import re

from relay.airflow.exceptions import RelayConfigError

_PROJECT = r"[a-z][a-z0-9\-:.]{1,62}"
_RESOURCE = r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC_PATH = re.compile(rf"^projects/({_PROJECT})/topics/({_RESOURCE})$")
_SUBSCRIPTION_PATH = re.compile(rf"^projects/({_PROJECT})/subscriptions/({_RESOURCE})$")
_RESOURCE_NAME = re.compile(rf"^{_RESOURCE}$")
# Correlation ids go into a Pub/Sub filter string: a conservative character set keeps quoting
# trivial.
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,199}$")

WAIT_SUBSCRIPTION_PREFIX = "relay-wait-"
WAKE_SUBSCRIPTION_PREFIX = "relay-wake-"
# Ack deadline of wait subscriptions: how long a trigger's or worker's read holds a result.
WAIT_ACK_DEADLINE_SECONDS = 10


def topic_path(project_id: str, topic: str) -> str:
    """A full topic path from a short name (in `project_id`) or an already full path."""
    if topic.startswith("projects/"):
        if not _TOPIC_PATH.match(topic):
            raise RelayConfigError(
                f"topic {topic!r} is not of the form projects/<project>/topics/<name>"
            )
        return topic
    if not _RESOURCE_NAME.match(topic):
        raise RelayConfigError(f"topic name {topic!r} is not a valid Pub/Sub resource name")
    return f"projects/{project_id}/topics/{topic}"


def subscription_path(project_id: str, subscription: str) -> str:
    """A full subscription path from a short name (in `project_id`) or an already full path."""
    if subscription.startswith("projects/"):
        if not _SUBSCRIPTION_PATH.match(subscription):
            raise RelayConfigError(
                f"subscription {subscription!r} is not of the form "
                "projects/<project>/subscriptions/<name>"
            )
        return subscription
    if not _RESOURCE_NAME.match(subscription):
        raise RelayConfigError(
            f"subscription name {subscription!r} is not a valid Pub/Sub resource name"
        )
    return f"projects/{project_id}/subscriptions/{subscription}"


def project_of(path: str) -> str:
    """The project part of a full topic or subscription path."""
    return path.split("/", 2)[1]


def check_correlation_id(correlation_id: object) -> str:
    """Return the correlation id if it is safe to put into a subscription filter, else raise."""
    if not isinstance(correlation_id, str) or not _CORRELATION_ID.match(correlation_id):
        raise RelayConfigError(
            f"correlation id {correlation_id!r} must be 1-200 characters of "
            "A-Z a-z 0-9 . _ : @ + = - "
            "starting with a letter or digit"
        )
    return correlation_id


def wait_subscription(project_id: str, completion_topic: str, correlation_id: str) -> str:
    """The full path of the completion subscription that holds the durable copy of one result."""
    digest = hashlib.sha256(f"{completion_topic}\0{check_correlation_id(correlation_id)}".encode())
    return (
        f"projects/{project_id}/subscriptions/{WAIT_SUBSCRIPTION_PREFIX}{digest.hexdigest()[:40]}"
    )


def wait_filter(correlation_id: str) -> str:
    """The subscription filter that lets only results for `correlation_id` in."""
    return f'attributes.ce-correlationid = "{check_correlation_id(correlation_id)}"'
