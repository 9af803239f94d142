"""Google's administrator-operation quota: 6,000 operations per minute per project.

Google's quota page (cloud.google.com/pubsub/quotas) lists "Administrator operations" among the
quotas charged "against the project associated with the caller's credentials, not against the
project that contains the requested resource", and shows `gcloud pubsub subscriptions list`
being charged to it: listing and getting resources count, not only changing them. The set below
is the one place that says which gRPC methods count; the gRPC layer (`_gate`) charges every call
of these methods, whether the broker serves the method yet or not.

So the broker charges the project of the `x-goog-user-project` metadata (what google-auth sends
for a quota project) when present; else, with --require-auth, the project of the caller's
credentials (the project of its service account, NAME@PROJECT.iam.gserviceaccount.com): a
subscription created in a wait project of its own is charged to the caller's project, as on
Google. Without credentials (or for a caller whose email names no project) it charges the project
in the request's resource name.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import grpc

from relay.broker._errors import BrokerError

__all__ = ["ADMIN_METHODS", "DEFAULT_ADMIN_OPS_PER_MINUTE", "AdminQuota", "charged_project"]

DEFAULT_ADMIN_OPS_PER_MINUTE = 6_000
_WINDOW_SECONDS = 60.0

ADMIN_METHODS = frozenset(
    {
        # Publisher
        "CreateTopic",
        "UpdateTopic",
        "GetTopic",
        "ListTopics",
        "ListTopicSubscriptions",
        "ListTopicSnapshots",
        "DeleteTopic",
        "DetachSubscription",
        # Subscriber
        "CreateSubscription",
        "GetSubscription",
        "UpdateSubscription",
        "ListSubscriptions",
        "DeleteSubscription",
        "ModifyPushConfig",
        "GetSnapshot",
        "ListSnapshots",
        "CreateSnapshot",
        "UpdateSnapshot",
        "DeleteSnapshot",
        "Seek",
    }
)

# Request fields that may name the resource (or project) an operation is about, in the order
# they are looked at; a message-valued field (UpdateTopic's `topic`, say) is read by its `name`.
_RESOURCE_FIELDS = ("name", "project", "topic", "subscription", "snapshot", "resource", "parent")


def charged_project(request: Any, metadata: Any, caller_project: str | None = None) -> str:
    """The project an administrator operation is charged to ("" if none can be told):
    x-goog-user-project, else `caller_project` (the project of the caller's credentials), else
    the resource's."""
    for key, value in metadata or ():
        if key == "x-goog-user-project" and value:
            return str(value)
    if caller_project:
        return caller_project
    fields = request.DESCRIPTOR.fields_by_name
    for field in _RESOURCE_FIELDS:
        if field not in fields:
            continue
        value = getattr(request, field)
        if not isinstance(value, str):
            value = getattr(value, "name", "")
        parts = value.split("/")
        if len(parts) >= 2 and parts[0] == "projects" and parts[1]:
            return str(parts[1])
    return ""


class AdminQuota:
    """A rolling-minute budget of administrator operations per project, on the broker's clock."""

    def __init__(self, per_minute: int = DEFAULT_ADMIN_OPS_PER_MINUTE) -> None:
        if per_minute < 1:
            raise ValueError("admin_ops_per_minute must be at least 1")
        self.per_minute = per_minute
        self._calls: dict[str, deque[float]] = {}

    def charge(self, project: str, now: float) -> None:
        """Count one operation of `project` at broker time `now`, or raise RESOURCE_EXHAUSTED."""
        calls = self._calls.get(project)
        if calls is None:
            calls = self._calls[project] = deque()
        horizon = now - _WINDOW_SECONDS
        while calls and calls[0] <= horizon:
            calls.popleft()
        if len(calls) >= self.per_minute:
            raise BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "Quota exceeded for quota metric 'Administrator operations' and limit "
                f"'Administrator operations per minute per project' of service "
                f"'pubsub.googleapis.com' for consumer 'project:{project}': "
                f"{self.per_minute} operations per rolling minute (relay broker "
                "--admin-ops-per-minute; Google's is 6,000 and cannot be raised).",
            )
        calls.append(now)
