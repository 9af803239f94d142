"""Worker side of a request: build the events, validate them, create the task's completion
subscription, then publish. Order matters: a subscription only keeps messages published after it
exists, so the subscription is created (and sought back) before the first request goes out.

One task instance, one subscription: its requests' correlation ids are `<group>.<index>` (or ids
the DAG gives, all in one group), so however many requests it sends, a task costs at most three
administrator operations (create, seek, delete).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from relay.airflow._lifetimes import DEFAULT_SUBSCRIPTION_RETENTION, DEFAULT_SUBSCRIPTION_TTL
from relay.airflow._names import check_correlation_id, correlation_group, grouped_id, task_group
from relay.airflow.exceptions import RelayConfigError
from relay.protocol import Event, default_registry, new_request, to_binary

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook


@dataclass(frozen=True)
class Published:
    """What a task published: the ce-ids and correlation ids in item order, the group's completion
    subscription (None when not created) and the Pub/Sub message ids."""

    event_ids: tuple[str, ...]
    correlation_ids: tuple[str, ...]
    subscription: str | None
    message_ids: tuple[str, ...]

    def requests(self) -> list[dict[str, Any]]:
        """One JSON-ready {event_id, correlation_id, subscription, message_id} per request."""
        return [
            {"event_id": e, "correlation_id": c, "subscription": self.subscription, "message_id": m}
            for e, c, m in zip(self.event_ids, self.correlation_ids, self.message_ids, strict=True)
        ]


# Fixed namespace of relay's task-instance request ids (uuid5).
_REQUEST_IDS = uuid.UUID("6b3f0a52-8f4e-4d1c-9a57-0c2d1e7b9f10")


def task_request_ids(context: Any, count: int) -> list[str]:
    """Request ids that are stable for one task instance (dag, run, task, map index, item index).

    A retried or resumed task re-sends the same requests (same ce-id and correlation id), so a
    retained result, or a function with an idempotency store, answers it instead of a second run.
    """
    ti = context["ti"]
    base = f"{ti.dag_id}\0{ti.run_id}\0{ti.task_id}\0{ti.map_index}"
    return [str(uuid.uuid5(_REQUEST_IDS, f"{base}\0{index}")) for index in range(count)]


def context_group(context: Any) -> str:
    """The correlation-id group of the running task instance."""
    ti = context["ti"]
    return task_group(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)


def correlation_ids_for(group: str, count: int, given: Sequence[str] | None) -> list[str]:
    """The correlation ids of `count` requests: `<group>.<index>`, or the ones given (one per
    item, unique, all in one group: RelayConfigError names the first that is not)."""
    if given is None:
        return [grouped_id(group, index) for index in range(count)]
    if len(given) != count:
        raise RelayConfigError(f"got {len(given)} correlation ids for {count} items; give one each")
    ids = [check_correlation_id(cid) for cid in given]
    first = correlation_group(ids[0]) if ids else group
    for cid in ids:
        if correlation_group(cid) != first:
            raise RelayConfigError(
                f"correlation id {cid!r} is not in group {first!r}: the ids of one task share "
                "one group (the part before the first '.'), which names its completion "
                "subscription"
            )
    if len(set(ids)) != len(ids):
        raise RelayConfigError("correlation ids must be unique within one task")
    return ids


def default_source(dag_id: str, task_id: str) -> str:
    """The ce-source of requests from an Airflow task."""
    return f"/airflow/dags/{dag_id}/tasks/{task_id}"


def build_requests(
    event_type: str,
    items: Sequence[Any],
    *,
    source: str,
    reply_to: str,
    correlation_ids: Sequence[str],
    ids: Sequence[str] | None = None,
    expiry: datetime | timedelta | None = None,
    validate: bool = True,
) -> list[Event]:
    """One request event per item; SchemaValidationError (JSON path) before anything is sent.

    `correlation_ids` come from `correlation_ids_for`; `ids` are the ce-ids (default: random).
    """
    if ids is not None and len(ids) != len(items):
        raise RelayConfigError(f"got {len(ids)} ids for {len(items)} items; give one per item")
    if isinstance(expiry, timedelta):
        expiry = datetime.now(UTC) + expiry
    registry = default_registry() if validate else None
    events = []
    for index, data in enumerate(items):
        if registry is not None:
            registry.validate(event_type, data)
        events.append(
            new_request(
                event_type,
                data,
                source=source,
                reply_to=reply_to,
                correlation_id=correlation_ids[index],
                id=ids[index] if ids is not None else None,
                expiry=expiry,
            )
        )
    return events


def publish_requests(
    hook: RelayHook,
    *,
    topic: str,
    reply_topic: str,
    events: Sequence[Event],
    deadline: float,
    create_subscription: bool = True,
    subscription_ttl: timedelta | None = DEFAULT_SUBSCRIPTION_TTL,
    subscription_retention: timedelta = DEFAULT_SUBSCRIPTION_RETENTION,
    attempts: int = 5,
    timeout: float = 30.0,
) -> Published:
    """Create the group's completion subscription, then publish; on a publish failure the
    subscription just created is deleted again and the error propagates."""
    messages = [to_binary(event) for event in events]  # LimitError before any side effect
    cids = tuple(str(event.correlationid) for event in events)
    subscription = None
    try:
        if create_subscription and events:
            subscription = hook.create_task_subscription(
                reply_topic,
                correlation_group(cids[0]),
                deadline=deadline,
                ttl=subscription_ttl,
                retention=subscription_retention,
            )
        message_ids = hook.publish(
            topic, messages, attempts=attempts, timeout=timeout, deadline=deadline
        )
    except BaseException:
        if subscription is not None:
            hook.delete_subscriptions([subscription])
        raise
    return Published(tuple(event.id for event in events), cids, subscription, tuple(message_ids))
