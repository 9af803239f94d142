"""Names that travel or address what travels: Pub/Sub resource paths, relay's attribute names,
correlation ids and the correlation-id groups that one completion subscription waits on.

The one home of these rules: the Airflow side, the functions, the topology file and `relay
provision` all check names here.
"""

from __future__ import annotations

import re

from relay.protocol._errors import InvalidAttributeError

ATTRIBUTE_PREFIX = "ce-"
CORRELATION_ID_ATTRIBUTE = "ce-correlationid"
TYPE_ATTRIBUTE = "ce-type"
ID_ATTRIBUTE = "ce-id"
REPLY_TO_ATTRIBUTE = "ce-replyto"

# Google's resource names: project ids 6-30 characters (optionally domain-scoped,
# "example.com:proj"); topic and subscription ids 3-255 characters starting with a letter, not
# starting with "goog".
_PROJECT = r"(?:[a-z0-9][a-z0-9.-]{0,62}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
_RESOURCE = r"(?![Gg][Oo][Oo][Gg])[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_PROJECT_ID = re.compile(_PROJECT)
_RESOURCE_ID = re.compile(_RESOURCE)
_PATHS = {
    kind: re.compile(rf"projects/({_PROJECT})/{kind}/({_RESOURCE})")
    for kind in ("topics", "subscriptions")
}
PROJECT_RULE = (
    "6-30 characters: lowercase letters, digits and hyphens, starting with a letter "
    "(optionally domain-scoped: example.com:my-project)"
)
RESOURCE_RULE = "3-255 characters: a letter, then letters, digits or -_.~+%; not starting with goog"
# `relay broker` has no projects: it takes any project id of 1-100 characters without '/',
# whitespace or control characters (Unicode categories C*: they would hide in logs and messages).
_LOCAL_PROJECT_ID = re.compile(r"[^/\s]{1,100}")
LOCAL_PROJECT_RULE = "1-100 characters, none of them '/', whitespace or a control character"

# Correlation ids are attribute values that go into subscription filters as string literals: a
# conservative character set keeps quoting trivial. relay's waits group them: `<group>.<item>`.
MAX_CORRELATION_ID = 200
_CORRELATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=\-]{0,199}")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:@+=\-]{0,99}")
CORRELATION_ID_RULE = (
    "a correlation id is 1-200 characters of A-Z a-z 0-9 . _ : @ + = - starting with a letter "
    "or digit"
)
GROUP_RULE = (
    "relay waits on correlation ids of the form <group>.<item>, where the group (1-100 "
    "characters, no '.') names the completion subscription and is shared by every id of one task"
)
MAX_FILTER_BYTES = 256


def check_project_id(value: object, what: str = "project") -> str:
    """`value` if it is a Google project id, else InvalidAttributeError naming the rule."""
    if not isinstance(value, str) or not _PROJECT_ID.fullmatch(value):
        raise InvalidAttributeError(
            f"{what} {value!r} is not a valid project id ({PROJECT_RULE})", field=what
        )
    return value


def is_local_project_id(value: str) -> bool:
    """Whether `relay broker` takes `value` as a project id (LOCAL_PROJECT_RULE)."""
    return _LOCAL_PROJECT_ID.fullmatch(value) is not None and value.isprintable()


def is_resource_id(value: str) -> bool:
    """Whether `value` is a valid topic, subscription, snapshot or schema id (RESOURCE_RULE)."""
    return _RESOURCE_ID.fullmatch(value) is not None


def check_resource_id(value: object, what: str) -> str:
    """`value` if it is a valid topic or subscription id, else InvalidAttributeError."""
    if not isinstance(value, str) or not _RESOURCE_ID.fullmatch(value):
        raise InvalidAttributeError(
            f"{what} {value!r} is not a valid Pub/Sub name ({RESOURCE_RULE})", field=what
        )
    return value


def _full_path(kind: str, path: object) -> str:
    if not isinstance(path, str) or not _PATHS[kind].fullmatch(path):
        singular = kind[:-1]
        raise InvalidAttributeError(
            f"{singular} {path!r} is not of the form projects/<project>/{kind}/<name> "
            f"(project id: {PROJECT_RULE}; name: {RESOURCE_RULE})",
            field=singular,
        )
    return path


def _path(kind: str, project: str, name: object) -> str:
    if isinstance(name, str) and name.startswith("projects/"):
        return _full_path(kind, name)
    check_resource_id(name, f"{kind[:-1]} name")
    return f"projects/{check_project_id(project)}/{kind}/{name}"


def check_topic_path(path: object) -> str:
    """`path` if it is a full topic path `projects/<project>/topics/<name>`."""
    return _full_path("topics", path)


def check_subscription_path(path: object) -> str:
    """`path` if it is a full subscription path `projects/<project>/subscriptions/<name>`."""
    return _full_path("subscriptions", path)


def topic_path(project: str, topic: str) -> str:
    """A full topic path from a short name (in `project`) or an already full path."""
    return _path("topics", project, topic)


def subscription_path(project: str, subscription: str) -> str:
    """A full subscription path from a short name (in `project`) or an already full path."""
    return _path("subscriptions", project, subscription)


def is_topic_path(value: str) -> bool:
    """Whether `value` is a full, valid topic path."""
    return _PATHS["topics"].fullmatch(value) is not None


def project_of(path: str) -> str:
    """The project part of a full topic or subscription path."""
    return path.split("/", 2)[1]


TOPIC_PATTERN_RULE = (
    "a full topic path projects/<project>/topics/<name>, or projects/<project>/topics/* for "
    "every topic of that project"
)


def check_topic_pattern(pattern: object) -> str:
    """`pattern` if it is a topic path or `projects/<project>/topics/*` (InvalidAttributeError)."""
    if isinstance(pattern, str) and pattern.endswith("/topics/*"):
        project = pattern[len("projects/") : -len("/topics/*")]
        if pattern.startswith("projects/") and _PROJECT_ID.fullmatch(project):
            return pattern
    elif isinstance(pattern, str) and is_topic_path(pattern):
        return pattern
    raise InvalidAttributeError(
        f"topic pattern {pattern!r} is not {TOPIC_PATTERN_RULE}", field="topic"
    )


def topic_matches(topic: str, pattern: str) -> bool:
    """Whether the full topic path `topic` is `pattern` or a topic of a `.../topics/*` pattern."""
    if pattern.endswith("/topics/*"):
        return is_topic_path(topic) and topic.startswith(pattern[:-1])
    return topic == pattern


def check_correlation_id(value: object) -> str:
    """`value` if it is a valid correlation id, else InvalidAttributeError naming the rule."""
    if not isinstance(value, str) or not _CORRELATION_ID.fullmatch(value):
        raise InvalidAttributeError(
            f"correlation id {value!r} is not valid: {CORRELATION_ID_RULE}", field="correlationid"
        )
    return value


def check_group(group: object) -> str:
    """`group` if it can be a correlation-id group, else InvalidAttributeError."""
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise InvalidAttributeError(
            f"correlation id group {group!r} is not valid: {GROUP_RULE}", field="correlationid"
        )
    return group


def correlation_group(correlation_id: str) -> str:
    """The group of a correlation id `<group>.<item>`; InvalidAttributeError when it has none."""
    group, dot, item = check_correlation_id(correlation_id).partition(".")
    if not dot or not item or not _GROUP.fullmatch(group):
        raise InvalidAttributeError(
            f"correlation id {correlation_id!r} has no group: {GROUP_RULE} (e.g. 'orders.42')",
            field="correlationid",
        )
    return group


def grouped_id(group: str, item: str | int) -> str:
    """The correlation id of `item` in `group`."""
    return check_correlation_id(f"{check_group(group)}.{item}")


def group_filter(group: str) -> str:
    """The subscription filter that lets in exactly the messages of one correlation-id group."""
    text = f'hasPrefix(attributes.{CORRELATION_ID_ATTRIBUTE}, "{check_group(group)}.")'
    assert len(text.encode()) <= MAX_FILTER_BYTES  # a 100-character group gives 144 bytes
    return text
