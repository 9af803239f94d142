"""The settle delay of a deferral: a trigger never fires before `not_before` (epoch seconds).

Works around apache/airflow#72716 (Airflow 3.3.2, open): when a trigger fires within about
`[workers] min_heartbeat_interval` seconds of the deferral, the scheduler can handle the trigger
event before the executor reports the worker's defer-exit, log "state mismatch" and fail the task.
relay's triggers fire within milliseconds, so each deferral says when its event may be yielded.
Under `dag.test()` (no executor: tasks run in its process and triggers inline, after the task has
deferred) the race cannot happen, and the default delay is left out.
"""

from __future__ import annotations

import asyncio
import time

from relay.airflow.exceptions import RelayConfigError

# Margin past the supervisor's heartbeat interval, which is when it notices the defer-exit.
_MARGIN = 3.0


def resolve_settle(settle: float | None) -> float:
    """`settle` as given, or the default `[workers] min_heartbeat_interval` (5) + 3 seconds."""
    if settle is None:
        from airflow.sdk.configuration import conf  # what the worker's supervisor reads

        return float(conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)) + _MARGIN
    value = float(settle)
    if value < 0:
        raise RelayConfigError(f"settle must be >= 0 seconds, got {settle!r}")
    return value


def not_before(settle: float | None) -> float:
    """Epoch seconds before which a trigger deferred now must not fire (now, for the default
    under `dag.test()`)."""
    if settle is None and _runs_in_dag_test():
        return time.time()
    return time.time() + resolve_settle(settle)


def _runs_in_dag_test() -> bool:
    """Whether this task runs in `dag.test()`'s in-process supervisor (`InProcessTestSupervisor`,
    whose comms are `InProcessSupervisorComms`): a worker's task process has socket comms."""
    import sys

    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(runner, "SUPERVISOR_COMMS", None)
    return type(comms).__name__ == "InProcessSupervisorComms"


async def sleep_until(moment: float) -> None:
    """Sleep until `moment` (epoch seconds); at once if it is past (e.g. after a restart)."""
    remaining = moment - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
