"""Set a topology's topic and subscription IAM bindings through Pub/Sub's own IAM methods.

One read-modify-write per resource: GetIamPolicy, add the missing members to the policy as read
(every other binding and member stays), SetIamPolicy with the etag that was read. When someone
else changed the policy in between, Pub/Sub refuses the write (ABORTED) and the whole
read-modify-write is done again, a few times at most. Nothing is ever removed, and a resource
whose policy already has every binding is not written to.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from relay.provision._desired import subscription_path, topic_path
from relay.provision._errors import ProvisionError, api_failure
from relay.provision._iam import Binding

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient, SubscriberClient

IamAction = Literal["add", "present"]

ATTEMPTS = 5
"""Read-modify-writes of one policy before giving up on concurrent changes."""
_BACKOFF_SECONDS = 0.2
_TIMEOUT = 30.0
# Read version 3, as IAM asks of every read-modify-write (an older version could hide the
# conditions of bindings that have them); the policy is written back with the version read.
_POLICY_VERSION = 3


@dataclass(frozen=True)
class IamChange:
    """One binding on one resource: added (or, in a dry run, to be added), or already there."""

    binding: Binding
    resource: str
    """The full resource path, e.g. `projects/p/topics/t`."""
    action: IamAction


def resource_path(project: str, binding: Binding) -> str:
    """The full path of a topic or subscription binding's resource."""
    if binding.kind == "topic":
        return topic_path(project, binding.resource)
    return subscription_path(project, binding.resource)


def sync_policies(
    project: str,
    bindings: Iterable[Binding],
    publisher: PublisherClient,
    subscriber: SubscriberClient,
    *,
    dry_run: bool,
) -> tuple[IamChange, ...]:
    """Add each binding (topic or subscription) to its resource's policy; with `dry_run` only
    read. Returns one change per binding, in order of resource."""
    grouped: dict[str, list[Binding]] = {}
    for binding in bindings:
        grouped.setdefault(resource_path(project, binding), []).append(binding)
    changes: list[IamChange] = []
    for path, wanted in grouped.items():
        client: Any = publisher if wanted[0].kind == "topic" else subscriber
        changes.extend(_sync(client, path, wanted, dry_run=dry_run))
    return tuple(changes)


def _sync(client: Any, path: str, wanted: list[Binding], *, dry_run: bool) -> list[IamChange]:
    """The read-modify-write of one resource's policy, retried on an etag conflict."""
    from google.api_core import exceptions

    for attempt in range(ATTEMPTS):
        policy = _read(client, path, missing_ok=dry_run)
        missing = [b for b in wanted if policy is None or not _holds(policy, b)]
        changes = [IamChange(b, path, "add" if b in missing else "present") for b in wanted]
        if dry_run or not missing:
            return changes
        assert policy is not None
        for binding in missing:
            _add(policy, binding)
        try:
            client.set_iam_policy(
                request={"resource": path, "policy": policy}, retry=None, timeout=_TIMEOUT
            )
        except exceptions.Aborted:
            time.sleep(_BACKOFF_SECONDS * 2**attempt)
            continue
        except exceptions.GoogleAPICallError as exc:
            raise ProvisionError(
                f"setting the IAM policy of {path} failed: {api_failure(exc)} (the account running "
                "relay provision needs setIamPolicy on it, e.g. roles/pubsub.admin; --no-iam "
                "leaves IAM policies alone and prints every binding instead)"
            ) from exc
        return changes
    raise ProvisionError(
        f"the IAM policy of {path} kept changing while relay provision updated it: "
        f"{ATTEMPTS} writes in a row were refused as concurrent changes (ABORTED); nothing "
        "was added to it, run relay provision again"
    )


def _read(client: Any, path: str, *, missing_ok: bool) -> Any:
    """The resource's policy; None for a resource not yet created (a dry run's `create`)."""
    from google.api_core import exceptions

    try:
        return client.get_iam_policy(
            request={"resource": path, "options": {"requested_policy_version": _POLICY_VERSION}},
            timeout=_TIMEOUT,
        )
    except exceptions.NotFound as exc:
        if missing_ok:
            return None
        raise ProvisionError(f"reading the IAM policy of {path} failed: it does not exist") from exc
    except exceptions.GoogleAPICallError as exc:
        raise ProvisionError(
            f"reading the IAM policy of {path} failed: {api_failure(exc)} (the account running "
            "relay provision needs getIamPolicy on it, e.g. roles/pubsub.admin)"
        ) from exc


def _holds(policy: Any, binding: Binding) -> bool:
    """Whether an unconditional binding of the policy gives the role to the member."""
    return any(
        entry.role == binding.role
        and not entry.HasField("condition")
        and binding.member in entry.members
        for entry in policy.bindings
    )


def _add(policy: Any, binding: Binding) -> None:
    """Add the member to the policy's unconditional binding of the role (made if missing)."""
    for entry in policy.bindings:
        if entry.role == binding.role and not entry.HasField("condition"):
            entry.members.append(binding.member)
            return
    policy.bindings.add(role=binding.role, members=[binding.member])
