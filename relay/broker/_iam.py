"""IAM policies of Pub/Sub resources (the google.iam.v1.IAMPolicy service), kept per resource name.

The gRPC API has no authentication yet, so nothing is enforced here: policies are validated as
Google validates them, stored durably with an etag (optimistic concurrency, as in policy.proto)
and dropped with their resource; TestIamPermissions grants every requested permission that exists
on the resource type. `PERMISSIONS` is the one list of those permissions per resource type, for
the issue that will enforce policies. Resource types plug in by collection name (`exists`), so the
schema service registers "schemas" the same way topics, subscriptions and snapshots are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import grpc
from google.iam.v1 import policy_pb2

from relay.broker._errors import BrokerError, invalid, not_found
from relay.broker._names import check_resource
from relay.broker._store import Statement, Store

__all__ = ["EMPTY_ETAG", "MAX_PRINCIPALS", "PERMISSIONS", "ROLES", "IamPolicies", "Policy"]

Policy: Any = policy_pb2.Policy

# Permissions that can be granted on each type of Pub/Sub resource (Google's access-control page;
# project-level ones such as pubsub.topics.create or .list are not grantable on a resource).
PERMISSIONS: dict[str, frozenset[str]] = {
    "topics": frozenset(
        f"pubsub.topics.{verb}"
        for verb in (
            "attachSubscription",
            "delete",
            "detachSubscription",
            "get",
            "getIamPolicy",
            "publish",
            "setIamPolicy",
            "update",
            "updateTag",
        )
    ),
    "subscriptions": frozenset(
        f"pubsub.subscriptions.{verb}"
        for verb in ("consume", "delete", "get", "getIamPolicy", "setIamPolicy", "update")
    ),
    "snapshots": frozenset(
        f"pubsub.snapshots.{verb}"
        for verb in ("delete", "get", "getIamPolicy", "seek", "setIamPolicy", "update")
    ),
    "schemas": frozenset(
        f"pubsub.schemas.{verb}"
        for verb in (
            "attach",
            "commit",
            "delete",
            "get",
            "getIamPolicy",
            "listRevisions",
            "rollback",
            "setIamPolicy",
        )
    ),
}

# Predefined roles a Pub/Sub resource accepts: the basic roles and Pub/Sub's own. Custom roles
# (projects/P/roles/R, organizations/O/roles/R) are accepted too.
ROLES = frozenset(
    {
        "roles/owner",
        "roles/editor",
        "roles/viewer",
        "roles/pubsub.admin",
        "roles/pubsub.editor",
        "roles/pubsub.publisher",
        "roles/pubsub.subscriber",
        "roles/pubsub.viewer",
    }
)
_CUSTOM_ROLE = re.compile(r"(projects|organizations)/[^/\s]{1,100}/roles/[A-Za-z0-9_.]{3,64}")

# "The bindings in a Policy can refer to up to 1,500 principals" (policy.proto).
MAX_PRINCIPALS = 1_500
_MAX_MEMBER_CHARS = 1_024  # far above any valid principal; bounds the work on hostile input
# What Google returns as the etag of a resource that never had a policy ("ACAB" in JSON).
EMPTY_ETAG = b"\x00\x20\x01"
_VERSIONS = (0, 1, 3)
_MASK_PATHS = ("bindings", "etag", "version", "audit_configs")
_DEFAULT_MASK = ["bindings", "etag"]  # iam_policy.proto: `paths: "bindings, etag"`

_EMAIL = r"[^@\s:?]+@[^@\s:?]+"
_MEMBER = re.compile(
    rf"allUsers|allAuthenticatedUsers"
    rf"|(user|serviceAccount|group):{_EMAIL}"
    rf"|deleted:(user|serviceAccount|group):{_EMAIL}\?uid=\d+"
    r"|domain:[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+"
    r"|principal(Set)?://\S+"
)

_SQL_PUT = "INSERT OR REPLACE INTO iam_policies (resource, body) VALUES (?, ?)"
_SQL_DROP = "DELETE FROM iam_policies WHERE resource = ?"


class IamPolicies:
    """The stored policies, by resource name; `exists` maps a collection to its existence check."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.policies: dict[str, Any] = {}
        self.exists: dict[str, Callable[[str], bool]] = {}

    def load(self) -> None:
        """Read every stored policy (at start)."""
        for resource, body in self.store.read("SELECT resource, body FROM iam_policies"):
            self.policies[resource] = Policy.FromString(body)

    # -- the three RPCs ---------------------------------------------------------------------------

    def get(self, resource: str, requested_version: int) -> Any:
        """GetIamPolicy: the stored policy, or an empty one (etag "ACAB") if none was set."""
        self._existing(resource)
        if requested_version not in _VERSIONS:
            raise invalid(
                f"Invalid options.requested_policy_version: {requested_version}; valid values "
                "are 0, 1 and 3."
            )
        stored = self.policies.get(resource)
        return stored if stored is not None else Policy(etag=EMPTY_ETAG)

    async def set(self, resource: str, policy: Any, paths: list[str]) -> Any:
        """SetIamPolicy: replace the fields of the update mask (default `bindings, etag`)."""
        self._existing(resource)
        paths = paths or _DEFAULT_MASK
        for path in paths:
            if path not in _MASK_PATHS:
                raise invalid(
                    f"Invalid update_mask path: {path!r}; a policy update may name "
                    f"{', '.join(_MASK_PATHS)}."
                )
        if policy.version not in _VERSIONS:
            raise invalid(f"Invalid policy version: {policy.version}; valid values are 0, 1 and 3.")
        if "audit_configs" in paths and policy.audit_configs:
            raise invalid(
                "Pub/Sub resources do not accept audit_configs: audit logging is configured on "
                "the project, folder or organization."
            )
        current = self.policies.get(resource)
        etag = current.etag if current is not None else EMPTY_ETAG
        if "etag" in paths and policy.etag and policy.etag != etag:
            raise BrokerError(
                grpc.StatusCode.ABORTED,
                "There were concurrent policy changes. Please retry the whole read-modify-write "
                "with exponential backoff.",
            )
        updated = Policy()
        if current is not None:
            updated.CopyFrom(current)
        if "bindings" in paths:
            merged = _checked_bindings(policy)
            del updated.bindings[:]
            for role, members in merged.items():
                updated.bindings.add(role=role, members=members)
        # "if you specify version 3, but the policy has no conditional role bindings, the
        # response uses version 1" (options.proto); conditions are refused above.
        updated.version = 1
        updated.etag = os.urandom(8)
        await self.store.submit(
            [(_SQL_PUT, [(resource, updated.SerializeToString())])],
            what=f"the IAM policy of {resource}",
        )
        self.policies[resource] = updated
        return updated

    def test(self, resource: str, permissions: list[str]) -> list[str]:
        """TestIamPermissions: the requested permissions that exist on this resource type (all
        granted: no auth yet); none if the resource does not exist, as iam_policy.proto says."""
        collection = _collection(resource)
        valid = PERMISSIONS[collection]
        for permission in permissions:
            if "*" in permission:
                raise invalid(
                    f"Invalid permission {permission[:200]!r}: permissions with wildcards (such "
                    "as '*' or 'pubsub.*') are not allowed."
                )
        bad = [p for p in permissions if p not in valid]
        if bad:
            raise invalid(
                f"Invalid permission(s) for a Pub/Sub {collection[:-1]}: "
                f"{', '.join(p[:200] for p in bad[:10])}; "
                f"valid ones are {', '.join(sorted(valid))}."
            )
        exists = self.exists.get(collection)
        if exists is None or not exists(resource):
            return []
        return list(dict.fromkeys(permissions))

    # -- lifecycle --------------------------------------------------------------------------------

    def drop_statement(self, resource: str, statements: list[Statement]) -> None:
        """The resource is being deleted: its policy goes with it (in the same transaction);
        `forget` it once that is committed."""
        if resource in self.policies:
            statements.append((_SQL_DROP, [(resource,)]))

    def forget(self, resource: str) -> None:
        """The deletion of `resource` was committed: its policy is gone."""
        self.policies.pop(resource, None)

    def _existing(self, resource: str) -> str:
        collection = _collection(resource)
        exists = self.exists.get(collection)
        if exists is None or not exists(resource):
            raise not_found(collection[:-1], resource)
        return collection


def _collection(resource: str) -> str:
    """The collection of a Pub/Sub resource name; INVALID_ARGUMENT for anything else."""
    parts = resource.split("/")
    if len(parts) == 2 and parts[0] == "projects":
        raise invalid(
            "This service cannot be used to manage the permissions of resources of type project "
            f"({resource[:200]}); use the Resource Manager API."
        )
    if len(parts) != 4 or parts[0] != "projects" or parts[2] not in PERMISSIONS:
        raise invalid(
            f"Invalid resource name {resource[:200]!r}: expected "
            "projects/{project}/{topics|subscriptions|snapshots|schemas}/{id}."
        )
    check_resource(resource, parts[2])
    return parts[2]


def _checked_bindings(policy: Any) -> dict[str, list[str]]:
    """The policy's bindings merged by role, members deduplicated; INVALID_ARGUMENT naming the
    first bad role or member."""
    merged: dict[str, dict[str, None]] = {}
    count = sum(len(binding.members) for binding in policy.bindings)
    if count > MAX_PRINCIPALS:  # checked before the members themselves: bounds hostile input
        raise invalid(
            f"The policy refers to {count} principals; a policy can refer to at most "
            f"{MAX_PRINCIPALS}."
        )
    for binding in policy.bindings:
        role = binding.role
        if role not in ROLES and not _CUSTOM_ROLE.fullmatch(role):
            raise invalid(
                f"Role {role[:200]!r} is not supported for this resource; use a basic role "
                "(roles/owner, roles/editor, roles/viewer), a Pub/Sub role (roles/pubsub.*) or "
                "a custom role."
            )
        if binding.HasField("condition"):
            raise invalid(
                f"The binding of {role} has a condition: Pub/Sub resources do not accept "
                "conditional role bindings."
            )
        if not binding.members:
            raise invalid(f"The binding of {role} has no members; each binding needs one or more.")
        members = merged.setdefault(role, {})
        for member in binding.members:
            if len(member) > _MAX_MEMBER_CHARS or not _MEMBER.fullmatch(member):
                raise invalid(
                    f"Invalid member {member[:200]!r} in the binding of {role}: expected allUsers, "
                    "allAuthenticatedUsers, user:EMAIL, serviceAccount:EMAIL, group:EMAIL, "
                    "domain:DOMAIN, deleted:...:EMAIL?uid=ID or principal(Set)://..."
                )
            members[member] = None
    return {role: list(members) for role, members in merged.items()}
