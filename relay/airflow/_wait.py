"""What a task waits for, as one value: `ResultWait` (built and validated once, serialized once into
trigger kwargs and events), and `WaitOutcome`, what a wait found.

Waits deferred by relay 0.1 (trigger kwargs `completion_topic` + `waits`: one subscription per
request) are read into the same value, so a task deferred before an upgrade resumes after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.airflow._names import (
    check_correlation_id,
    check_subscription_path,
    check_topic_path,
    correlation_group,
    grouped_id,
    task_subscription,
)
from relay.airflow.exceptions import RelayConfigError

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook

FAIL_FAST = "fail_fast"
COLLECT_ALL = "collect_all"
POLICIES = (FAIL_FAST, COLLECT_ALL)

DONE = "done"
TIMEOUT = "timeout"
ERROR = "error"


def check_policy(policy: object) -> str:
    """`policy` if it is one of POLICIES, else RelayConfigError."""
    if policy not in POLICIES:
        raise RelayConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
    return str(policy)


@dataclass(frozen=True)
class ResultWait:
    """The results one task waits for: correlation ids (item order) of one group, read from the
    group's completion subscription on `completion_topic`, until `deadline` (epoch seconds,
    absolute so a re-run trigger keeps it) under `policy`.

    `legacy_subscriptions` is set only for a wait deferred by relay 0.1: one subscription per
    correlation id, in the same order.
    """

    completion_topic: str
    subscription: str
    correlation_ids: tuple[str, ...]
    deadline: float
    policy: str = COLLECT_ALL
    legacy_subscriptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_topic_path(self.completion_topic)
        check_policy(self.policy)
        if not self.correlation_ids:
            raise RelayConfigError("a wait needs at least one correlation id")
        if len(set(self.correlation_ids)) != len(self.correlation_ids):
            seen: set[str] = set()
            for cid in self.correlation_ids:
                if cid in seen:
                    raise RelayConfigError(f"correlation id {cid} appears twice in one wait")
                seen.add(cid)
        if self.legacy_subscriptions:
            if len(self.legacy_subscriptions) != len(self.correlation_ids):
                raise RelayConfigError("a legacy wait needs one subscription per correlation id")
            for cid, sub in zip(self.correlation_ids, self.legacy_subscriptions, strict=True):
                check_correlation_id(cid)
                check_subscription_path(sub)
            return
        check_subscription_path(self.subscription)
        group = correlation_group(self.correlation_ids[0])
        for cid in self.correlation_ids:
            if correlation_group(cid) != group:
                raise RelayConfigError(
                    f"correlation ids of one wait share one group: {cid!r} is not in group "
                    f"{group!r} (the group names the completion subscription)"
                )

    @property
    def group(self) -> str:
        """The correlation-id group (not set for a legacy wait)."""
        return "" if self.legacy_subscriptions else correlation_group(self.correlation_ids[0])

    def subscriptions(self) -> dict[str, tuple[str, ...]]:
        """Each subscription to read and the correlation ids whose results it holds."""
        if not self.legacy_subscriptions:
            return {self.subscription: self.correlation_ids}
        by: dict[str, list[str]] = {}
        for cid, sub in zip(self.correlation_ids, self.legacy_subscriptions, strict=True):
            by.setdefault(sub, []).append(cid)
        return {sub: tuple(cids) for sub, cids in by.items()}

    def with_deadline(self, deadline: float) -> ResultWait:
        """The same wait with another deadline."""
        return dataclasses.replace(self, deadline=deadline)

    # -- JSON (trigger kwargs and events) ---------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form; ids `<group>.0` ... `<group>.<n-1>` travel as their group and count."""
        data: dict[str, Any] = {
            "topic": self.completion_topic,
            "deadline": self.deadline,
            "policy": self.policy,
        }
        if self.legacy_subscriptions:
            data["legacy"] = [
                [cid, sub]
                for cid, sub in zip(self.correlation_ids, self.legacy_subscriptions, strict=True)
            ]
            return data
        data["subscription"] = self.subscription
        group = self.group
        if self.correlation_ids == tuple(f"{group}.{i}" for i in range(len(self.correlation_ids))):
            data["group"], data["count"] = group, len(self.correlation_ids)
        else:
            data["ids"] = list(self.correlation_ids)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultWait:
        """The wait `to_json` wrote (validated again: it crossed a process boundary)."""
        try:
            common = {
                "completion_topic": data["topic"],
                "deadline": float(data["deadline"]),
                "policy": data["policy"],
            }
            if "legacy" in data:
                return from_legacy(data["legacy"], **common)
            if "ids" in data:
                ids = tuple(str(c) for c in data["ids"])
            else:
                ids = tuple(grouped_id(data["group"], i) for i in range(int(data["count"])))
            return cls(subscription=data["subscription"], correlation_ids=ids, **common)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RelayConfigError):
                raise
            raise RelayConfigError(f"not a relay wait: {exc!r} in {dict(data)!r:.300}") from None


def published_wait(
    hook: RelayHook,
    reply_topic: str,
    correlation_ids: str | Sequence[Any],
    *,
    deadline: float,
    policy: str,
) -> ResultWait:
    """The wait of RelayResultSensor: for ids published earlier (one id or a list, one group), on
    their group's completion subscription, which the publishing task created."""
    ids = [correlation_ids] if isinstance(correlation_ids, str) else list(correlation_ids)
    if not ids:
        raise RelayConfigError("correlation_ids is empty")
    cids = tuple(str(cid) for cid in ids)
    topic = hook.topic_path(reply_topic)
    return ResultWait(
        completion_topic=topic,
        subscription=task_subscription(hook.wait_project_id, topic, correlation_group(cids[0])),
        correlation_ids=cids,
        deadline=deadline,
        policy=policy,
    )


def from_legacy(
    waits: Mapping[str, str] | Sequence[Sequence[str]],
    *,
    completion_topic: str,
    deadline: float,
    policy: str,
) -> ResultWait:
    """A relay 0.1 wait: `waits` as {correlation id: subscription} or [[id, subscription], ...]."""
    pairs = list(waits.items()) if isinstance(waits, Mapping) else list(waits)
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise RelayConfigError(f"waits must be [correlation id, subscription] pairs: {pair!r}")
    return ResultWait(
        completion_topic=completion_topic,
        subscription="",
        correlation_ids=tuple(str(cid) for cid, _ in pairs),
        deadline=deadline,
        policy=policy,
        legacy_subscriptions=tuple(str(sub) for _, sub in pairs),
    )


@dataclass(frozen=True)
class WaitOutcome:
    """What a wait found: `status` (done, timeout or error), the message id of each correlation
    id's result (None: none found), and an error text for status error."""

    wait: ResultWait
    status: str
    message_ids: tuple[str | None, ...]
    message: str = ""

    def found(self) -> dict[str, str]:
        """{correlation id: message id} of the results found, in item order."""
        return {
            cid: mid
            for cid, mid in zip(self.wait.correlation_ids, self.message_ids, strict=True)
            if mid is not None
        }

    def to_event(self) -> dict[str, Any]:
        """The trigger event's payload."""
        return {
            "status": self.status,
            "wait": self.wait.to_json(),
            "message_ids": list(self.message_ids),
            "message": self.message,
        }

    @classmethod
    def from_event(cls, event: Mapping[str, Any], *, completion_topic: str) -> WaitOutcome:
        """The outcome in a trigger event: this version's, or relay 0.1's (`waits` + `results`,
        which did not name its completion topic: the resuming task's `completion_topic`)."""
        if "wait" in event:
            wait = ResultWait.from_json(event["wait"])
            ids = [None if m is None else str(m) for m in event.get("message_ids") or ()]
            if len(ids) != len(wait.correlation_ids):
                raise RelayConfigError("the wait event has no message id slot per correlation id")
            return cls(wait, str(event["status"]), tuple(ids), str(event.get("message") or ""))
        wait = from_legacy(
            event["waits"], completion_topic=completion_topic, deadline=0.0, policy=COLLECT_ALL
        )
        results: Mapping[str, Mapping[str, Any]] = event.get("results") or {}
        found = tuple(
            str(results[cid]["message_id"]) if cid in results else None
            for cid in wait.correlation_ids
        )
        return cls(wait, str(event["status"]), found, str(event.get("message") or ""))
