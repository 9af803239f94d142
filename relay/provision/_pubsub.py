"""Plan and apply a topology against a Pub/Sub project with the google-cloud-pubsub admin clients
(its IAM bindings through `_policies`).

The same code serves Google Cloud (ADC) and `relay broker` (PUBSUB_EMULATOR_HOST): the GAPIC
clients switch to an insecure channel with anonymous credentials when that variable is set.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from relay.provision._desired import (
    DEFAULT_KEEP,
    KeepSettings,
    PushSettings,
    SubscriptionSettings,
    TopicSettings,
    desired_subscriptions,
    desired_topics,
    topic_path,
    trigger_settings,
    trigger_subscription_prefix,
    update_mask,
)
from relay.provision._errors import ProvisionError, api_failure
from relay.provision._iam import iam_bindings, settable
from relay.provision._policies import IamChange, sync_policies
from relay.topology import Topology

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient, SubscriberClient

Action = Literal["create", "update", "unchanged", "conflict", "pending"]
"""`pending`: an Eventarc trigger's subscription that does not exist yet (relay deploy creates the
trigger, then configures it)."""
_TIMEOUT = 30.0
_EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"


@dataclass(frozen=True)
class Change:
    """What provisioning does (or would do) to one resource."""

    kind: Literal["topic", "subscription"]
    name: str
    """Full resource path, e.g. `projects/p/topics/t`."""
    action: Action
    details: tuple[str, ...] = ()
    settings: SubscriptionSettings | TopicSettings | None = None

    @property
    def short_name(self) -> str:
        """The last path segment (the topic or subscription id)."""
        return self.name.rpartition("/")[2]


@dataclass(frozen=True)
class Plan:
    """Every resource of a topology with its action, topics first; and the topic and
    subscription IAM bindings set (or, in a dry run, to be set) through Pub/Sub."""

    project: str
    changes: tuple[Change, ...]
    iam: tuple[IamChange, ...] = ()

    @property
    def pending(self) -> tuple[Change, ...]:
        """The changes that do something (create, update, conflict)."""
        return tuple(change for change in self.changes if change.action != "unchanged")

    @property
    def conflicts(self) -> tuple[Change, ...]:
        """Changes provisioning refuses to make (e.g. a subscription on another topic)."""
        return tuple(change for change in self.changes if change.action == "conflict")

    def counts(self) -> dict[str, int]:
        """Number of changes per action."""
        return dict(Counter(change.action for change in self.changes))

    def iam_counts(self) -> dict[str, int]:
        """Number of IAM bindings per action (add, present)."""
        return dict(Counter(change.action for change in self.iam))


@contextmanager
def admin_clients(
    api_endpoint: str | None = None,
) -> Iterator[tuple[PublisherClient, SubscriberClient]]:
    """A publisher and a subscriber admin client, closed on exit: on Google's endpoint (or
    PUBSUB_EMULATOR_HOST's), or on `api_endpoint` (HOST:PORT) over TLS with Application Default
    Credentials, as on Google (gRPC trusts extra CAs from GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)."""
    options: dict[str, Any] = {}
    if api_endpoint is not None:
        if os.environ.get(_EMULATOR_ENV):
            raise ProvisionError(
                f"an API endpoint ({api_endpoint}) and {_EMULATOR_ENV} "
                f"({os.environ[_EMULATOR_ENV]}) are both set; the client libraries would take "
                f"{_EMULATOR_ENV} (no TLS, anonymous): unset one"
            )
        options["client_options"] = {"api_endpoint": api_endpoint}
    try:
        from google.pubsub_v1 import PublisherClient, SubscriberClient
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ProvisionError(
            "provisioning needs google-cloud-pubsub: install relay with an extra that has it, "
            "e.g. `pip install 'relay[functions]'`"
        ) from exc
    from google.auth.exceptions import DefaultCredentialsError

    with ExitStack() as stack:
        try:
            publisher = stack.enter_context(PublisherClient(**options))
            subscriber = stack.enter_context(SubscriberClient(**options))
        except DefaultCredentialsError as exc:
            raise ProvisionError(
                f"no Application Default Credentials ({' '.join(str(exc).split())}); or set "
                f"{_EMULATOR_ENV} to provision a local relay broker without authentication"
            ) from exc
        yield publisher, subscriber


def plan(topology: Topology, publisher: PublisherClient, subscriber: SubscriberClient) -> Plan:
    """Compare the project with the topology; reads only."""
    from google.api_core import exceptions

    changes: list[Change] = []
    for topic in desired_topics(topology):
        try:
            current = publisher.get_topic(request={"topic": topic.name}, timeout=_TIMEOUT)
        except exceptions.NotFound:
            changes.append(Change("topic", topic.name, "create", topic.summary(), topic))
            continue
        differences = topic.differences(_topic_from_proto(current))
        action: Action = "update" if differences else "unchanged"
        changes.append(Change("topic", topic.name, action, differences, topic))
    for desired in desired_subscriptions(topology):
        try:
            current = subscriber.get_subscription(
                request={"subscription": desired.name}, timeout=_TIMEOUT
            )
        except exceptions.NotFound:
            changes.append(
                Change("subscription", desired.name, "create", desired.summary(), desired)
            )
            continue
        actual = _settings_from_proto(current)
        if actual.topic != desired.topic:
            detail = (
                f"it is attached to {actual.topic}, the topology says {desired.topic}; "
                "a subscription cannot move: delete it, then provision again"
            )
            changes.append(Change("subscription", desired.name, "conflict", (detail,), desired))
            continue
        differences = desired.differences(actual)
        action = "update" if differences else "unchanged"
        changes.append(Change("subscription", desired.name, action, differences, desired))
    changes.extend(trigger_changes(topology, publisher, subscriber))
    return Plan(topology.project, tuple(changes))


def trigger_changes(
    topology: Topology,
    publisher: PublisherClient,
    subscriber: SubscriberClient,
    functions: Collection[str] | None = None,
) -> list[Change]:
    """Eventarc trigger subscriptions on the request topics: an eventarc function's, with relay's
    ack deadline, retry and dead-letter policy (its push config stays Eventarc's); and, beside a
    push or pull function's own subscription, a trigger's is a conflict (every request twice)."""
    from google.api_core import exceptions

    changes: list[Change] = []
    for function in topology.functions.values():
        if functions is not None and function.name not in functions:
            continue
        prefix = trigger_subscription_prefix(topology, function)
        try:
            attached = publisher.list_topic_subscriptions(
                request={"topic": topic_path(topology.project, function.topic)}, timeout=_TIMEOUT
            )
            triggers = [name for name in attached if name.startswith(prefix)]
        except exceptions.NotFound:
            triggers = []
        if function.delivery != "eventarc":
            changes.extend(
                Change(
                    "subscription",
                    name,
                    "conflict",
                    (
                        f"an Eventarc trigger's subscription on {function.topic}, beside "
                        f"{function.subscription}: {function.name} would get every request twice; "
                        f"delete the trigger (gcloud functions delete {function.name} --region "
                        f"{function.region}) or make it `delivery: eventarc`",
                    ),
                )
                for name in triggers
            )
            continue
        if not triggers:
            detail = (
                f"Eventarc creates it with {function.name}'s trigger: relay deploy does, then sets "
                "its ack deadline, retry and dead-letter policy"
            )
            changes.append(Change("subscription", f"{prefix}*", "pending", (detail,)))
            continue
        if len(triggers) > 1:
            detail = f"{len(triggers)} Eventarc triggers deliver to {function.name}: keep one"
            changes.extend(Change("subscription", name, "conflict", (detail,)) for name in triggers)
            continue
        current = _settings_from_proto(
            subscriber.get_subscription(request={"subscription": triggers[0]}, timeout=_TIMEOUT)
        )
        desired = trigger_settings(topology, function, triggers[0], current.push)
        differences = desired.differences(current)
        action: Action = "update" if differences else "unchanged"
        changes.append(Change("subscription", desired.name, action, differences, desired))
    return changes


def configure_triggers(
    topology: Topology,
    functions: Collection[str],
    *,
    clients: tuple[PublisherClient, SubscriberClient] | None = None,
) -> Plan:
    """Give the Eventarc triggers of `functions` relay's subscription settings (what `relay
    provision` does for them too, so either may run first); returns what it changed."""
    with ExitStack() as stack:
        if clients is None:
            clients = stack.enter_context(admin_clients())
        publisher, subscriber = clients
        changes = trigger_changes(topology, publisher, subscriber, functions)
        result = Plan(topology.project, tuple(changes))
        apply(result, publisher, subscriber)
        return result


def apply(plan: Plan, publisher: PublisherClient, subscriber: SubscriberClient) -> None:
    """Make the plan's changes: topics first, then subscriptions. Refuses any conflict up front."""
    from google.api_core import exceptions
    from google.protobuf import field_mask_pb2

    if plan.conflicts:
        lines = "\n".join(f"  {c.short_name}: {'; '.join(c.details)}" for c in plan.conflicts)
        raise ProvisionError(f"nothing changed, the topology conflicts with the project:\n{lines}")
    for change in plan.pending:
        if change.action == "pending":
            continue
        try:
            if isinstance(change.settings, TopicSettings):
                request = _topic_to_proto(change.settings)
                if change.action == "create":
                    # Created meanwhile by someone else: updated on the next run.
                    with suppress(exceptions.AlreadyExists):
                        publisher.create_topic(request=request, timeout=_TIMEOUT)
                else:
                    mask = field_mask_pb2.FieldMask(paths=["message_retention_duration"])
                    publisher.update_topic(
                        request={"topic": request, "update_mask": mask}, timeout=_TIMEOUT
                    )
            elif change.settings is not None and change.action == "create":
                subscriber.create_subscription(
                    request=_settings_to_proto(change.settings), timeout=_TIMEOUT
                )
            elif change.settings is not None:
                paths = list(update_mask(change.details))
                subscriber.update_subscription(
                    request={
                        "subscription": _settings_to_proto(change.settings),
                        "update_mask": field_mask_pb2.FieldMask(paths=paths),
                    },
                    timeout=_TIMEOUT,
                )
        except exceptions.GoogleAPICallError as exc:
            raise ProvisionError(
                f"{change.action} {change.kind} {change.name} failed: {api_failure(exc)}"
            ) from exc


def provision(
    topology: Topology,
    *,
    dry_run: bool = False,
    clients: tuple[PublisherClient, SubscriberClient] | None = None,
    iam: bool = True,
    project_number: int | None = None,
) -> Plan:
    """Create or update the topology's topics and subscriptions, then (with `iam`) add their
    IAM bindings through Pub/Sub; returns what it did (or would do).

    The Pub/Sub service agent's bindings need the project's number (`project_number`); without
    it they are left out (`gcloud_script` prints them). Idempotent: a second run plans only
    `unchanged` and `present`. With `dry_run` it only reads.
    """
    from google.api_core import exceptions

    with ExitStack() as stack:
        if clients is None:
            clients = stack.enter_context(admin_clients())
        publisher, subscriber = clients
        try:
            result = plan(topology, publisher, subscriber)
        except exceptions.GoogleAPIError as exc:
            raise ProvisionError(
                f"cannot read project {topology.project}: {api_failure(exc)}"
            ) from exc
        if not dry_run:
            apply(result, publisher, subscriber)
        if iam:
            bindings = iam_bindings(topology, project_number=project_number)
            changes = sync_policies(
                topology.project,
                (b for b in bindings if settable(b)),
                publisher,
                subscriber,
                dry_run=dry_run,
            )
            result = replace(result, iam=changes)
        return result


def _settings_to_proto(settings: SubscriptionSettings) -> Any:
    from google.pubsub_v1 import types

    keep: dict[str, Any] = {}
    if settings.keep is not None:
        ttl = settings.keep.expiration_ttl_seconds
        keep["message_retention_duration"] = dt.timedelta(seconds=settings.keep.retention_seconds)
        # An expiration policy without a ttl is Google's "never expires"; no policy is 31 days.
        keep["expiration_policy"] = types.ExpirationPolicy(
            ttl=dt.timedelta(seconds=ttl) if ttl is not None else None
        )
    subscription = types.Subscription(
        name=settings.name,
        topic=settings.topic,
        ack_deadline_seconds=settings.ack_deadline_seconds,
        **keep,
    )
    if settings.push is not None:
        subscription.push_config = types.PushConfig(
            push_endpoint=settings.push.endpoint,
            attributes=dict(settings.push.attributes),
            oidc_token=types.PushConfig.OidcToken(
                service_account_email=settings.push.service_account,
                audience=settings.push.audience,
            ),
        )
    if settings.minimum_backoff >= 0:
        subscription.retry_policy = types.RetryPolicy(
            minimum_backoff=dt.timedelta(seconds=settings.minimum_backoff),
            maximum_backoff=dt.timedelta(seconds=settings.maximum_backoff),
        )
    if settings.dead_letter_topic is not None:
        subscription.dead_letter_policy = types.DeadLetterPolicy(
            dead_letter_topic=settings.dead_letter_topic,
            max_delivery_attempts=settings.max_delivery_attempts,
        )
    return subscription


def _settings_from_proto(subscription: Any) -> SubscriptionSettings:
    from google.pubsub_v1 import types

    pb = types.Subscription.pb(subscription)
    push = None
    if pb.push_config.push_endpoint:
        push = PushSettings(
            endpoint=pb.push_config.push_endpoint,
            service_account=pb.push_config.oidc_token.service_account_email,
            audience=pb.push_config.oidc_token.audience,
            # Google adds x-goog-version itself; relay manages only its own attributes.
            attributes=tuple(
                sorted(
                    (key, value)
                    for key, value in pb.push_config.attributes.items()
                    if key.startswith("x-relay-")
                )
            ),
        )
    minimum = maximum = -1.0
    if pb.HasField("retry_policy"):
        minimum = pb.retry_policy.minimum_backoff.ToTimedelta().total_seconds()
        maximum = pb.retry_policy.maximum_backoff.ToTimedelta().total_seconds()
    dead_letter_topic = pb.dead_letter_policy.dead_letter_topic or None
    return SubscriptionSettings(
        name=pb.name,
        topic=pb.topic,
        ack_deadline_seconds=pb.ack_deadline_seconds,
        push=push,
        minimum_backoff=minimum,
        maximum_backoff=maximum,
        dead_letter_topic=dead_letter_topic,
        max_delivery_attempts=pb.dead_letter_policy.max_delivery_attempts
        if dead_letter_topic
        else 0,
        keep=_keep_from_proto(pb),
    )


def _keep_from_proto(pb: Any) -> KeepSettings:
    """Retention and expiry as set, or Google's defaults where the subscription sets none."""
    retention = DEFAULT_KEEP.retention_seconds
    if pb.HasField("message_retention_duration"):
        retention = int(pb.message_retention_duration.ToTimedelta().total_seconds())
    ttl = DEFAULT_KEEP.expiration_ttl_seconds
    if pb.HasField("expiration_policy"):
        policy = pb.expiration_policy
        ttl = int(policy.ttl.ToTimedelta().total_seconds()) if policy.HasField("ttl") else None
    return KeepSettings(retention, ttl)


def _topic_to_proto(settings: TopicSettings) -> dict[str, Any]:
    request: dict[str, Any] = {"name": settings.name}
    if settings.retention_seconds is not None:
        request["message_retention_duration"] = dt.timedelta(seconds=settings.retention_seconds)
    return request


def _topic_from_proto(topic: Any) -> TopicSettings:
    retention = topic.message_retention_duration
    seconds = int(retention.total_seconds()) if retention else None
    return TopicSettings(topic.name, seconds or None)
