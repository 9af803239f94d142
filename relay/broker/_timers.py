"""One timer heap for the whole broker: lease expiry, backoff, retention and idle expiry.

A single `loop.call_at` handle is armed for the earliest item, so an idle broker wakes up only
when something is actually due (no polling). Times are on the broker's `Clock`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

from relay.broker._clock import Clock

__all__ = ["Scheduler"]

_LOG = logging.getLogger("relay.broker")

_Item = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class Scheduler:
    """Calls `fn(*args)` at broker time `when`; items may be stale, callbacks re-check state."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[_Item] = []
        self._counter = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at (or just after) broker time `when`."""
        if self._closed:
            return
        heapq.heappush(self._heap, (when, next(self._counter), fn, args))
        if when < self._armed_at:
            self._arm(when)

    def rearm(self) -> None:
        """The clock jumped: run what is now due and re-arm for the rest."""
        if self._heap and not self._closed:
            self._arm(self._heap[0][0])

    def close(self) -> None:
        """Drop every pending item."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(self._clock.loop_time(when), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        heap = self._heap
        # A small slack lets items due within the next millisecond run in this turn.
        limit = self._clock.now() + 0.001
        while heap and heap[0][0] <= limit:
            _, _, fn, args = heapq.heappop(heap)
            try:
                fn(*args)
            except Exception:  # one bad callback must not stop the others
                _LOG.exception("broker timer callback %r failed", fn)
        if heap and not self._closed:
            self._arm(heap[0][0])
