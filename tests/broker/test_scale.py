"""Many StreamingPull streams: 2,000 idle ones cost no CPU; a burst on a busy broker all open."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient, types

STREAMS = 2_000
SUBSCRIPTIONS = 20


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _topic_with_subscriptions(
    broker: Any, monkeypatch: Any, project: str, name: str
) -> tuple[Any, PublisherAsyncClient, SubscriberAsyncClient, str, list[str]]:
    """Async clients on `broker`, one topic and SUBSCRIPTIONS subscriptions on it."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", broker.host)
    publisher = PublisherAsyncClient()
    subscriber = SubscriberAsyncClient()
    topic = f"projects/{project}/topics/{name}"
    await publisher.create_topic(name=topic)
    subs = [f"projects/{project}/subscriptions/{name}-{i}" for i in range(SUBSCRIPTIONS)]
    for sub in subs:
        await subscriber.create_subscription(name=sub, topic=topic)
    return broker, publisher, subscriber, topic, subs


async def test_two_thousand_idle_streams(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str, monkeypatch: Any
) -> None:
    broker, publisher, subscriber, topic, subs = await _topic_with_subscriptions(
        start_broker(tmp_path / "data"), monkeypatch, project, "many"
    )

    stop = asyncio.Event()
    received: list[str] = []
    all_received = asyncio.Event()

    async def requests(sub: str) -> AsyncIterator[Any]:
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
        await stop.wait()

    async def stream(sub: str) -> None:
        responses = await subscriber.streaming_pull(requests=requests(sub))
        async for response in responses:
            received.extend(m.message.message_id for m in response.received_messages)
            if len(received) >= SUBSCRIPTIONS:
                all_received.set()

    tasks = [asyncio.create_task(stream(subs[i % SUBSCRIPTIONS])) for i in range(STREAMS)]
    try:
        await asyncio.sleep(3)  # let every stream open
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()][:1]
        before = _cpu_seconds(broker.proc.pid)
        await asyncio.sleep(3)
        idle_cpu = _cpu_seconds(broker.proc.pid) - before
        assert idle_cpu < 0.3, f"broker used {idle_cpu:.2f} s CPU in 3 s with idle streams"
        response = await publisher.publish(topic=topic, messages=[{"data": b"wake"}])
        await asyncio.wait_for(all_received.wait(), 20)
        await asyncio.sleep(0.2)  # a second delivery would show up now
        # Each subscription delivers the message to exactly one of its streams.
        assert received == [response.message_ids[0]] * SUBSCRIPTIONS
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_burst_of_streams_on_a_stalled_broker(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str, monkeypatch: Any
) -> None:
    """Streams opened while the broker is busy all survive (gRPC drops calls queued past 1,000)."""
    broker, _, subscriber, _, subs = await _topic_with_subscriptions(
        start_broker(tmp_path / "data"), monkeypatch, project, "burst"
    )

    stop = asyncio.Event()

    async def requests(sub: str) -> AsyncIterator[Any]:
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
        await stop.wait()

    async def stream(sub: str) -> None:
        responses = await subscriber.streaming_pull(requests=requests(sub))
        async for _ in responses:
            pass

    tasks = [asyncio.create_task(stream(subs[0]))]  # connects the channel
    await asyncio.sleep(1)
    # A stopped broker stands for one whose event loop is busy: every stream opened meanwhile
    # reaches gRPC at once on resume, far faster than the loop accepts calls one by one.
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        tasks += [asyncio.create_task(stream(subs[i % SUBSCRIPTIONS])) for i in range(STREAMS)]
        await asyncio.sleep(2)  # every stream's headers are sent
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    try:
        await asyncio.sleep(5)  # the broker accepts the backlog
        ended = [t for t in tasks if t.done()]
        assert not ended, f"{len(ended)} streams ended: {ended[0].exception()!r}"
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
