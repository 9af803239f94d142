"""The settle delay of a deferral: a trigger never fires before `not_before` (epoch seconds).

Works around apache/airflow#72716 (Airflow 3.3.2, open): when a trigger fires within about
`[workers] min_heartbeat_interval` seconds of the deferral, the scheduler can handle the trigger
event before the executor reports the worker's defer-exit, log "state mismatch" and fail the task.
relay's triggers fire within milliseconds, so each deferral says when its event may be yielded.
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
    """Epoch seconds before which a trigger deferred now must not fire."""
    return time.time() + resolve_settle(settle)


async def sleep_until(moment: float) -> None:
    """Sleep until `moment` (epoch seconds); at once if it is past (e.g. after a restart)."""
    remaining = moment - time.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
