"""StreamingPull as the google-cloud-pubsub client uses it, plus the response builder for Pull.

One stream = one `Consumer` with the client's flow-control limits. The stream's task sleeps on the
consumer's event until a publish, a nack, an expired lease or freed flow-control room wakes it;
a second task reads the client's requests (acks, modacks, deadline changes, heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.pubsub_v1 import types

from relay.broker._core import Broker, detached
from relay.broker._errors import BrokerError, invalid, not_found
from relay.broker._state import (
    Consumer,
    Entry,
    SubState,
    ack_id_of,
    check_ack_deadline,
    parse_ack_ids,
)
from relay.broker._store import Statement

__all__ = ["TokenExpiry", "fill_received", "streaming_pull"]

StreamingPullResponse: Any = types.StreamingPullResponse.pb()

# A stream sends at most one response per this many seconds: messages arriving one by one right
# after a response go out together in the next, so a busy stream does not cost the client one
# "receipt" ModifyAckDeadline round trip per message. At low rates nothing is delayed.
COALESCE_SECONDS = 0.002
# A client that sends receipts (the Python client modacks every message it receives before
# running callbacks, one blocking RPC per response) gets its next response once it has confirmed
# the last one (modack, ack or nack of its first message): what is published meanwhile goes out
# together instead of queueing behind the client's receipts. Never later than this after the
# last response, should a receipt not come.
RECEIPT_WAIT_SECONDS = 0.2


def fill_received(received: Any, sub: SubState, entries: list[Entry]) -> None:
    """Append ReceivedMessages for leased `entries` to the repeated field `received`."""
    with_attempts = sub.config.dead_letter_topic is not None
    for entry in entries:
        item = received.add()
        item.ack_id = ack_id_of(entry)
        item.message.MergeFromString(entry.msg.body)
        if with_attempts:
            item.delivery_attempt = entry.attempts


def _lifetime(broker: Broker, sub: SubState) -> float | None:
    """Seconds until the server closes this stream (None: never), or UNAVAILABLE right away,
    per the behaviour's stream_unavailable_rate and stream_lifetime."""
    behaviour = broker.behaviour
    if not behaviour.stream_unavailable_rate and behaviour.stream_lifetime is None:
        return None
    rng = broker.dice.rng("stream", sub.name)
    if rng.random() < behaviour.stream_unavailable_rate:
        raise BrokerError(
            grpc.StatusCode.UNAVAILABLE, "The service was unable to fulfill your request."
        )
    if behaviour.stream_lifetime is None:
        return None
    return rng.uniform(*behaviour.stream_lifetime)


def _check_deadline(value: int) -> int:
    if not 10 <= value <= 600:
        raise invalid(
            f"Invalid stream_ack_deadline_seconds: {value}; it must be between 10 and 600."
        )
    return value


def apply_request(broker: Broker, sub: SubState, consumer: Consumer, request: Any) -> None:
    """Acks, modacks and a changed stream deadline carried by one StreamingPullRequest; all of
    it is checked before any of it is applied."""
    acks = parse_ack_ids(request.ack_ids)
    ids = request.modify_deadline_ack_ids
    deadlines = request.modify_deadline_seconds
    if len(ids) != len(deadlines):
        raise invalid(
            "modify_deadline_ack_ids and modify_deadline_seconds must have the same length."
        )
    groups: dict[int, list[tuple[int, int]]] = {}
    for parsed, seconds in zip(parse_ack_ids(ids), deadlines, strict=True):
        groups.setdefault(check_ack_deadline(seconds), []).append(parsed)
    stream_deadline = request.stream_ack_deadline_seconds
    if stream_deadline:
        _check_deadline(stream_deadline)
    if acks:
        statements: list[Statement] = []
        sub.ack(acks, statements)
        if statements:
            broker.post(statements)
    for seconds, group in groups.items():
        sub.modify(group, seconds)
    if stream_deadline:
        consumer.deadline_s = stream_deadline
    sub.touch()


def _check_later(request: Any) -> None:
    """Fields Google takes only on a stream's first request (INVALID_ARGUMENT afterwards)."""
    for field in ("subscription", "max_outstanding_messages", "max_outstanding_bytes"):
        if getattr(request, field):
            raise invalid(
                f"StreamingPullRequest.{field} may be set only on the first request of a stream."
            )


async def _read(
    broker: Broker, sub: SubState, consumer: Consumer, requests: AsyncIterator[Any]
) -> None:
    try:
        async for request in requests:
            _check_later(request)
            apply_request(broker, sub, consumer, request)
    finally:
        consumer.wake()


def _end_stream(consumer: Consumer) -> None:
    """The stream's lifetime is over: the server closes it, as Google does from time to time."""
    consumer.closed = True
    consumer.wake()


_STREAM_CLOSED = (
    "The service closed the stream (Google closes StreamingPull streams from time to time; "
    "reconnect)."
)
_TOKEN_EXPIRED = (
    "The service closed the stream: the access token it was opened with has expired (the relay "
    "broker closes a stream then, so that every stream is authenticated again at least once per "
    "token lifetime; reconnect with a fresh token)."
)


async def _held_back(consumer: Consumer, last_sent: float) -> bool:
    """Wait while the next response must wait: for the last one's receipt, or the coalescing gap.

    Returns whether it waited (the caller then looks again at what is ready).
    """
    loop = asyncio.get_running_loop()
    now = loop.time()
    if consumer.sends_receipts and consumer.receipt is not None:
        until = last_sent + RECEIPT_WAIT_SECONDS
        if now >= until:
            return False
        timer = loop.call_at(until, consumer.event.set)
        try:
            await consumer.event.wait()
        finally:
            timer.cancel()
        return True
    pause = last_sent + COALESCE_SECONDS - now
    if pause <= 0:
        return False
    await asyncio.sleep(pause)
    return True


@dataclass(frozen=True)
class TokenExpiry:
    """When the access token a stream was opened with expires (`at`, seconds since the epoch on
    the broker's clock), and what to call when the stream is closed for it."""

    at: float
    closed: Callable[[], None]


async def streaming_pull(
    broker: Broker, requests: AsyncIterator[Any], token: TokenExpiry | None = None
) -> AsyncIterator[Any]:
    """Serve one StreamingPull stream; raises BrokerError for a status to send.

    With `token` (--require-auth) the stream is closed with UNAVAILABLE when its token expires.
    """
    first = None
    async for request in requests:
        first = request
        break
    if first is None:
        return
    if not first.subscription:
        raise invalid("The first StreamingPullRequest must name a subscription.")
    sub = broker.sub(first.subscription)
    if sub.pb.detached:
        raise detached(sub)
    lifetime = _lifetime(broker, sub)
    consumer = Consumer(
        _check_deadline(first.stream_ack_deadline_seconds),
        max(first.max_outstanding_messages, 0),
        max(first.max_outstanding_bytes, 0),
    )
    apply_request(broker, sub, consumer, first)
    sub.consumers.add(consumer)
    reader = asyncio.get_running_loop().create_task(_read(broker, sub, consumer, requests))
    ordered = sub.config.ordered
    loop = asyncio.get_running_loop()
    ender = None if lifetime is None else loop.call_later(lifetime, _end_stream, consumer)
    closed_because = [_STREAM_CLOSED]
    if token is not None:

        def token_expired() -> None:
            if not consumer.closed:
                closed_because[0] = _TOKEN_EXPIRED
                token.closed()
                _end_stream(consumer)

        # On the broker's clock: advancing it (POST /control) expires the stream's token too.
        left = token.at - broker.clock.wall_ns() / 1e9
        broker.scheduler.at(broker.clock.now() + max(left, 0.0), token_expired)
    last_sent = float("-inf")
    try:
        while True:
            if sub.deleted:
                raise not_found("subscription", sub.name)
            if sub.pb.detached:
                raise detached(sub)
            if broker.closing:
                raise BrokerError(grpc.StatusCode.UNAVAILABLE, "The broker is shutting down.")
            if consumer.closed:
                raise BrokerError(grpc.StatusCode.UNAVAILABLE, closed_because[0])
            if reader.done():
                reader.result()  # raises the reader's error, if any
                return  # the client closed its side
            consumer.event.clear()
            if sub.ready and await _held_back(consumer, last_sent):
                continue
            entries = sub.take(consumer)
            if entries:
                response = StreamingPullResponse()
                response.subscription_properties.message_ordering_enabled = ordered
                fill_received(response.received_messages, sub, entries)
                consumer.receipt = entries[0]
                yield response
                last_sent = loop.time()
                continue
            sub.waiters.add(consumer)
            await consumer.event.wait()
            sub.waiters.discard(consumer)
    finally:
        if ender is not None:
            ender.cancel()
        consumer.closed = True
        sub.consumers.discard(consumer)
        sub.waiters.discard(consumer)
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
