"""`defer_after`: a deferrable task waits this long on its worker before it defers.

Deferring has a fixed price on a real deployment: the settle delay (relay.airflow._settle, 8 s by
default), the trigger's pick-up by the triggerer, and a new task process to resume in (which parses
the DAG file again). Results that come back within seconds are cheaper to wait for where the task
already runs; only when they have not all arrived after `defer_after` does the task defer, and the
worker slot is free from then on. 0 (the default) defers at once.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from relay.airflow._result_trigger import RelayResultTrigger, wait_blocking
from relay.airflow.exceptions import RelayConfigError


def defer_after_seconds(value: Any) -> float:
    """`defer_after` in seconds: a number, a timedelta, or a rendered template such as "30"."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise RelayConfigError(
                f"defer_after must be seconds or a timedelta, got {value!r}"
            ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise RelayConfigError(f"defer_after must be finite and >= 0 seconds, got {value!r}")
    return seconds


def wait_before_deferring(trigger: RelayResultTrigger, defer_after: Any) -> dict[str, Any] | None:
    """Wait up to `defer_after` seconds on the worker for what `trigger` waits for.

    Returns the trigger's event payload when the wait ended there (all results in, a failure under
    fail_fast, an error, or the task's own deadline), None when the task should defer `trigger`.
    """
    seconds = defer_after_seconds(defer_after)
    if seconds <= 0:
        return None
    until = min(trigger.deadline, time.time() + seconds)
    _, kwargs = trigger.serialize()
    payload = wait_blocking(RelayResultTrigger(**{**kwargs, "deadline": until, "not_before": 0.0}))
    if payload["status"] == "timeout" and until < trigger.deadline:
        return None
    return payload
