"""The --grants file: custom roles and the bindings that live outside Pub/Sub's own IAM policies.

```json
{"roles": {"projects/P/roles/relayWaiter": ["pubsub.subscriptions.create", "..."]},
 "bindings": [{"resource": "projects/P", "role": "roles/pubsub.editor",
               "members": ["serviceAccount:a@P.iam.gserviceaccount.com"]}]}
```

A binding's `resource` is a project (`projects/P`: it applies to every resource in it, as a
project-level grant does on Google) or a service account (`projects/P/serviceAccounts/EMAIL`, for
`iam.serviceAccounts.actAs`): what Pub/Sub's own SetIamPolicy cannot set (`relay provision`
writes this file, `project_grants`). Everything is checked when the broker starts; a mistake names
its place in the file and the broker does not start.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.broker._iam import is_custom_role, is_member
from relay.broker._roles import PREDEFINED_ROLES
from relay.protocol import is_local_project_id

__all__ = ["Grants", "GrantsError"]

_PERMISSION = re.compile(r"[a-z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*){2}")
_EMAIL = re.compile(r"[^@\s:?/]+@[^@\s:?/]+")
_MAX_FILE = 4 * 1024 * 1024


class GrantsError(ValueError):
    """The grants file cannot be used; the message names the file and the place in it."""


@dataclass(frozen=True)
class Grants:
    """Custom roles (name -> permissions) and bindings per resource ((role, members) pairs)."""

    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    bindings: dict[str, tuple[tuple[str, frozenset[str]], ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Grants:
        """Read and check the file at `path` (GrantsError naming the first mistake)."""
        try:
            if path.stat().st_size > _MAX_FILE:
                raise GrantsError(f"{path}: larger than {_MAX_FILE} bytes")
            body = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise GrantsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise GrantsError(f"{path}: not JSON ({exc})") from None
        try:
            return cls.parse(body)
        except GrantsError as exc:
            raise GrantsError(f"{path}: {exc}") from None

    @classmethod
    def parse(cls, body: Any) -> Grants:
        """The grants of a decoded file body (GrantsError naming the first mistake)."""
        if not isinstance(body, dict):
            raise GrantsError('expected an object {"roles": {...}, "bindings": [...]}')
        unknown = sorted(set(body) - {"roles", "bindings"})
        if unknown:
            raise GrantsError(f"unknown key(s) {', '.join(map(repr, unknown))}")
        roles = _roles(body.get("roles", {}))
        bindings: dict[str, list[tuple[str, frozenset[str]]]] = {}
        entries = body.get("bindings", [])
        if not isinstance(entries, list):
            raise GrantsError("bindings: expected a list")
        for index, entry in enumerate(entries):
            resource, role, members = _binding(entry, f"bindings[{index}]", roles)
            bindings.setdefault(resource, []).append((role, members))
        return cls(roles, {resource: tuple(pairs) for resource, pairs in bindings.items()})

    def permissions(self, role: str) -> frozenset[str]:
        """What `role` grants: a predefined role's permissions, a custom role's, else none."""
        return PREDEFINED_ROLES.get(role) or self.roles.get(role, frozenset())


def _roles(value: Any) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        raise GrantsError("roles: expected an object {role name: [permission, ...]}")
    roles = {}
    for name, permissions in value.items():
        if not isinstance(name, str) or not is_custom_role(name):
            raise GrantsError(
                f"roles: {str(name)[:200]!r} is not a custom role name "
                "(projects/P/roles/ID or organizations/O/roles/ID)"
            )
        if not isinstance(permissions, list) or not permissions:
            raise GrantsError(f"roles[{name!r}]: expected a non-empty list of permissions")
        for permission in permissions:
            if not isinstance(permission, str) or not _PERMISSION.fullmatch(permission):
                raise GrantsError(
                    f"roles[{name!r}]: {str(permission)[:200]!r} is not a permission "
                    "(service.resource.verb, e.g. pubsub.topics.publish)"
                )
        roles[name] = frozenset(permissions)
    return roles


def _binding(
    entry: Any, where: str, roles: dict[str, frozenset[str]]
) -> tuple[str, str, frozenset[str]]:
    if not isinstance(entry, dict) or set(entry) != {"resource", "role", "members"}:
        raise GrantsError(f'{where}: expected {{"resource": ..., "role": ..., "members": [...]}}')
    resource, role, members = entry["resource"], entry["role"], entry["members"]
    if not isinstance(resource, str) or not _resource_ok(resource):
        raise GrantsError(
            f"{where}.resource: {str(resource)[:200]!r} is not projects/P or "
            "projects/P/serviceAccounts/EMAIL (bindings on topics, subscriptions, snapshots and "
            "schemas belong in their IAM policies: SetIamPolicy)"
        )
    if not isinstance(role, str) or (role not in PREDEFINED_ROLES and role not in roles):
        raise GrantsError(
            f"{where}.role: {str(role)[:200]!r} is neither a predefined role the broker knows "
            f"({', '.join(sorted(PREDEFINED_ROLES))}) nor a custom role defined under roles"
        )
    if not isinstance(members, list) or not members:
        raise GrantsError(f"{where}.members: expected a non-empty list of members")
    for member in members:
        if not isinstance(member, str) or not is_member(member):
            raise GrantsError(
                f"{where}.members: {str(member)[:200]!r} is not a member (serviceAccount:EMAIL, "
                "user:EMAIL, group:EMAIL, domain:DOMAIN, allUsers, allAuthenticatedUsers)"
            )
    return resource, role, frozenset(members)


def _resource_ok(resource: str) -> bool:
    parts = resource.split("/")
    if len(parts) < 2 or parts[0] != "projects" or not is_local_project_id(parts[1]):
        return False
    if len(parts) == 2:
        return True
    return len(parts) == 4 and parts[2] == "serviceAccounts" and bool(_EMAIL.fullmatch(parts[3]))
