"""The broker's clock: real time plus an offset that only moves forward.

Every timer of the broker (lease deadlines, backoff, idle expiry, retention, the admin-operation
quota's rolling minute) runs on it, so tests can jump a day ahead (`POST /control
{"advance_seconds": 86400}`) instead of waiting for Google's minimum TTL and retention. Message
ages follow it too: a message's internal publish time is the broker's wall clock at publish, while
the publish_time its subscribers see is the real time of that instant.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["Clock"]


class Clock:
    """`now()` for timers (the event loop's monotonic time + offset), `wall_ns()` for ages."""

    __slots__ = ("_loop", "offset", "offset_ns")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.offset = 0.0
        self.offset_ns = 0

    def now(self) -> float:
        """Monotonic seconds on the broker's clock."""
        return self._loop.time() + self.offset

    def wall_ns(self) -> int:
        """Nanoseconds since the epoch on the broker's clock."""
        return time.time_ns() + self.offset_ns

    def loop_time(self, when: float) -> float:
        """The event loop time at which broker time `when` comes."""
        return when - self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (never back: timers rely on it)."""
        if seconds < 0:
            raise ValueError("the broker's clock only moves forward")
        self.offset += seconds
        self.offset_ns += round(seconds * 1e9)
