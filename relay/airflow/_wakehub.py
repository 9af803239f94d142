"""The shared wake-up subscriber: one StreamingPull per (event loop, completion topic, identity).

Waits register the correlation ids they wait for. The hub owns one unfiltered "wake" subscription on
the completion topic (created lazily inside the event loop, deleted when the last wait has left and
a linger period passed, expiring by itself if the process dies) and a single gRPC stream on it. For
every result message it reads the `ce-correlationid` attribute, hands the message id and type to the
waits registered for that id and acks the message at once. Message ids are the topic's, the same in
every subscription: a wait records the id and the worker takes that result from the task's own
subscription, the durable copy. A lost wake-up costs latency (the wait's re-reads find the result),
never a result, and nothing here needs to survive a triggerer restart.

One hub serves every wait of a triggerer on a topic, so its two administrator operations (create,
delete) are paid once per triggerer process, not per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from relay.airflow._names import WAKE_SUBSCRIPTION_PREFIX
from relay.airflow._reader import RESULT_TYPES, Seen, seen_of
from relay.protocol import CORRELATION_ID_ATTRIBUTE

log = logging.getLogger(__name__)

_HEARTBEAT_SECONDS = 30.0
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], WakeHub]] = (
    weakref.WeakKeyDictionary()
)


class Waiter:
    """One wait's view of the hub: results heard of go straight to its `record` (so a wait queued
    for a read of its subscription is done as soon as they are all heard), and whether it should
    read its subscription again (wake-ups may have been missed)."""

    def __init__(self, correlation_ids: Iterable[str], record: Callable[[Seen], None]) -> None:
        self.ids: frozenset[str] = frozenset(correlation_ids)
        self.record = record
        self.reread = False
        self.event = asyncio.Event()

    def hear(self, seen: Seen) -> None:
        """A result for one of our correlation ids was published."""
        self.record(seen)
        self.event.set()

    def wake_all(self) -> None:
        """Ask the wait to read its subscription again."""
        self.reread = True
        self.event.set()

    def take(self) -> bool:
        """Whether to read again, clearing it and the wake-up event."""
        reread, self.reread = self.reread, False
        self.event.clear()
        return reread


class WakeHub:
    """Wakes registered waits by correlation id from one stream on a wake subscription."""

    def __init__(
        self,
        *,
        key: tuple[Any, ...],
        client: Any,
        topic: str,
        project_id: str,
        linger: float,
    ) -> None:
        self.key = key
        self.topic = topic
        self.subscription = (
            f"projects/{project_id}/subscriptions/{WAKE_SUBSCRIPTION_PREFIX}{uuid.uuid4().hex[:24]}"
        )
        self.closing = False
        self.received = 0
        self.streams_opened = 0
        self._client = client
        self._linger = linger
        self._waits: dict[str, set[Waiter]] = {}
        self._count = 0
        self._ready = asyncio.Event()
        self._created = False
        self._task: asyncio.Task[None] | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        self._backoff = _MIN_BACKOFF

    # -- registration -----------------------------------------------------------------------------

    def add(self, waiter: Waiter) -> None:
        """Register a wait; starts the stream on first use."""
        for cid in waiter.ids:
            self._waits.setdefault(cid, set()).add(waiter)
        self._count += 1
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"relay-wake-hub {self.topic}"
            )

    def remove(self, waiter: Waiter) -> None:
        """Deregister a wait; the last one out schedules the hub's shutdown after `linger`."""
        for cid in waiter.ids:
            waiters = self._waits.get(cid)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waits[cid]
        self._count -= 1
        if self._count <= 0 and not self.closing:
            loop = asyncio.get_running_loop()
            if self._linger <= 0:
                self.close()
            else:
                self._linger_handle = loop.call_later(self._linger, self._close_if_idle)

    async def ready(self) -> None:
        """Return once the wake subscription exists: results published from then on wake us."""
        await self._ready.wait()

    @property
    def is_ready(self) -> bool:
        """Whether the wake subscription exists."""
        return self._ready.is_set()

    @property
    def waiting(self) -> int:
        """How many waits are registered."""
        return self._count

    # -- lifecycle --------------------------------------------------------------------------------

    def _close_if_idle(self) -> None:
        self._linger_handle = None
        if self._count <= 0:
            self.close()

    def close(self) -> None:
        """Stop the stream and delete the wake subscription (in the background)."""
        self.closing = True
        hubs = _HUBS.get(asyncio.get_running_loop())
        if hubs is not None and hubs.get(self.key) is self:
            del hubs[self.key]
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Close and wait until the wake subscription is deleted."""
        task = self._task
        self.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        from google.api_core.exceptions import NotFound

        self._backoff = _MIN_BACKOFF
        try:
            while True:
                try:
                    if not self._created:
                        await self._create()
                        if self._ready.is_set():  # re-created after loss: wake-ups may be missing
                            self._wake_all()
                        self._ready.set()
                    await self._stream()
                except asyncio.CancelledError:
                    raise
                except NotFound:
                    log.warning("wake subscription %s is gone; re-creating it", self.subscription)
                    self._created = False
                except Exception as exc:  # every stream error: reconnect with backoff
                    log.warning(
                        "wake stream on %s failed: %r; reconnecting", self.subscription, exc
                    )
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        finally:
            if self._created:
                await self._delete()

    async def _create(self) -> None:
        from google.api_core.exceptions import AlreadyExists

        with contextlib.suppress(AlreadyExists):
            await self._client.create_subscription(
                request={
                    "name": self.subscription,
                    "topic": self.topic,
                    "ack_deadline_seconds": 10,
                    # Google's minimums: an idle subscription expires after at least a day, and
                    # keeps messages at least 10 minutes (a wake-up older than that is useless)
                    "expiration_policy": {"ttl": timedelta(days=1)},
                    "message_retention_duration": timedelta(minutes=10),
                    "labels": {"relay": "wake"},
                },
                timeout=30,
            )
        self._created = True

    async def _delete(self) -> None:
        try:
            await asyncio.wait_for(
                self._client.delete_subscription(
                    request={"subscription": self.subscription}, timeout=5
                ),
                timeout=5,
            )
        except BaseException as exc:  # best effort: the expiration policy removes it otherwise
            log.info("could not delete wake subscription %s: %r", self.subscription, exc)
        self._created = False

    async def _stream(self) -> None:
        from google.pubsub_v1.types import StreamingPullRequest

        outbox: asyncio.Queue[StreamingPullRequest] = asyncio.Queue()
        client_id = uuid.uuid4().hex

        async def requests() -> Any:
            yield StreamingPullRequest(
                subscription=self.subscription,
                stream_ack_deadline_seconds=60,
                client_id=client_id,
                max_outstanding_messages=10_000,
            )
            while True:
                try:
                    yield await asyncio.wait_for(outbox.get(), _HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield StreamingPullRequest()

        # retry=None: the client's default retry would back off up to 60 s between attempts; the
        # loop in _run reconnects with its own, shorter backoff.
        stream = await self._client.streaming_pull(requests=requests(), retry=None, timeout=None)
        self.streams_opened += 1
        self._backoff = _MIN_BACKOFF
        async for response in stream:
            ack_ids = []
            for received in response.received_messages:
                ack_ids.append(received.ack_id)
                self.received += 1
                waiters = self._waits.get(
                    received.message.attributes.get(CORRELATION_ID_ATTRIBUTE, "")
                )
                if waiters:
                    seen = seen_of(received)
                    if seen.type in RESULT_TYPES:
                        for waiter in list(waiters):
                            waiter.hear(Seen(seen.correlation_id, seen.message_id, seen.type))
            if ack_ids:
                outbox.put_nowait(StreamingPullRequest(ack_ids=ack_ids))

    def _wake_all(self) -> None:
        for waiters in list(self._waits.values()):
            for waiter in list(waiters):
                waiter.wake_all()


def acquire(
    *, key: tuple[Any, ...], client: Any, topic: str, project_id: str, linger: float
) -> WakeHub:
    """The running loop's hub for (topic, identity), created on first use."""
    loop = asyncio.get_running_loop()
    hubs = _HUBS.setdefault(loop, {})
    full_key = (topic, project_id, *key)
    hub = hubs.get(full_key)
    if hub is None or hub.closing:
        hub = hubs[full_key] = WakeHub(
            key=full_key, client=client, topic=topic, project_id=project_id, linger=linger
        )
    return hub


def hubs() -> list[WakeHub]:
    """The hubs of the running loop (for tests and benchmarks)."""
    return list(_HUBS.get(asyncio.get_running_loop(), {}).values())


async def close_all() -> None:
    """Close every hub of the running loop and wait for their wake subscriptions to be deleted."""
    await asyncio.gather(*(hub.aclose() for hub in hubs()))
