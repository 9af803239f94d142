"""Push delivery: one worker per push subscription POSTs leased messages through `_push.push`.

A worker is a `Consumer` whose flow-control limit is the subscription's push concurrency, so at
most that many requests are in flight; 2xx-ack statuses ack, anything else nacks (redelivered
with the retry-policy or Google's push backoff, dead-lettered after max attempts).

With the behaviour's `push_backoff` the worker also paces the whole subscription as Google does
(cloud.google.com/pubsub/docs/push, "Push backoff" and "Delivery rate"): a slow start, where the
number of outstanding pushes (the push window) starts at 1, doubles with every acked push up to
the concurrency cap and halves with every failed one; and after a failed push no new push starts
for 100 ms, doubling with each further consecutive failure up to 60 s, until a push succeeds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import aiohttp

from relay.broker._config import PUSH_CONCURRENCY_ATTRIBUTE
from relay.broker._core import Broker, PubsubMessage
from relay.broker._oidc import TokenSigner
from relay.broker._push import PushRequest, push
from relay.broker._state import Consumer, Entry, SubState
from relay.broker._store import Statement

__all__ = ["PushManager"]

_LOG = logging.getLogger("relay.broker.push")
_TOKEN_REUSE = 3000.0  # seconds a minted token (valid 3600 s) is reused
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 60.0


class _Worker:
    def __init__(self, manager: PushManager, sub: SubState) -> None:
        self.manager = manager
        self.sub = sub
        attributes = sub.pb.push_config.attributes
        concurrency = int(
            attributes.get(PUSH_CONCURRENCY_ATTRIBUTE) or manager.broker.push_concurrency
        )
        self.cap = concurrency
        self.consumer = Consumer(sub.config.ack_deadline, concurrency)
        self.window = 1  # push backoff: the slow start's window, and the pause after failures
        self.failures = 0
        self.paused_until = 0.0
        self.refused = False  # the push config breaks the token rules (logged once)
        self.inflight: set[asyncio.Task[None]] = set()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        self.consumer.closed = True
        self.consumer.wake()

    async def _run(self) -> None:
        sub = self.sub
        consumer = self.consumer
        broker = self.manager.broker
        try:
            while not consumer.closed and not sub.deleted:
                consumer.event.clear()
                if broker.behaviour.push_backoff:
                    pause = self.paused_until - asyncio.get_running_loop().time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                        continue
                    consumer.max_messages = self.window
                else:
                    consumer.max_messages = self.cap
                entries = sub.take(consumer, consumer.max_messages)
                if entries:
                    for entry in entries:
                        task = asyncio.get_running_loop().create_task(
                            self._deliver(entry, (entry.msg.seq, entry.attempts))
                        )
                        self.inflight.add(task)
                        task.add_done_callback(self.inflight.discard)
                    continue
                sub.waiters.add(consumer)
                await consumer.event.wait()
                sub.waiters.discard(consumer)
        finally:
            sub.waiters.discard(consumer)

    async def _deliver(self, entry: Entry, delivery: tuple[int, int]) -> None:
        sub = self.sub
        config = sub.config
        pb = PubsubMessage.FromString(entry.msg.body)
        push_config = sub.pb.push_config
        refusal = self.manager.broker.push_tokens.refusal(push_config)
        if refusal is not None:  # a stored config from before the rules or the allow lists
            if not self.refused:
                self.refused = True
                _LOG.warning(
                    "not pushing %s: %s Change its push config (ModifyPushConfig).",
                    sub.name,
                    refusal.message,
                )
            self._paced(False)
            sub.modify([delivery], 0)
            return
        request = PushRequest(
            endpoint=config.push_endpoint,
            subscription=sub.name,
            topic=entry.msg.topic,
            data=pb.data,
            message_id=pb.message_id,
            publish_time=dt.datetime.fromtimestamp(
                pb.publish_time.seconds + pb.publish_time.nanos / 1e9, tz=dt.UTC
            ),
            attributes=dict(pb.attributes),
            ordering_key=pb.ordering_key,
            delivery_attempt=entry.attempts if config.dead_letter_topic else None,
            no_wrapper=push_config.HasField("no_wrapper"),
            write_metadata=push_config.no_wrapper.write_metadata,
            push_attributes=dict(push_config.attributes),
            token=self.manager.token(push_config),
        )
        try:
            ok = await push(self.manager.session, request, config.ack_deadline)
        except Exception:
            _LOG.exception("push to %s failed", config.push_endpoint)
            ok = False
        if sub.deleted:
            return
        self._paced(ok)
        if ok:
            statements: list[Statement] = []
            sub.ack([delivery], statements)
            sub.touch()
            if statements:
                self.manager.broker.post(statements)
        else:
            sub.modify([delivery], 0)

    def _paced(self, ok: bool) -> None:
        """Push backoff (when on): grow or shrink the window, pause after failures."""
        if ok:
            self.failures = 0
            self.window = min(self.window * 2, self.cap)
            return
        self.failures += 1
        self.window = max(self.window // 2, 1)
        pause = min(_BACKOFF_FIRST * 2 ** min(self.failures - 1, 20), _BACKOFF_MAX)
        self.paused_until = asyncio.get_running_loop().time() + pause


class PushManager:
    """Starts, restarts and stops push workers as subscriptions come and go."""

    def __init__(self, broker: Broker, session: aiohttp.ClientSession, signer: TokenSigner) -> None:
        self.broker = broker
        self.session = session
        self.signer = signer
        self.workers: dict[str, _Worker] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        broker.on_push_change = self.refresh
        for sub in broker.subs.values():
            self.refresh(sub)

    def refresh(self, sub: SubState) -> None:
        """(Re)start or stop the worker of `sub` to match its current push config."""
        old = self.workers.pop(sub.name, None)
        if old is not None:
            old.close()
        if not sub.deleted and sub.config.push_endpoint:
            self.workers[sub.name] = _Worker(self, sub)

    def token(self, push_config: Any) -> str | None:
        """An OIDC token for the push config (cached for most of its lifetime), or None."""
        if not push_config.HasField("oidc_token"):
            return None
        oidc = push_config.oidc_token
        audience = oidc.audience or push_config.push_endpoint
        key = (audience, oidc.service_account_email)
        cached = self._tokens.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        token = self.signer.mint(audience, oidc.service_account_email)
        self._tokens[key] = (token, now + _TOKEN_REUSE)
        return token

    async def close(self) -> None:
        """Stop every worker; in-flight pushes are cancelled (their leases simply expire)."""
        tasks: list[asyncio.Task[Any]] = []
        for worker in self.workers.values():
            worker.close()
            tasks.append(worker.task)
            tasks.extend(worker.inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
