"""The predefined IAM roles the broker knows under --require-auth, and the permissions in each.

From Google's IAM roles reference (Pub/Sub roles, basic roles, the service-account roles). Of the
basic roles only their Pub/Sub permissions and `iam.serviceAccounts.actAs` are listed: nothing
else is checked here. Custom roles come from the --grants file (`_grants`).
"""

from __future__ import annotations

__all__ = ["ACT_AS", "PREDEFINED_ROLES", "PUBSUB_PERMISSIONS"]

ACT_AS = "iam.serviceAccounts.actAs"


def _verbs(collection: str, *verbs: str) -> frozenset[str]:
    return frozenset(f"pubsub.{collection}.{verb}" for verb in verbs)


# Every Pub/Sub permission: those grantable on a resource (`_iam.PERMISSIONS`) plus the
# project-level ones (create, list, schemas.validate).
_TOPICS_EDIT = _verbs(
    "topics",
    "attachSubscription",
    "create",
    "delete",
    "detachSubscription",
    "get",
    "list",
    "publish",
    "update",
    "updateTag",
)
_SUBSCRIPTIONS_EDIT = _verbs(
    "subscriptions", "consume", "create", "delete", "get", "list", "update"
)
_SNAPSHOTS_EDIT = _verbs("snapshots", "create", "delete", "get", "list", "seek", "update")
_SCHEMAS_EDIT = _verbs(
    "schemas",
    "attach",
    "commit",
    "create",
    "delete",
    "get",
    "list",
    "listRevisions",
    "rollback",
    "validate",
)
_POLICIES = frozenset(
    f"pubsub.{collection}.{verb}"
    for collection in ("topics", "subscriptions", "snapshots", "schemas")
    for verb in ("getIamPolicy", "setIamPolicy")
)
_EDITOR = _TOPICS_EDIT | _SUBSCRIPTIONS_EDIT | _SNAPSHOTS_EDIT | _SCHEMAS_EDIT
PUBSUB_PERMISSIONS = _EDITOR | _POLICIES
_VIEWER = (
    _verbs("topics", "get", "list")
    | _verbs("subscriptions", "get", "list")
    | _verbs("snapshots", "get", "list")
    | _verbs("schemas", "get", "list", "listRevisions", "validate")
)

PREDEFINED_ROLES: dict[str, frozenset[str]] = {
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.subscriber": frozenset(
        {
            "pubsub.snapshots.seek",
            "pubsub.subscriptions.consume",
            "pubsub.topics.attachSubscription",
        }
    ),
    "roles/pubsub.viewer": _VIEWER,
    "roles/pubsub.editor": _EDITOR,
    "roles/pubsub.admin": PUBSUB_PERMISSIONS,
    "roles/viewer": _VIEWER,
    "roles/editor": _EDITOR | {ACT_AS},
    "roles/owner": PUBSUB_PERMISSIONS | {ACT_AS},
    "roles/iam.serviceAccountUser": frozenset(
        {ACT_AS, "iam.serviceAccounts.get", "iam.serviceAccounts.list"}
    ),
    "roles/iam.serviceAccountTokenCreator": frozenset(
        {
            "iam.serviceAccounts.getAccessToken",
            "iam.serviceAccounts.getOpenIdToken",
            "iam.serviceAccounts.implicitDelegation",
            "iam.serviceAccounts.signBlob",
            "iam.serviceAccounts.signJwt",
        }
    ),
}
