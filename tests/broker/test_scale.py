"""Idle StreamingPull streams are cheap: 2,000 open streams, near-zero broker CPU while idle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient, types

STREAMS = 2_000
SUBSCRIPTIONS = 20


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_two_thousand_idle_streams(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str, monkeypatch: Any
) -> None:
    broker = start_broker(tmp_path / "data")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", broker.host)
    publisher = PublisherAsyncClient()
    subscriber = SubscriberAsyncClient()
    topic = f"projects/{project}/topics/many-streams"
    await publisher.create_topic(name=topic)
    subs = [f"projects/{project}/subscriptions/many-{i}" for i in range(SUBSCRIPTIONS)]
    for sub in subs:
        await subscriber.create_subscription(name=sub, topic=topic)

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
