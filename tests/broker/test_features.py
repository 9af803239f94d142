"""Filters, retry backoff, dead letters, expiration, retention and Seek, as Google has them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.protobuf import timestamp_pb2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pull(subscriber: Any, sub: str, n: int = 100) -> list[Any]:
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": n, "return_immediately": True}, timeout=10
    )
    return list(response.received_messages)


def _nack(subscriber: Any, sub: str, messages: list[Any]) -> None:
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[m.ack_id for m in messages], ack_deadline_seconds=0
    )


def _wait_pull(subscriber: Any, sub: str, timeout: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _pull(subscriber, sub)
        if got:
            return got
        time.sleep(0.05)
    return []


def test_filter_delivers_only_matching(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub(filter='attributes.kind = "a" OR hasPrefix(attributes.kind, "pre")')
    everything = make_sub()
    for kind in ("a", "b", "prefix", None):
        attributes = {"kind": kind} if kind else {"other": "x"}
        publisher.publish(topic, b"m", **attributes).result(10)
    assert sorted(m.message.attributes["kind"] for m in _pull(subscriber, sub)) == ["a", "prefix"]
    assert len(_pull(subscriber, everything)) == 4
    assert subscriber.get_subscription(subscription=sub).filter.startswith("attributes.kind")


def test_retry_policy_backoff(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub(
        retry_policy={"minimum_backoff": {"nanos": 600_000_000}, "maximum_backoff": {"seconds": 1}}
    )
    publisher.publish(topic, b"slow").result(10)
    _nack(subscriber, sub, _pull(subscriber, sub))
    start = time.monotonic()
    assert _pull(subscriber, sub) == []
    again = _wait_pull(subscriber, sub)
    first_wait = time.monotonic() - start
    assert len(again) == 1
    assert 0.5 <= first_wait < 3
    _nack(subscriber, sub, again)  # second failure: 1.2 s capped at maximum_backoff = 1 s
    start = time.monotonic()
    assert len(_wait_pull(subscriber, sub)) == 1
    assert 0.8 <= time.monotonic() - start < 3


def test_dead_letter_after_max_attempts(
    publisher: Any,
    subscriber: Any,
    project: str,
    topic: str,
    make_sub: Callable[..., str],
    unique: Callable[[str], str],
) -> None:
    dlq = publisher.topic_path(project, unique("dlq"))
    publisher.create_topic(name=dlq)
    dlq_sub = subscriber.subscription_path(project, unique("dlq-sub"))
    subscriber.create_subscription(name=dlq_sub, topic=dlq)
    sub = make_sub(
        dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5},
        retry_policy={"minimum_backoff": {}, "maximum_backoff": {}},
    )
    message_id = publisher.publish(topic, b"poison", origin="test").result(10)
    attempts = []
    for _ in range(5):
        got = _wait_pull(subscriber, sub)
        assert len(got) == 1
        attempts.append(got[0].delivery_attempt)
        _nack(subscriber, sub, got)
    assert attempts == [1, 2, 3, 4, 5]
    dead = _wait_pull(subscriber, dlq_sub)
    assert len(dead) == 1
    message = dead[0].message
    assert message.data == b"poison"
    assert message.message_id != message_id
    assert message.attributes["origin"] == "test"
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert message.attributes["CloudPubSubDeadLetterSourceSubscription"] == sub.rsplit("/", 1)[1]
    assert message.attributes["CloudPubSubDeadLetterSourceSubscriptionProject"] == project
    assert "CloudPubSubDeadLetterSourceTopicPublishTime" in message.attributes
    assert _pull(subscriber, sub) == []  # acked on the source


def test_expiration_policy_deletes_idle_subscription(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    """Google's minimum TTL is a day: the broker's clock is advanced instead of waited for."""
    broker = start_broker(tmp_path / "data", args=["--control"])
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "expiring")
    publisher.create_topic(name=topic)
    sub, never = (subscriber.subscription_path(project, n) for n in ("idle-sub", "never-sub"))
    day = {"seconds": 86400}
    subscriber.create_subscription(
        request={
            "name": sub,
            "topic": topic,
            "expiration_policy": {"ttl": day},
            "message_retention_duration": {"seconds": 600},
        }
    )
    subscriber.create_subscription(request={"name": never, "topic": topic, "expiration_policy": {}})
    assert "ttl" not in subscriber.get_subscription(subscription=never).expiration_policy
    broker.control({"advance_seconds": 0.6 * 86400})
    _pull(subscriber, sub)  # activity: the idle clock restarts
    broker.control({"advance_seconds": 0.6 * 86400})
    subscriber.get_subscription(subscription=sub)
    broker.control({"advance_seconds": 0.5 * 86400})
    # The deletion is an administrator operation the clock only starts, as on Google: wait for it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            subscriber.get_subscription(subscription=sub)
        except exceptions.NotFound:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"{sub} outlived its TTL by 10 s of wall time")
    subscriber.get_subscription(subscription=never)
    publisher.stop()
    subscriber.close()


def test_message_retention_drops_old_messages(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--control"])
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "retained")
    publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(project, "retained-sub")
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "message_retention_duration": {"seconds": 600}}
    )
    publisher.publish(topic, b"old").result(10)
    broker.control({"advance_seconds": 500})
    publisher.publish(topic, b"middle").result(10)
    broker.control({"advance_seconds": 200})  # "old" is 700 s old now, "middle" 200 s
    publisher.publish(topic, b"new").result(10)
    assert sorted(m.message.data for m in _pull(subscriber, sub)) == [b"middle", b"new"]
    publisher.stop()
    subscriber.close()


def _stamp(moment: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.fromtimestamp(moment, tz=dt.UTC))
    return stamp


def test_seek_with_retained_acked_messages(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub(retain_acked_messages=True)
    before = time.time() - 0.5
    for i in range(3):
        publisher.publish(topic, f"{i}".encode()).result(10)
    got = _pull(subscriber, sub)
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    assert _pull(subscriber, sub) == []
    subscriber.seek(request={"subscription": sub, "time": _stamp(before)})
    replay = _pull(subscriber, sub)
    assert sorted(m.message.data for m in replay) == [b"0", b"1", b"2"]
    subscriber.seek(request={"subscription": sub, "time": _stamp(time.time() + 1)})
    assert _pull(subscriber, sub) == []  # everything before the seek time counts as acked


def test_seek_forward_acks_without_retention(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    publisher.publish(topic, b"skip me").result(10)
    subscriber.seek(request={"subscription": sub, "time": _stamp(time.time() + 1)})
    assert _pull(subscriber, sub) == []


def test_seek_replays_topic_retention(
    publisher: Any, subscriber: Any, project: str, unique: Callable[[str], str]
) -> None:
    topic = publisher.topic_path(project, unique("retained"))
    publisher.create_topic(request={"name": topic, "message_retention_duration": {"seconds": 600}})
    sub = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "filter": "attributes:keep"}
    )
    before = time.time() - 0.5
    publisher.publish(topic, b"kept by the topic", keep="1").result(10)
    publisher.publish(topic, b"never matched the filter").result(10)
    got = _pull(subscriber, sub)
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    subscriber.seek(request={"subscription": sub, "time": _stamp(before)})
    assert [m.message.data for m in _pull(subscriber, sub)] == [b"kept by the topic"]


def test_seek_to_missing_snapshot_is_not_found(
    subscriber: Any, make_sub: Callable[..., str], project: str
) -> None:
    with pytest.raises(exceptions.NotFound, match="snapshot"):
        subscriber.seek(
            request={"subscription": make_sub(), "snapshot": f"projects/{project}/snapshots/s-1"}
        )
