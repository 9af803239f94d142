"""Who holds which permission on which resource: the stored IAM policies plus the --grants file.

A principal holds a permission on a resource when a binding on the resource itself (its IAM
policy as SetIamPolicy stored it; for a service account, the grants file) or on its project
(the grants file) gives it, by name or as allUsers/allAuthenticatedUsers, a role with that
permission. That is Google's inheritance with the project as the only ancestor; groups, domains,
deny policies and conditions are not resolved (a binding naming them grants nothing here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import grpc

from relay.broker._errors import BrokerError
from relay.broker._grants import Grants
from relay.broker._iam import IamPolicies
from relay.broker._roles import PREDEFINED_ROLES
from relay.broker._tokens import Principal

__all__ = ["Access", "Check", "identity_project", "service_account_resource"]

Check = tuple[str, str]
"""(permission, resource name) that a call needs."""

_EVERYONE = ("allUsers", "allAuthenticatedUsers")
_SERVICE_ACCOUNT = re.compile(r"[^@/\s]+@([^@./\s]+)\.iam\.gserviceaccount\.com")
_MAX_LISTED_ROLES = 6


def identity_project(email: str) -> str | None:
    """The project of a service account NAME@PROJECT.iam.gserviceaccount.com (else None)."""
    match = _SERVICE_ACCOUNT.fullmatch(email)
    return match.group(1) if match else None


def service_account_resource(email: str) -> str:
    """The IAM resource of a service account: projects/P/serviceAccounts/EMAIL, P from the
    email (NAME@P.iam.gserviceaccount.com), `-` when the email does not say."""
    return f"projects/{identity_project(email) or '-'}/serviceAccounts/{email}"


class Access:
    """Answers `holds` and enforces `require` from the policies and the grants."""

    def __init__(self, grants: Grants, policies: IamPolicies) -> None:
        self.grants = grants
        self.policies = policies

    def holds(self, member: str, permission: str, resource: str) -> bool:
        """Whether `member` holds `permission` on `resource` (or on its project)."""
        permissions = self.grants.permissions
        for role, members in self._bindings(resource):
            if permission in permissions(role) and (
                member in members or any(everyone in members for everyone in _EVERYONE)
            ):
                return True
        return False

    def require(self, principal: Principal, checks: Iterable[Check]) -> None:
        """PERMISSION_DENIED naming the principal and each (permission, resource) it lacks."""
        lacks = self.lacks(principal, checks)
        if lacks is None:
            return
        raise BrokerError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"User not authorized to perform this action: {lacks} "
            "(relay broker: from the resource's IAM policy and the --grants file).",
        )

    def lacks(self, principal: Principal, checks: Iterable[Check]) -> str | None:
        """What `principal` lacks of `checks`, in words naming each permission, its resource and
        the roles that grant it; None when it holds them all."""
        missing = [(p, r) for p, r in checks if not self.holds(principal.member, p, r)]
        if not missing:
            return None
        return f"{principal.member} lacks " + "; and ".join(
            f"permission '{permission}' on resource '{resource}' (or it may not exist), which "
            f"{self._granted_by(permission)} grant there or on its project"
            for permission, resource in missing
        )

    def _bindings(self, resource: str) -> Iterator[tuple[str, Sequence[str] | frozenset[str]]]:
        """(role, members) of every binding on `resource` and on its project."""
        for scope in _scopes(resource):
            yield from self.grants.bindings.get(scope, ())
            policy = self.policies.policies.get(scope)
            if policy is not None:
                for binding in policy.bindings:
                    yield binding.role, binding.members

    def _granted_by(self, permission: str) -> str:
        roles = sorted(
            role
            for role in (*PREDEFINED_ROLES, *self.grants.roles)
            if permission in self.grants.permissions(role)
        )
        if not roles:
            return "no role the broker knows would"
        more = (
            f" and {len(roles) - _MAX_LISTED_ROLES} more" if len(roles) > _MAX_LISTED_ROLES else ""
        )
        return f"{', '.join(roles[:_MAX_LISTED_ROLES])}{more} would"


def _scopes(resource: str) -> tuple[str, ...]:
    """`resource` and the project it belongs to (just `resource` for a project or a name that
    names none)."""
    parts = resource.split("/", 2)
    if len(parts) == 3 and parts[0] == "projects" and parts[1]:
        return (resource, f"projects/{parts[1]}")
    return (resource,)
