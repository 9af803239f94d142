"""`defer_after`: a deferrable task waits this long on its worker before it defers; and the one
place where relay's operators and sensor defer a result wait.

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
from relay.airflow._settle import not_before
from relay.airflow._wait import TIMEOUT, WaitOutcome
from relay.airflow.exceptions import RelayConfigError

# Extra time Airflow gives a deferral beyond the trigger's own deadline, so the trigger's clear
# timeout error wins over Airflow's generic TaskDeferralTimeout.
DEFER_GRACE = timedelta(minutes=5)


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


def checked_defer_after(value: timedelta | float | str) -> timedelta | float | str:
    """`value`, refused now unless it is a template (checked once rendered)."""
    if not isinstance(value, str):
        defer_after_seconds(value)
    return value


def wait_before_deferring(trigger: RelayResultTrigger, defer_after: Any) -> WaitOutcome | None:
    """Wait up to `defer_after` seconds on the worker for what `trigger` waits for (reading the
    task's own subscription; what it read stays there for the trigger).

    Returns the outcome when the wait ended there (all results in, a failure under fail_fast, an
    error, or the task's own deadline), None when the task should defer `trigger`.
    """
    seconds = defer_after_seconds(defer_after)
    if seconds <= 0:
        return None
    deadline = trigger.wait.deadline
    until = min(deadline, time.time() + seconds)
    early = RelayResultTrigger(
        wait=trigger.wait.with_deadline(until),
        gcp_conn_id=trigger.gcp_conn_id,
        impersonation_chain=trigger.impersonation_chain,
    )
    outcome = wait_blocking(early, last_look=until >= deadline)
    if outcome.status == TIMEOUT and until < deadline:
        return None
    return outcome


def finish_or_defer(
    task: Any, context: Any, trigger: RelayResultTrigger, *, settle: float | None, defer_after: Any
) -> Any:
    """A deferrable task's result wait: `task.finish_wait` on the worker if `defer_after` sees it
    end, else defer `trigger` (its event not before the settle delay) to `execute_complete`."""
    early = wait_before_deferring(trigger, defer_after)
    if early is not None:
        return task.finish_wait(context, early)
    trigger.not_before = not_before(settle)  # apache/airflow#72716, see _settle
    task.defer(
        trigger=trigger,
        method_name="execute_complete",
        timeout=timedelta(seconds=max(trigger.wait.deadline - time.time(), 1)) + DEFER_GRACE,
    )
