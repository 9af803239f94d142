"""Persistence: restarts keep everything acknowledged as published; kill -9 loses nothing."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pull_all(subscriber: Any, sub: str, expect: int, timeout: float = 20) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": sub, "max_messages": 1000, "return_immediately": True},
            timeout=10,
        )
        out.extend(response.received_messages)
        if not response.received_messages:
            time.sleep(0.05)
    return out


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_restart_keeps_state(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str, how: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "durable-topic")
    dlq = publisher.topic_path(project, "durable-dlq")
    sub = subscriber.subscription_path(project, "durable-sub")
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dlq)
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "ack_deadline_seconds": 42,
            "filter": 'attributes.k="v"',
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": 10},
        }
    )
    ids = [publisher.publish(topic, f"{i}".encode(), k="v").result(10) for i in range(10)]
    publisher.publish(topic, b"filtered out", k="other").result(10)
    first = _pull_all(subscriber, sub, 10)
    assert len(first) == 10
    acked = [m for m in first if int(m.message.data) < 4]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in acked])
    subscriber.modify_ack_deadline(
        subscription=sub,
        ack_ids=[m.ack_id for m in first if m not in acked],
        ack_deadline_seconds=0,
    )
    second = _pull_all(subscriber, sub, 6)
    assert {m.delivery_attempt for m in second} == {2}
    time.sleep(0.3)  # attempt counts are written behind the delivery

    broker.restart(kill=how == "kill")

    got = subscriber.get_subscription(subscription=sub)
    assert got.ack_deadline_seconds == 42
    assert got.filter == 'attributes.k="v"'
    assert publisher.get_topic(topic=dlq).name == dlq
    after = _pull_all(subscriber, sub, 6)
    assert sorted(m.message.message_id for m in after) == sorted(ids[4:])
    assert {m.delivery_attempt for m in after} == {3}
    assert _pull_all(subscriber, sub, 1, timeout=0.5) == []
    # New ids never collide with old ones.
    assert publisher.publish(topic, b"new", k="v").result(10) not in ids
    publisher.stop()
    subscriber.close()


def test_sigterm_is_clean(start_broker: Callable[[Path], Any], tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "data")
    assert broker.stop() == 0
    log = broker.log_text()
    assert log.count("relay broker ready") == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_no_published_message_is_lost(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str, how: str
) -> None:
    """Publish and consume continuously, kill -9 (or stop) the broker, restart it: every id whose
    publish returned is received (before the crash or after the restart)."""
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "crash-topic")
    sub = subscriber.subscription_path(project, "crash-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)

    published: set[str] = set()
    received: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def publish_loop() -> None:
        n = 0
        while not stop.is_set():
            futures = [publisher.publish(topic, f"{n}-{i}".encode()) for i in range(50)]
            n += 1
            for future in futures:
                try:
                    message_id = future.result(60)
                except exceptions.GoogleAPIError:
                    continue  # not acknowledged as published: no promise
                with lock:
                    published.add(message_id)

    def callback(message: Any) -> None:
        with lock:
            received.add(message.message_id)
        message.ack()

    streaming = subscriber.subscribe(sub, callback)
    thread = threading.Thread(target=publish_loop, daemon=True)
    thread.start()
    time.sleep(1.5)
    if how == "kill":
        broker.kill()
        assert broker.proc.returncode == -signal.SIGKILL
    else:
        assert broker.stop() == 0  # in-flight publishes finish first
    with lock:
        before = len(published)
    broker.start()
    time.sleep(1.0)
    stop.set()
    thread.join(90)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            missing = published - received
        if not missing:
            break
        time.sleep(0.2)
    streaming.cancel()
    assert before > 0
    with lock:
        assert published - received == set(), f"{len(published - received)} of {len(published)}"
        assert len(published) > before  # publishing went on after the restart
    publisher.stop()
    subscriber.close()


def test_store_is_emptied_by_acks(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    import sqlite3

    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "gc-topic")
    subs = [subscriber.subscription_path(project, f"gc-sub-{i}") for i in range(2)]
    publisher.create_topic(name=topic)
    for sub in subs:
        subscriber.create_subscription(name=sub, topic=topic)
    for i in range(3):
        publisher.api.publish(
            topic=topic, messages=[{"data": b"%d" % j} for j in range(10 * i + 1)]
        )
    got = _pull_all(subscriber, subs[0], 33)
    subscriber.acknowledge(subscription=subs[0], ack_ids=[m.ack_id for m in got])
    subscriber.delete_subscription(subscription=subs[1])
    assert broker.stop() == 0
    with sqlite3.connect(broker.data_dir / "broker.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
    publisher.stop()
    subscriber.close()


def test_wal_is_checkpointed_off_the_commit_path(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    """Committed pages reach the database file within seconds, well before SQLite's automatic
    checkpoint (256 MiB of WAL) would run inside a commit and stall the Publish calls behind it."""
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "checkpointed")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        name=subscriber.subscription_path(project, "checkpointed"), topic=topic
    )
    database = tmp_path / "data" / "broker.sqlite3"
    before = database.stat().st_size
    payload = b"x" * 100_000
    for future in [publisher.publish(topic, payload) for _ in range(40)]:
        future.result(10)  # 4 MB committed (to the WAL)
    deadline = time.monotonic() + 10
    while database.stat().st_size - before < 3_000_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert database.stat().st_size - before >= 3_000_000
