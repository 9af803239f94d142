"""Pub/Sub resource names: parse and validate them by Google's rules.

A topic, subscription, snapshot or schema id starts with a letter, is 3-255 characters of letters,
digits and `-_.~+%`, and does not start with "goog". Any project id works (the broker is local).
"""

from __future__ import annotations

import re

from relay.broker._errors import invalid

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
_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_PROJECT = re.compile(r"[^/\s]{1,100}")


def _check(name: str, collection: str) -> str:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "projects"
        or parts[2] != collection
        or not _PROJECT.fullmatch(parts[1])
    ):
        raise invalid(
            f"Invalid [{collection}] name: (name={name[:300]}); expected "
            f"projects/{{project}}/{collection}/{{id}}"
        )
    resource_id = parts[3]
    if not _ID.fullmatch(resource_id) or resource_id.lower().startswith("goog"):
        raise invalid(
            f"Invalid [{collection}] name: (name={name[:300]}); the id must start with a letter, "
            "be 3-255 characters of letters, digits and -_.~+%, and not start with 'goog'"
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
    if len(parts) != 2 or parts[0] != "projects" or not _PROJECT.fullmatch(parts[1]):
        raise invalid(
            f"Invalid [projects] name: (name={name[:300]}); expected projects/{{project}}"
        )
    return parts[1]


def project_of(name: str) -> str:
    """The project id of a valid topic, subscription or snapshot name."""
    return name.split("/")[1]
