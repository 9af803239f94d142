"""The Airflow side's names: paths and correlation ids as RelayConfigError-raising checks (the rules
live in relay.protocol), a task instance's correlation-id group, and the completion subscription
of a group.

One task instance waits on one completion subscription, whatever the number of its requests: its
requests' correlation ids are `<group>.<index>` with the group derived from the task instance, and
the subscription's filter lets in the group's results only. The subscription's name is a hash of
(completion topic, group), so the worker and a trigger rebuilt from its kwargs agree on it, and a
retried task instance finds the one its earlier try made.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from relay.airflow.exceptions import RelayConfigError
from relay.protocol import ProtocolError
from relay.protocol import _names as _protocol

TASK_SUBSCRIPTION_PREFIX = "relay-task-"
WAKE_SUBSCRIPTION_PREFIX = "relay-wake-"
# Ack deadline of task subscriptions: how long a read holds the results it pulled. A trigger run
# that dies holding them gives them back after this long.
WAIT_ACK_DEADLINE_SECONDS = 10

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _config_error(check: Callable[_P, _T]) -> Callable[_P, _T]:
    """`check` raising RelayConfigError (what an operator argument gets) for a ProtocolError."""

    @functools.wraps(check)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return check(*args, **kwargs)
        except ProtocolError as exc:
            raise RelayConfigError(exc.message) from None

    return checked


topic_path = _config_error(_protocol.topic_path)
check_topic_path = _config_error(_protocol.check_topic_path)
check_subscription_path = _config_error(_protocol.check_subscription_path)
subscription_path = _config_error(_protocol.subscription_path)
check_project_id = _config_error(_protocol.check_project_id)
check_correlation_id = _config_error(_protocol.check_correlation_id)
correlation_group = _config_error(_protocol.correlation_group)
grouped_id = _config_error(_protocol.grouped_id)
project_of = _protocol.project_of


def task_group(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The correlation-id group of one task instance: `t` + 24 hex digits of a hash of its key."""
    key = f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode()
    return "t" + hashlib.sha256(key).hexdigest()[:24]


def task_subscription(project_id: str, completion_topic: str, group: str) -> str:
    """The full path of the completion subscription holding the results of one group."""
    digest = hashlib.sha256(f"{completion_topic}\0{group}".encode()).hexdigest()[:40]
    return subscription_path(project_id, f"{TASK_SUBSCRIPTION_PREFIX}{digest}")
