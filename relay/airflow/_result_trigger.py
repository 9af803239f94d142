"""RelayResultTrigger: wait for the results of one or more correlation ids, woken by the shared hub.

Per correlation id there is a filtered completion subscription (created before the request was
published), the durable copy of the result. The trigger reads it once on start, again whenever the
process-wide wake hub sees a message with that correlation id, and on a slow periodic re-check.
Reading is a peek: the result messages are pulled and immediately nacked (ack deadline 0), never
acked, so a triggerer that dies at any point leaves them in place for the next run of the trigger
and the worker acks them (by deleting the subscription) only after it has the result in hand.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

from airflow.triggers.base import BaseTrigger, TriggerEvent

from relay.airflow import _wakehub
from relay.airflow._identity import ImpersonationChain
from relay.airflow._names import WAIT_ACK_DEADLINE_SECONDS, check_correlation_id, project_of
from relay.airflow._settle import sleep_until
from relay.airflow._trigger_hooks import trigger_hook
from relay.airflow.exceptions import RelayConfigError
from relay.protocol import RESULT_FAILED, RESULT_SUCCEEDED

FAIL_FAST = "fail_fast"
COLLECT_ALL = "collect_all"
POLICIES = (FAIL_FAST, COLLECT_ALL)
_RESULT_TYPES = (RESULT_SUCCEEDED, RESULT_FAILED)
_PULL_CONCURRENCY = 32
# How long a wait waits for the shared hub before it falls back to polling every this many seconds.
_HUB_PATIENCE = 30.0

# Waits as given: correlation id -> subscription, or [[correlation id, subscription], ...] (what
# crosses Airflow's serialization boundaries: PostgreSQL stores trigger kwargs and events as JSONB,
# which reorders object keys, so item order must travel as a list).
Waits: TypeAlias = Mapping[str, str] | Sequence[Sequence[str]]


def wait_pairs(waits: Waits) -> list[list[str]]:
    """`waits` as [[correlation id, subscription], ...] in item order: JSON-safe, order-keeping."""
    items = waits.items() if isinstance(waits, Mapping) else waits
    pairs: list[list[str]] = []
    seen: set[str] = set()
    for pair in items:
        if isinstance(pair, str) or len(pair) != 2:
            raise RelayConfigError(
                f"waits must be [correlation id, subscription] pairs, got {pair!r}"
            )
        cid, subscription = check_correlation_id(pair[0]), pair[1]
        if not isinstance(subscription, str) or not subscription:
            raise RelayConfigError(f"subscription for correlation id {cid} must be a path")
        if cid in seen:
            raise RelayConfigError(f"correlation id {cid} appears twice in waits")
        seen.add(cid)
        pairs.append([cid, subscription])
    return pairs


def wait_map(waits: Waits) -> dict[str, str]:
    """`waits` as an (insertion-ordered) dict, correlation id -> subscription, in item order."""
    return dict((cid, subscription) for cid, subscription in wait_pairs(waits))


class RelayResultTrigger(BaseTrigger):
    """Fires once every correlation id in `waits` has a result (or one failed, under fail_fast),
    or at `deadline` (epoch seconds, absolute so a restarted trigger keeps the original deadline).

    :param completion_topic: full path of the topic the results are published to (the replyto).
    :param waits: [[correlation id, full path of its completion subscription], ...] in item order
        (a dict is accepted too; serialize() and the event always carry the list, see `Waits`).
    :param deadline: epoch seconds after which the trigger reports a timeout.
    :param policy: "fail_fast" (fire at the first failed result) or "collect_all".
    :param recheck_interval: seconds between re-reads of every pending subscription when no wake-up
        came (a safety net; wake-ups normally arrive within milliseconds).
    :param linger: seconds the shared hub stays up after its last wait left.
    :param not_before: epoch seconds before which the event is not yielded (the deferring task's
        settle delay, see relay.airflow._settle); 0 = no delay.

    The event payload: {"status": "done" | "timeout" | "error", "waits": the waits as pairs,
    "results": {cid: {"type",
    "message_id", "publish_time", "ce_id"}}, "pending": [cid...], "message": str}.
    """

    def __init__(
        self,
        *,
        completion_topic: str,
        waits: Waits,
        deadline: float,
        policy: str = COLLECT_ALL,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        recheck_interval: float = 300.0,
        linger: float = 30.0,
        not_before: float = 0.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not waits:
            raise ValueError("waits must name at least one correlation id")
        self.completion_topic = completion_topic
        self.waits = wait_map(waits)
        self.deadline = float(deadline)
        self.policy = policy
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
                "completion_topic": self.completion_topic,
                "waits": wait_pairs(self.waits),
                "deadline": self.deadline,
                "policy": self.policy,
                "gcp_conn_id": self.gcp_conn_id,
                "impersonation_chain": self.impersonation_chain,
                "recheck_interval": self.recheck_interval,
                "linger": self.linger,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait as described in the class docstring; yields exactly one event, not before
        `not_before` (the results stay where they are meanwhile)."""
        payload = await self.wait()
        await sleep_until(self.not_before)
        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def wait(self) -> dict[str, Any]:
        """The waiting itself, returning the event payload (usable without a triggerer)."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        client = hook.async_subscriber()
        hub = _wakehub.acquire(
            key=hook.key,
            client=client,
            topic=self.completion_topic,
            project_id=project_of(next(iter(self.waits.values()))),
            linger=self.linger,
        )
        waiter = _wakehub.Waiter(self.waits)
        results: dict[str, dict[str, Any]] = {}
        hub.add(waiter)
        try:
            recheck_interval = self.recheck_interval
            remaining = self.deadline - time.time()
            try:
                await asyncio.wait_for(hub.ready(), max(min(remaining, _HUB_PATIENCE), 0.001))
            except TimeoutError:
                if time.time() >= self.deadline:
                    return await self._last_look(client, results, waiter, hub)
                # No wake-ups yet (the hub keeps trying): poll often enough meanwhile.
                self.log.warning("wake hub for %s not ready; polling", self.completion_topic)
                recheck_interval = min(recheck_interval, _HUB_PATIENCE)
            # A result published before the hub existed is already in its subscription: read all.
            to_check: set[str] = set(waiter.pending)
            # One early re-check after a lease would have expired: covers a previous run of this
            # trigger that died between pulling a result and releasing it.
            next_recheck = time.time() + WAIT_ACK_DEADLINE_SECONDS + 2
            while True:
                if to_check:
                    error = await self._check(client, sorted(to_check), results, waiter, hub)
                    if error is not None:
                        return self._payload("error", results, error)
                if self._done(results):
                    return self._payload("done", results)
                now = time.time()
                if now >= self.deadline:
                    return await self._last_look(client, results, waiter, hub)
                if now >= next_recheck:
                    to_check = set(waiter.pending)
                    if recheck_interval < self.recheck_interval and hub.is_ready:
                        recheck_interval = self.recheck_interval
                    next_recheck = now + recheck_interval * random.uniform(0.8, 1.2)
                    continue
                try:
                    await asyncio.wait_for(
                        waiter.event.wait(), min(self.deadline, next_recheck) - now
                    )
                except TimeoutError:
                    to_check = set()
                    continue
                to_check = waiter.take()
        finally:
            hub.remove(waiter)

    async def _last_look(
        self,
        client: Any,
        results: dict[str, dict[str, Any]],
        waiter: _wakehub.Waiter,
        hub: _wakehub.WakeHub,
    ) -> dict[str, Any]:
        """At the deadline: one more read of what is pending (a re-run that starts after the
        deadline must still report a result that came in time), then done or timeout."""
        error = await self._check(client, sorted(waiter.pending), results, waiter, hub)
        if error is not None:
            return self._payload("error", results, error)
        return self._payload("done" if self._done(results) else "timeout", results)

    async def peek_once(self) -> dict[str, dict[str, Any]]:
        """Read every subscription once (no hub, no waiting): the results found so far."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        results: dict[str, dict[str, Any]] = {}
        error = await self._check(
            hook.async_subscriber(), sorted(self.waits), results, _wakehub.Waiter(self.waits), None
        )
        if error is not None:
            from relay.airflow.exceptions import RelayResultLostError

            raise RelayResultLostError(error)
        return results

    def is_done(self, results: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether `results` end the wait under this trigger's policy."""
        return self._done(results)

    def _done(self, results: Mapping[str, Mapping[str, Any]]) -> bool:
        if self.policy == FAIL_FAST and any(r["type"] == RESULT_FAILED for r in results.values()):
            return True
        return len(results) == len(self.waits)

    def _payload(
        self, status: str, results: Mapping[str, Any], message: str = ""
    ) -> dict[str, Any]:
        return {
            "status": status,
            "waits": wait_pairs(self.waits),
            "results": dict(results),
            "pending": [cid for cid in self.waits if cid not in results],
            "message": message,
        }

    async def _check(
        self,
        client: Any,
        correlation_ids: Sequence[str],
        results: dict[str, dict[str, Any]],
        waiter: _wakehub.Waiter,
        hub: _wakehub.WakeHub | None,
    ) -> str | None:
        """Peek into the subscriptions of `correlation_ids`; record first results. An error
        text if a subscription is gone (its result can no longer arrive)."""
        semaphore = asyncio.Semaphore(_PULL_CONCURRENCY)

        async def one(cid: str) -> str | None:
            async with semaphore:
                return await self._peek(client, cid, results, waiter, hub)

        errors = await asyncio.gather(*(one(cid) for cid in correlation_ids))
        return next((e for e in errors if e is not None), None)

    async def _peek(
        self,
        client: Any,
        cid: str,
        results: dict[str, dict[str, Any]],
        waiter: _wakehub.Waiter,
        hub: _wakehub.WakeHub | None,
    ) -> str | None:
        from google.api_core.exceptions import GoogleAPICallError, NotFound

        subscription = self.waits[cid]
        try:
            response = await client.pull(
                request={
                    "subscription": subscription,
                    "max_messages": 100,
                    "return_immediately": True,
                },
                timeout=30,
            )
        except NotFound:
            return (
                f"completion subscription {subscription} for correlation id {cid} does not exist "
                "(deleted, expired, or never created before the request was published)"
            )
        except GoogleAPICallError as exc:
            self.log.warning("pull from %s failed: %r; will re-check", subscription, exc)
            asyncio.get_running_loop().call_later(1.0, waiter.wake, cid)  # retry soon
            return None
        release: list[str] = []
        drop: list[str] = []
        candidates = []
        for received in response.received_messages:
            attributes = received.message.attributes
            if attributes.get("ce-correlationid") != cid:
                self.log.warning(
                    "ignoring a message for another correlation id in %s", subscription
                )
                drop.append(received.ack_id)
            elif attributes.get("ce-type") in _RESULT_TYPES:
                candidates.append(received)
                release.append(received.ack_id)
            else:  # progress events and other non-results with this correlation id
                drop.append(received.ack_id)
        await self._settle(client, subscription, release, drop)
        if candidates and cid not in results:
            first = min(candidates, key=_arrival)
            message = first.message
            results[cid] = {
                "type": message.attributes["ce-type"],
                "message_id": message.message_id,
                "publish_time": _iso(message.publish_time),
                "ce_id": message.attributes.get("ce-id", ""),
            }
            waiter.pending.discard(cid)
            if hub is not None:
                hub.forget(waiter, cid)
        return None

    async def _settle(
        self, client: Any, subscription: str, release: list[str], drop: list[str]
    ) -> None:
        """Nack results (they stay for the worker / a restarted trigger); ack everything else."""
        from google.api_core.exceptions import GoogleAPICallError

        try:
            if release:
                await client.modify_ack_deadline(
                    request={
                        "subscription": subscription,
                        "ack_ids": release,
                        "ack_deadline_seconds": 0,
                    },
                    timeout=30,
                )
            if drop:
                await client.acknowledge(
                    request={"subscription": subscription, "ack_ids": drop}, timeout=30
                )
        except GoogleAPICallError as exc:  # the lease expires by itself; nothing is lost
            self.log.warning("could not release/ack messages in %s: %r", subscription, exc)


def _arrival(received: Any) -> tuple[datetime, str]:
    """Order of arrival at Pub/Sub: publish time, then message id."""
    published = received.message.publish_time
    if not isinstance(published, datetime):
        published = datetime.fromtimestamp(0, UTC)
    elif published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    return published, str(received.message.message_id)


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def wait_blocking(trigger: RelayResultTrigger) -> dict[str, Any]:
    """Run a wait to its end in a fresh event loop (non-deferrable tasks), cleaning up after it."""
    return asyncio.run(_then_close(trigger.wait()))


def peek_blocking(trigger: RelayResultTrigger) -> dict[str, dict[str, Any]]:
    """One peek at every subscription in a fresh event loop (sensor poke mode)."""
    return asyncio.run(_then_close(trigger.peek_once()))


async def _then_close(work: Any) -> Any:
    from relay.airflow.hooks import RelayHook

    try:
        return await work
    finally:
        await _wakehub.close_all()
        await RelayHook.close_async_clients()
