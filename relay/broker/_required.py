"""The permissions each RPC needs, on which resource: Google's Pub/Sub access-control table.

`REQUIRED[method](request, broker)` lists (permission, resource) pairs; None means the method needs
none (TestIamPermissions answers what the caller holds). Every gated method must have an entry
(`Auth` refuses to start otherwise): a method added later is denied, never left open. A name that
does not even name a project is not checked here: the method refuses it (INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.broker._access import Check, service_account_resource
from relay.broker._core import Broker
from relay.broker._roles import ACT_AS

__all__ = ["REQUIRED", "Rule"]

Rule = Callable[[Any, Broker], list[Check] | None]


def _project(name: str) -> str:
    """projects/P of a resource name (or of `projects/P` itself); "" when it names none."""
    parts = name.split("/")
    return f"projects/{parts[1]}" if len(parts) >= 2 and parts[0] == "projects" and parts[1] else ""


def _on(permission: str, resource: str) -> list[Check]:
    return [(permission, resource)] if _project(resource) else []


def _schema(name: str) -> str:
    """A schema name without its revision (`projects/P/schemas/S@REVISION`)."""
    return name.partition("@")[0]


def _act_as(push_config: Any) -> list[Check]:
    """actAs on the service account a push config's OIDC token names (none without one)."""
    if not push_config.push_endpoint or not push_config.HasField("oidc_token"):
        return []
    email = push_config.oidc_token.service_account_email
    return [(ACT_AS, service_account_resource(email))] if email else []


def _masked(paths: Any, field: str) -> bool:
    return any(path == field or path.startswith(f"{field}.") for path in paths)


def _create_topic(req: Any, broker: Broker) -> list[Check]:
    checks = _on("pubsub.topics.create", _project(req.name))
    if req.schema_settings.schema:
        checks += _on("pubsub.schemas.attach", _schema(req.schema_settings.schema))
    return checks


def _update_topic(req: Any, broker: Broker) -> list[Check]:
    checks = _on("pubsub.topics.update", req.topic.name)
    schema = req.topic.schema_settings.schema
    if schema and _masked(req.update_mask.paths, "schema_settings"):
        checks += _on("pubsub.schemas.attach", _schema(schema))
    return checks


def _detach(req: Any, broker: Broker) -> list[Check]:
    """detachSubscription on the subscription's topic (its project's when it does not exist)."""
    sub = broker.subs.get(req.subscription)
    topic = sub.topic if sub is not None else _project(req.subscription)
    return _on("pubsub.topics.detachSubscription", topic)


def _create_subscription(req: Any, broker: Broker) -> list[Check]:
    checks = _on("pubsub.subscriptions.create", _project(req.name))
    checks += _on("pubsub.topics.attachSubscription", req.topic)
    return checks + _act_as(req.push_config)


def _update_subscription(req: Any, broker: Broker) -> list[Check]:
    checks = _on("pubsub.subscriptions.update", req.subscription.name)
    if _masked(req.update_mask.paths, "push_config"):
        checks += _act_as(req.subscription.push_config)
    return checks


def _seek(req: Any, broker: Broker) -> list[Check]:
    checks = _on("pubsub.subscriptions.consume", req.subscription)
    if req.snapshot:
        checks += _on("pubsub.snapshots.seek", req.snapshot)
    return checks


def _iam(verb: str) -> Rule:
    """getIamPolicy / setIamPolicy of the resource's own type."""

    def rule(req: Any, broker: Broker) -> list[Check]:
        parts = req.resource.split("/")
        if len(parts) != 4 or parts[2] not in ("topics", "subscriptions", "snapshots", "schemas"):
            return []  # not a Pub/Sub resource: the method refuses the name
        return _on(f"pubsub.{parts[2]}.{verb}", req.resource)

    return rule


def _field(permission: str, field: str, *, project: bool = False, schema: bool = False) -> Rule:
    """`permission` on the resource named by request field `field` (or on its project)."""

    def rule(req: Any, broker: Broker) -> list[Check]:
        value = getattr(req, field)
        if not isinstance(value, str):
            value = value.name
        if schema:
            value = _schema(value)
        return _on(permission, _project(value) if project else value)

    return rule


REQUIRED: dict[str, Rule] = {
    # Publisher
    "CreateTopic": _create_topic,
    "GetTopic": _field("pubsub.topics.get", "topic"),
    "UpdateTopic": _update_topic,
    "ListTopics": _field("pubsub.topics.list", "project", project=True),
    "ListTopicSubscriptions": _field("pubsub.topics.get", "topic"),
    "ListTopicSnapshots": _field("pubsub.topics.get", "topic"),
    "DeleteTopic": _field("pubsub.topics.delete", "topic"),
    "Publish": _field("pubsub.topics.publish", "topic"),
    "DetachSubscription": _detach,
    # Subscriber
    "CreateSubscription": _create_subscription,
    "GetSubscription": _field("pubsub.subscriptions.get", "subscription"),
    "UpdateSubscription": _update_subscription,
    "ListSubscriptions": _field("pubsub.subscriptions.list", "project", project=True),
    "DeleteSubscription": _field("pubsub.subscriptions.delete", "subscription"),
    "ModifyPushConfig": lambda req, broker: (
        _on("pubsub.subscriptions.update", req.subscription) + _act_as(req.push_config)
    ),
    "Pull": _field("pubsub.subscriptions.consume", "subscription"),
    "StreamingPull": _field("pubsub.subscriptions.consume", "subscription"),
    "Acknowledge": _field("pubsub.subscriptions.consume", "subscription"),
    "ModifyAckDeadline": _field("pubsub.subscriptions.consume", "subscription"),
    "Seek": _seek,
    "CreateSnapshot": lambda req, broker: (
        _on("pubsub.snapshots.create", _project(req.name))
        + _on("pubsub.subscriptions.consume", req.subscription)
    ),
    "GetSnapshot": _field("pubsub.snapshots.get", "snapshot"),
    "UpdateSnapshot": _field("pubsub.snapshots.update", "snapshot"),
    "ListSnapshots": _field("pubsub.snapshots.list", "project", project=True),
    "DeleteSnapshot": _field("pubsub.snapshots.delete", "snapshot"),
    # IAMPolicy
    "SetIamPolicy": _iam("setIamPolicy"),
    "GetIamPolicy": _iam("getIamPolicy"),
    "TestIamPermissions": lambda req, broker: None,
    # SchemaService
    "CreateSchema": _field("pubsub.schemas.create", "parent", project=True),
    "GetSchema": _field("pubsub.schemas.get", "name", schema=True),
    "ListSchemas": _field("pubsub.schemas.list", "parent", project=True),
    "ListSchemaRevisions": _field("pubsub.schemas.listRevisions", "name", schema=True),
    "CommitSchema": _field("pubsub.schemas.commit", "name", schema=True),
    "RollbackSchema": _field("pubsub.schemas.rollback", "name", schema=True),
    "DeleteSchemaRevision": _field("pubsub.schemas.delete", "name", schema=True),
    "DeleteSchema": _field("pubsub.schemas.delete", "name", schema=True),
    "ValidateSchema": _field("pubsub.schemas.validate", "parent", project=True),
    "ValidateMessage": _field("pubsub.schemas.validate", "parent", project=True),
}
