"""Worker side of a request: build the events, validate them, create their completion subscriptions,
then publish. Order matters: a subscription only keeps messages published after it exists, so every
completion subscription is created before the first request goes out."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.airflow._names import check_correlation_id
from relay.airflow.exceptions import RelayConfigError
from relay.airflow.hooks import DEFAULT_SUBSCRIPTION_TTL, RelayHook
from relay.protocol import Event, default_registry, new_request, to_binary


@dataclass(frozen=True)
class Published:
    """One published request: its ce-id, correlation id, completion subscription, Pub/Sub id."""

    event_id: str
    correlation_id: str
    subscription: str | None
    message_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for XCom."""
        return asdict(self)


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


def default_source(dag_id: str, task_id: str) -> str:
    """The ce-source of requests from an Airflow task."""
    return f"/airflow/dags/{dag_id}/tasks/{task_id}"


def build_requests(
    event_type: str,
    items: Sequence[Any],
    *,
    source: str,
    reply_to: str,
    correlation_ids: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    expiry: datetime | timedelta | None = None,
    validate: bool = True,
) -> list[Event]:
    """One request event per item; SchemaValidationError (JSON path) before anything is sent.

    `ids` are the ce-ids (default: random); a correlation id defaults to its request's ce-id.
    """
    for name, given in (("correlation ids", correlation_ids), ("ids", ids)):
        if given is not None and len(given) != len(items):
            raise RelayConfigError(
                f"got {len(given)} {name} for {len(items)} items; give one per item"
            )
    if isinstance(expiry, timedelta):
        expiry = datetime.now(UTC) + expiry
    registry = default_registry() if validate else None
    events = []
    for index, data in enumerate(items):
        if registry is not None:
            registry.validate(event_type, data)
        cid = check_correlation_id(correlation_ids[index]) if correlation_ids is not None else None
        event = new_request(
            event_type,
            data,
            source=source,
            reply_to=reply_to,
            correlation_id=cid,
            id=ids[index] if ids is not None else None,
            expiry=expiry,
        )
        check_correlation_id(event.correlationid)
        events.append(event)
    seen = {e.correlationid for e in events}
    if len(seen) != len(events):
        raise RelayConfigError("correlation ids must be unique within one task")
    return events


def publish_requests(
    hook: RelayHook,
    *,
    topic: str,
    reply_topic: str,
    events: Sequence[Event],
    create_subscriptions: bool = True,
    subscription_ttl: timedelta = DEFAULT_SUBSCRIPTION_TTL,
    attempts: int = 5,
    timeout: float = 30.0,
) -> list[Published]:
    """Create the completion subscriptions, then publish; on a publish failure the subscriptions
    just created are deleted again and the error propagates."""
    messages = [to_binary(event) for event in events]  # LimitError before any side effect
    subscriptions: list[str | None] = [None] * len(events)

    def subscribe(index: int) -> None:
        cid = str(events[index].correlationid)
        subscriptions[index] = hook.create_wait_subscription(reply_topic, cid, ttl=subscription_ttl)

    try:
        if create_subscriptions:
            # admin calls are round trips: a few in parallel for a big fan-out
            with ThreadPoolExecutor(min(8, len(events) or 1)) as pool:
                list(pool.map(subscribe, range(len(events))))
        message_ids = hook.publish(topic, messages, attempts=attempts, timeout=timeout)
    except BaseException:
        hook.delete_subscriptions([s for s in subscriptions if s is not None])
        raise
    return [
        Published(event.id, str(event.correlationid), subscription, message_id)
        for event, subscription, message_id in zip(events, subscriptions, message_ids, strict=True)
    ]
