"""Reading a completion subscription without trusting any single pull.

Pub/Sub allows a pull to return fewer messages than are available, or none, so a read is a
`Reading`: blocking pulls (never `return_immediately`) whose messages stay leased to it (extended
while it lasts), so the next pull brings only what it has not seen, until it has been quiet for a
while; then everything is released (nacked, to stay for the next reader) or, for the worker that
takes the results, acked. Messages that are not results of the ids read for (progress events) are
acked at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from relay.airflow._names import WAIT_ACK_DEADLINE_SECONDS
from relay.protocol import CORRELATION_ID_ATTRIBUTE, RESULT_FAILED, RESULT_SUCCEEDED, TYPE_ATTRIBUTE

log = logging.getLogger(__name__)

RESULT_TYPES = (RESULT_SUCCEEDED, RESULT_FAILED)
PULL_MAX_MESSAGES = 1_000
ACK_BATCH = 2_500
# One pull waits at most this long (a blocking pull answers at once when a message is there), and
# at least the minimum: a pull whose deadline is too near comes back empty without waiting.
# Google may answer pulls with a deadline this short with fewer messages than it holds, or none.
PULL_SECONDS = 2.0
# Pulls of a reader that waits anyway (a worker waiting for its results, the last look at the
# deadline) wait this long: the form Google recommends, answered as soon as a message is there.
LONG_PULL_SECONDS = 20.0
_MIN_PULL_SECONDS = 1.0
# A pull that comes back empty sooner than this is followed by a pause of this long: Pub/Sub may
# answer a pull at once with nothing, and reading again at once would spin.
_MIN_EMPTY_PULL_SECONDS = 0.25
# A read that brings nothing new for this long has read what the subscription holds.
QUIET_SECONDS = 1.5
# How long a read must stay quiet before a wait may be declared timed out: past the lease a dead
# reader (an earlier run of the trigger) may still hold.
FINAL_QUIET_SECONDS = WAIT_ACK_DEADLINE_SECONDS + 2.0
# Leases are extended once they are this old (the subscription's ack deadline is the lease).
_EXTEND_AFTER = WAIT_ACK_DEADLINE_SECONDS / 2
_RETRY_PAUSE = 1.0


class SubscriptionGone(Exception):
    """The subscription does not exist (deleted, expired, or never created)."""


@dataclass(frozen=True)
class Seen:
    """A result message read (or heard of) for one correlation id."""

    correlation_id: str
    message_id: str
    type: str
    received: Any = None  # the ReceivedMessage, when pulled


def seen_of(received: Any) -> Seen:
    """The Seen of a pulled ReceivedMessage."""
    attributes = received.message.attributes
    return Seen(
        str(attributes.get(CORRELATION_ID_ATTRIBUTE, "")),
        str(received.message.message_id),
        str(attributes.get(TYPE_ATTRIBUTE, "")),
        received,
    )


class Reading:
    """Pulls from one subscription for `wanted` correlation ids; holds what it pulled until
    `release()`."""

    def __init__(self, client: Any, subscription: str, wanted: Collection[str]) -> None:
        self.client = client
        self.subscription = subscription
        self.wanted = frozenset(wanted)
        self.pulls = 0
        self._held: dict[str, tuple[str, str]] = {}  # message id -> (ack id, correlation id)

    async def pull(self, wait: float = PULL_SECONDS) -> list[Seen]:
        """One blocking pull of up to 1,000 messages; returns the results of wanted ids not seen
        before in this reading (nothing on an empty pull or a transient error)."""
        from google.api_core.exceptions import DeadlineExceeded, GoogleAPICallError, NotFound

        self.pulls += 1
        started = time.monotonic()
        try:
            response = await self.client.pull(
                request={"subscription": self.subscription, "max_messages": PULL_MAX_MESSAGES},
                timeout=max(wait, _MIN_PULL_SECONDS),
                retry=None,
            )
        except NotFound:
            raise SubscriptionGone(self.subscription) from None
        except DeadlineExceeded:
            return []  # nothing came within the timeout
        except GoogleAPICallError as exc:  # UNAVAILABLE, RESOURCE_EXHAUSTED, ...: read again soon
            log.warning("pull from %s failed: %r; reading again", self.subscription, exc)
            await asyncio.sleep(_RETRY_PAUSE)
            return []
        if not response.received_messages:
            if time.monotonic() - started < _MIN_EMPTY_PULL_SECONDS:
                await asyncio.sleep(_MIN_EMPTY_PULL_SECONDS)
            return []
        fresh: list[Seen] = []
        junk: list[str] = []
        for received in response.received_messages:
            seen = seen_of(received)
            if seen.message_id in self._held:  # redelivered (a lease ran out): new ack id
                self._held[seen.message_id] = (received.ack_id, seen.correlation_id)
                continue
            wanted = seen.correlation_id in self.wanted
            if wanted and seen.type not in RESULT_TYPES:
                junk.append(received.ack_id)  # progress events and the like
                continue
            self._held[seen.message_id] = (received.ack_id, seen.correlation_id)
            if wanted:
                fresh.append(seen)
        if junk:
            await self._call("acknowledge", junk)
        return fresh

    async def read(
        self,
        record: Callable[[Seen], None],
        *,
        quiet: float,
        until: float,
        done: Callable[[], bool],
        pull_seconds: float = PULL_SECONDS,
    ) -> None:
        """Pull (each pull waiting up to `pull_seconds`), recording each new result, until
        `done()`, `quiet` seconds without a new message, or `until` (epoch seconds)."""
        last_new = time.monotonic()
        keeper = asyncio.get_running_loop().create_task(self._keep())
        try:
            while not done():
                now = time.time()
                left = min(until - now, quiet - (time.monotonic() - last_new))
                if left <= 0:
                    return
                fresh = await self.pull(min(pull_seconds, left))
                for seen in fresh:
                    record(seen)
                if fresh:
                    last_new = time.monotonic()
        finally:
            keeper.cancel()

    async def _keep(self) -> None:
        """While a read lasts, extend the leases of what it holds before they run out."""
        while True:
            await asyncio.sleep(_EXTEND_AFTER)
            if self._held:
                await self._call(
                    "modify_ack_deadline",
                    [ack for ack, _ in self._held.values()],
                    WAIT_ACK_DEADLINE_SECONDS,
                )

    async def release(self, take: Collection[str] = ()) -> None:
        """End the reading: ack what is held for the correlation ids in `take` (the worker has
        their results), nack the rest so it is there for the next reader."""
        acks = [ack for ack, cid in self._held.values() if cid in take]
        nacks = [ack for ack, cid in self._held.values() if cid not in take]
        self._held.clear()
        if acks:
            await self._call("acknowledge", acks)
        if nacks:
            await self._call("modify_ack_deadline", nacks, 0)

    async def _call(self, method: str, ack_ids: list[str], deadline: int | None = None) -> None:
        """Acknowledge or ModifyAckDeadline in batches; a failure is logged (leases run out by
        themselves, acks are repeated by the delete that follows)."""
        from google.api_core.exceptions import GoogleAPICallError

        for batch in _batches(ack_ids, ACK_BATCH):
            request: dict[str, Any] = {"subscription": self.subscription, "ack_ids": batch}
            if deadline is not None:
                request["ack_deadline_seconds"] = deadline
            try:
                await getattr(self.client, method)(request=request, timeout=30)
            except GoogleAPICallError as exc:
                log.warning("%s on %s failed: %r", method, self.subscription, exc)


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
