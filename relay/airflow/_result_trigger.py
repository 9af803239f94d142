"""RelayResultTrigger: wait for the results of one task's correlation ids.

The results land in the task's completion subscription (created before the requests were
published), the durable copy; the trigger never acks them, so a triggerer that dies at any point
leaves them for the next run of the trigger, and the worker takes (acks) them only once it has them
in hand.

In the triggerer a wait hears of results from the process-wide wake hub (one stream per topic, see
relay.airflow._wakehub), which hands over each result's message id without any read; it reads its
own subscription (relay.airflow._reader) when it starts (results that came before), once more
after a lease would have run out (an earlier run that died while reading), every
`recheck_interval`, and at the deadline, where only a subscription read quiet for longer than a
lease counts as "no result". On a worker (`deferrable=False`, `defer_after`) there is no hub: the
wait reads its own subscription the whole time.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from relay.airflow import _wakehub
from relay.airflow._identity import ImpersonationChain
from relay.airflow._names import WAIT_ACK_DEADLINE_SECONDS, project_of
from relay.airflow._reader import (
    FINAL_QUIET_SECONDS,
    LONG_PULL_SECONDS,
    QUIET_SECONDS,
    Reading,
    Seen,
    SubscriptionGone,
)
from relay.airflow._settle import sleep_until
from relay.airflow._trigger_hooks import trigger_hook
from relay.airflow._wait import (
    COLLECT_ALL,
    DONE,
    ERROR,
    FAIL_FAST,
    TIMEOUT,
    ResultWait,
    WaitOutcome,
    from_legacy,
)
from relay.protocol import RESULT_FAILED

_T = TypeVar("_T")
# Reads of subscriptions under way at once per event loop: each is one outstanding pull (an
# HTTP/2 stream on the shared channel, of which Google's front ends allow 100 per connection).
_READ_CONCURRENCY = 64
# The safety-net re-reads of all waits of a hub together come at most this often a second: with
# 10,000 waits and the 300 s default each re-read comes every 1,000 s instead (each read holds a
# slot for a quiet 1.5 s, so unbounded re-reads would fill the slots of a large triggerer).
_RECHECKS_PER_SECOND = 10.0
# How long a wait waits for the shared hub before it falls back to reading every this many seconds.
_HUB_PATIENCE = 30.0
_READ_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReadSlots] = (
    weakref.WeakKeyDictionary()
)


class _ReadSlots:
    """An event loop's read slots, and how many reads hold or queue for one."""

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(_READ_CONCURRENCY)
        self.pending = 0


class _Found:
    """The first result seen per correlation id of a wait, and whether the wait is over."""

    def __init__(self, wait: ResultWait) -> None:
        self.wait = wait
        self.seen: dict[str, Seen] = {}
        self.failed = False

    def record(self, seen: Seen) -> None:
        if seen.correlation_id in self.seen or seen.correlation_id not in self.pending_ids():
            return
        self.seen[seen.correlation_id] = seen
        self.failed = self.failed or seen.type == RESULT_FAILED

    def pending_ids(self) -> set[str]:
        return set(self.wait.correlation_ids) - set(self.seen)

    def done(self) -> bool:
        if self.wait.policy == FAIL_FAST and self.failed:
            return True
        return len(self.seen) == len(self.wait.correlation_ids)

    def outcome(self, status: str, message: str = "") -> WaitOutcome:
        ids = tuple(
            self.seen[cid].message_id if cid in self.seen else None
            for cid in self.wait.correlation_ids
        )
        return WaitOutcome(self.wait, status, ids, message)


class RelayResultTrigger(BaseTrigger):
    """Fires once every correlation id of `wait` has a result (or one failed, under fail_fast),
    or at the wait's deadline.

    :param wait: the ResultWait (or its JSON form, as serialize() stores it).
    :param recheck_interval: seconds between re-reads of the subscription when no wake-up came (a
        safety net; wake-ups normally arrive within milliseconds); longer in a process holding
        more than 10 waits per second of it, so that all re-reads together come 10 a second.
    :param linger: seconds the shared hub stays up after its last wait left.
    :param not_before: epoch seconds before which the event is not yielded (the deferring task's
        settle delay, see relay.airflow._settle); 0 = no delay.

    Kwargs of relay 0.1 (`completion_topic`, `waits`, `deadline`, `policy`) are accepted too: a
    task deferred before an upgrade resumes. The event payload is `WaitOutcome.to_event()`.
    """

    def __init__(
        self,
        *,
        wait: ResultWait | Mapping[str, Any] | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        recheck_interval: float = 300.0,
        linger: float = 30.0,
        not_before: float = 0.0,
        completion_topic: str | None = None,
        waits: Mapping[str, str] | Sequence[Sequence[str]] | None = None,
        deadline: float | None = None,
        policy: str = COLLECT_ALL,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if wait is None:  # relay 0.1's kwargs
            if completion_topic is None or waits is None or deadline is None:
                raise ValueError("RelayResultTrigger needs wait= (or relay 0.1's waits=...)")
            wait = from_legacy(
                waits, completion_topic=completion_topic, deadline=float(deadline), policy=policy
            )
        self.wait = wait if isinstance(wait, ResultWait) else ResultWait.from_json(wait)
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = (
            impersonation_chain
            if impersonation_chain is None or isinstance(impersonation_chain, str)
            else list(impersonation_chain)
        )
        self.recheck_interval = float(recheck_interval)
        self.linger = float(linger)
        self.not_before = float(not_before)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs: names and numbers only, never credentials."""
        return (
            "relay.airflow.triggers.RelayResultTrigger",
            {
                "wait": self.wait.to_json(),
                "gcp_conn_id": self.gcp_conn_id,
                "impersonation_chain": self.impersonation_chain,
                "recheck_interval": self.recheck_interval,
                "linger": self.linger,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait as described in the module docstring; yields exactly one event, not before
        `not_before` (the results stay where they are meanwhile)."""
        outcome = await self.wait_woken()
        await sleep_until(self.not_before)
        yield TriggerEvent(outcome.to_event())  # type: ignore[no-untyped-call]

    # -- the triggerer's wait: woken by the hub ---------------------------------------------------

    async def wait_woken(self) -> WaitOutcome:
        """The wait of a triggerer: results heard of from the shared hub, reads as a safety net."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        client = hook.async_subscriber()
        wait = self.wait
        found = _Found(wait)
        hub = _wakehub.acquire(
            key=hook.key,
            client=client,
            topic=wait.completion_topic,
            project_id=project_of(next(iter(wait.subscriptions()))),
            linger=self.linger,
        )
        waiter = _wakehub.Waiter(wait.correlation_ids, found.record)
        started = time.time()
        hub.add(waiter)
        try:
            recheck_interval = self.recheck_interval
            try:
                patience = max(min(wait.deadline - time.time(), _HUB_PATIENCE), 0.001)
                await asyncio.wait_for(hub.ready(), patience)
            except TimeoutError:
                # No wake-ups yet (the hub keeps trying): read often enough meanwhile.
                if time.time() < wait.deadline:
                    self.log.warning("wake hub for %s not ready; reading", wait.completion_topic)
                recheck_interval = min(recheck_interval, _HUB_PATIENCE)
            # Results published before the hub listened are in the subscription only.
            read_now = True
            # One early re-read once a lease would have run out (spread over as long again, so a
            # triggerer starting many waits does not read them all at once): covers an earlier
            # run of this trigger that died holding results it had pulled. Not needed when the
            # first read began after that (a triggerer starting thousands of waits queues them).
            lease = WAIT_ACK_DEADLINE_SECONDS + 2
            next_read = time.time() + lease * random.uniform(1.0, 2.0)
            first_read = True
            while True:
                reread = waiter.take()
                if read_now or reread:
                    read_now = False
                    began = await self._read(client, found, quiet=QUIET_SECONDS, waiter=waiter)
                    if first_read and began is not None and began >= started + lease:
                        next_read = time.time() + _period(recheck_interval, hub)
                    first_read = False
                if found.done():
                    return found.outcome(DONE)
                now = time.time()
                if now >= wait.deadline:
                    return await self._last_look(client, found)
                if now >= next_read:
                    read_now = True
                    if recheck_interval < self.recheck_interval and hub.is_ready:
                        recheck_interval = self.recheck_interval
                    next_read = now + _period(recheck_interval, hub)
                    continue
                try:
                    await asyncio.wait_for(waiter.event.wait(), min(wait.deadline, next_read) - now)
                except TimeoutError:
                    continue
        except SubscriptionGone as gone:
            return found.outcome(ERROR, _gone(str(gone)))
        finally:
            hub.remove(waiter)

    # -- the worker's wait: reading its own subscription ------------------------------------------

    async def wait_reading(self, *, last_look: bool = True) -> WaitOutcome:
        """The wait of a worker: pull the task's own subscription until done or the deadline (a
        blocking pull answers as soon as a result arrives); no wake subscription. Without
        `last_look` the deadline is only a pause (the task defers then): no quiet read past it."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        client = hook.async_subscriber()
        found = _Found(self.wait)
        readings = [Reading(client, sub, ids) for sub, ids in self.wait.subscriptions().items()]
        try:
            deadline = self.wait.deadline
            while not found.done() and time.time() < deadline:
                await asyncio.gather(
                    *(
                        r.read(
                            found.record,
                            quiet=LONG_PULL_SECONDS,
                            until=deadline,
                            done=found.done,
                            pull_seconds=LONG_PULL_SECONDS,
                        )
                        for r in readings
                    )
                )
            if last_look and not found.done():
                await asyncio.gather(*(self._last_read(r, found) for r in readings))
        except SubscriptionGone as gone:
            return found.outcome(ERROR, _gone(str(gone)))
        finally:
            await asyncio.gather(*(reading.release() for reading in readings))
        return found.outcome(DONE if found.done() else TIMEOUT)

    async def peek_once(self) -> WaitOutcome:
        """One read of the subscription (no hub, no waiting): the results found so far."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        found = _Found(self.wait)
        try:
            await self._read(hook.async_subscriber(), found, quiet=QUIET_SECONDS)
        except SubscriptionGone as gone:
            return found.outcome(ERROR, _gone(str(gone)))
        return found.outcome(DONE if found.done() else TIMEOUT)

    # -- reading ----------------------------------------------------------------------------------

    async def _read(
        self, client: Any, found: _Found, *, quiet: float, waiter: _wakehub.Waiter | None = None
    ) -> float | None:
        """Read each subscription of the wait until it is quiet, then release what was read; a
        wait the hub completes while it queues for a read slot reads nothing. Returns when the
        first of the reads began (None if one was not needed)."""

        async def one(subscription: str, ids: Collection[str]) -> float | None:
            reading = Reading(client, subscription, ids)
            slots = _read_slots()
            slots.pending += 1
            try:
                if not await _acquire_read_slot(slots.semaphore, found, waiter):
                    return None
                began = time.time()
                try:
                    await reading.read(
                        found.record,
                        quiet=quiet,
                        until=time.time() + quiet + 60,
                        done=found.done,
                        pull_seconds=min(quiet, LONG_PULL_SECONDS),
                    )
                finally:
                    slots.semaphore.release()
                    await reading.release()
                return began
            finally:
                slots.pending -= 1

        starts = await asyncio.gather(
            *(one(sub, ids) for sub, ids in self.wait.subscriptions().items())
        )
        return None if None in starts else min(s for s in starts if s is not None)

    async def _last_look(self, client: Any, found: _Found) -> WaitOutcome:
        """At the deadline: only a read that stays quiet for longer than a lease makes a timeout
        (a re-run that starts after the deadline must still report a result that came in time)."""
        await self._read(client, found, quiet=FINAL_QUIET_SECONDS)
        return found.outcome(DONE if found.done() else TIMEOUT)

    @staticmethod
    async def _last_read(reading: Reading, found: _Found) -> None:
        await reading.read(
            found.record,
            quiet=FINAL_QUIET_SECONDS,
            until=time.time() + FINAL_QUIET_SECONDS + 60,
            done=found.done,
            pull_seconds=FINAL_QUIET_SECONDS,
        )


def _period(recheck_interval: float, hub: _wakehub.WakeHub) -> float:
    """Seconds to the next safety-net re-read: `recheck_interval` with jitter, longer when the
    hub holds so many waits that their re-reads would come more than 10 a second."""
    return max(recheck_interval, hub.waiting / _RECHECKS_PER_SECOND) * random.uniform(0.8, 1.2)


def _read_slots() -> _ReadSlots:
    loop = asyncio.get_running_loop()
    slots = _READ_SLOTS.get(loop)
    if slots is None:
        slots = _READ_SLOTS[loop] = _ReadSlots()
    return slots


def reads_pending() -> int:
    """Subscription reads under way or queued on the running loop (for tests and benchmarks)."""
    slots = _READ_SLOTS.get(asyncio.get_running_loop())
    return 0 if slots is None else slots.pending


async def _acquire_read_slot(
    slot: asyncio.Semaphore, found: _Found, waiter: _wakehub.Waiter | None
) -> bool:
    """Take a read slot (True), or give up queueing for one once `found` is done (False): with
    thousands of waits reading at a triggerer's start, a wait woken by the hub must not queue
    behind the others' reads."""
    if waiter is None:
        await slot.acquire()
        return True
    acquiring = asyncio.ensure_future(slot.acquire())
    took = False
    try:
        while not found.done():
            woken = asyncio.ensure_future(waiter.event.wait())
            try:
                await asyncio.wait((acquiring, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if acquiring.done():
                took = True
                return True
            waiter.event.clear()
        return False
    finally:
        if not took:  # done through the hub, or cancelled: hand back what the acquire took
            if acquiring.done() and not acquiring.cancelled():
                slot.release()
            else:
                acquiring.cancel()


def _gone(subscription: str) -> str:
    return (
        f"completion subscription {subscription} does not exist (deleted, expired, or never "
        "created before the requests were published): its results can no longer arrive"
    )


def wait_blocking(trigger: RelayResultTrigger, *, last_look: bool = True) -> WaitOutcome:
    """Run a worker's wait to its end in a fresh event loop (non-deferrable tasks)."""
    return run_blocking(trigger.wait_reading(last_look=last_look))


def peek_blocking(trigger: RelayResultTrigger) -> WaitOutcome:
    """One read of the subscription in a fresh event loop (sensor poke mode)."""
    return run_blocking(trigger.peek_once())


def run_blocking(work: Coroutine[Any, Any, _T]) -> _T:
    """Run `work` on a worker in a fresh event loop, closing its clients and hubs at the end."""
    return asyncio.run(_then_close(work))


async def _then_close(work: Coroutine[Any, Any, _T]) -> _T:
    from relay.airflow.hooks import RelayHook

    try:
        return await work
    finally:
        await _wakehub.close_all()
        await RelayHook.close_async_clients()


__all__ = ["COLLECT_ALL", "FAIL_FAST", "TIMEOUT", "RelayResultTrigger"]
