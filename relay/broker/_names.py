"""Pub/Sub resource names: parse and validate them by Google's rules.

The rules live in relay.protocol: a topic, subscription, snapshot or schema id is RESOURCE_RULE;
any project id of LOCAL_PROJECT_RULE works (the broker is local), control characters never.
"""

from __future__ import annotations

from relay.broker._errors import invalid, plain
from relay.protocol import LOCAL_PROJECT_RULE, RESOURCE_RULE, is_local_project_id, is_resource_id

__all__ = [
    "DELETED_SCHEMA",
    "DELETED_TOPIC",
    "check_project",
    "check_resource",
    "check_schema",
    "check_snapshot",
    "check_subscription",
    "check_topic",
    "project_of",
]

DELETED_TOPIC = "_deleted-topic_"
DELETED_SCHEMA = "_deleted-schema_"


def _check(name: str, collection: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != collection:
        raise invalid(
            f"Invalid [{collection}] name: (name={plain(name)}); expected "
            f"projects/{{project}}/{collection}/{{id}}"
        )
    if not is_local_project_id(parts[1]):
        raise invalid(
            f"Invalid [{collection}] name: (name={plain(name)}); the project id must be "
            f"{LOCAL_PROJECT_RULE}"
        )
    if not is_resource_id(parts[3]):
        raise invalid(
            f"Invalid [{collection}] name: (name={plain(name)}); the id must be {RESOURCE_RULE}"
        )
    return name


def check_topic(name: str) -> str:
    """Return `name` if it is a valid topic name, else raise INVALID_ARGUMENT."""
    return _check(name, "topics")


def check_subscription(name: str) -> str:
    """Return `name` if it is a valid subscription name, else raise INVALID_ARGUMENT."""
    return _check(name, "subscriptions")


def check_schema(name: str) -> str:
    """Return `name` if it is a valid schema name (same id rules), else raise INVALID_ARGUMENT."""
    return _check(name, "schemas")


def check_snapshot(name: str) -> str:
    """Return `name` if it is a valid snapshot name, else raise INVALID_ARGUMENT."""
    return _check(name, "snapshots")


def check_resource(name: str, collection: str) -> str:
    """Return `name` if it is a valid `projects/{p}/{collection}/{id}`, else INVALID_ARGUMENT."""
    return _check(name, collection)


def check_project(name: str) -> str:
    """Return the project id of `projects/{id}`, else raise INVALID_ARGUMENT."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not is_local_project_id(parts[1]):
        raise invalid(
            f"Invalid [projects] name: (name={plain(name)}); expected projects/{{project}} with "
            f"a project id of {LOCAL_PROJECT_RULE}"
        )
    return parts[1]


def project_of(name: str) -> str:
    """The project id of a valid topic, subscription or snapshot name."""
    return name.split("/")[1]
