"""Publish, Pull, Acknowledge and ModifyAckDeadline with the real client library, and the limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.pubsub_v1 import SubscriberClient, types
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

# return_immediately (deprecated by Google, still served) keeps "nothing there" checks fast.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pull(subscriber: Any, sub: str, n: int = 100, immediately: bool = True) -> list[Any]:
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": n, "return_immediately": immediately},
        timeout=30,
    )
    return list(response.received_messages)


def test_publish_returns_ids_and_pull_gets_messages(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    before = time.time()
    ids = [publisher.publish(topic, f"m{i}".encode(), n=str(i)).result(10) for i in range(5)]
    assert len(set(ids)) == 5
    received = _pull(subscriber, sub)
    assert [m.message.data for m in received] == [f"m{i}".encode() for i in range(5)]
    assert [m.message.message_id for m in received] == ids
    assert [m.message.attributes["n"] for m in received] == [str(i) for i in range(5)]
    stamp = received[0].message.publish_time.timestamp()
    assert before - 1 <= stamp <= time.time() + 1
    assert all(m.delivery_attempt == 0 for m in received)  # no dead-letter policy
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in received])
    assert _pull(subscriber, sub) == []


def test_only_messages_published_after_creation(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    publisher.publish(topic, b"early").result(10)
    sub = make_sub()
    publisher.publish(topic, b"late").result(10)
    assert [m.message.data for m in _pull(subscriber, sub)] == [b"late"]


def test_fan_out_to_every_subscription(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    subs = [make_sub() for _ in range(3)]
    publisher.publish(topic, b"x").result(10)
    for sub in subs:
        assert [m.message.data for m in _pull(subscriber, sub)] == [b"x"]


def test_waiting_pull_is_woken_by_publish(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_pull, subscriber, sub, 10, False)
        time.sleep(0.5)
        assert not waiting.done()
        start = time.monotonic()
        publisher.publish(topic, b"wake").result(10)
        received = waiting.result(10)
        assert time.monotonic() - start < 2
    assert [m.message.data for m in received] == [b"wake"]


def test_nack_redelivers_and_ack_is_final(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    publisher.publish(topic, b"again").result(10)
    first = _pull(subscriber, sub)
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first[0].ack_id], ack_deadline_seconds=0
    )
    second = _pull(subscriber, sub)
    assert [m.message.message_id for m in second] == [first[0].message.message_id]
    assert second[0].ack_id != first[0].ack_id
    # A stale ack id cannot nack the new delivery.
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[first[0].ack_id], ack_deadline_seconds=0
    )
    assert _pull(subscriber, sub) == []
    subscriber.acknowledge(subscription=sub, ack_ids=[second[0].ack_id])
    assert _pull(subscriber, sub) == []


def test_lease_expiry_and_extension(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    publisher.publish(topic, b"a").result(10)
    publisher.publish(topic, b"b").result(10)
    leased = _pull(subscriber, sub)
    assert len(leased) == 2
    by_data = {m.message.data: m.ack_id for m in leased}
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[by_data[b"a"]], ack_deadline_seconds=1
    )
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[by_data[b"b"]], ack_deadline_seconds=60
    )
    assert _pull(subscriber, sub) == []
    time.sleep(1.3)
    again = _pull(subscriber, sub)
    assert [m.message.data for m in again] == [b"a"]  # "b" is still leased


def test_publish_to_missing_topic(publisher: Any, project: str) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.api.publish(
            topic=f"projects/{project}/topics/no-such-topic", messages=[{"data": b"x"}]
        )


def test_pull_errors(subscriber: Any, make_sub: Callable[..., str], project: str) -> None:
    with pytest.raises(exceptions.NotFound):
        subscriber.pull(subscription=f"projects/{project}/subscriptions/nope-nope", max_messages=1)
    sub = make_sub()
    with pytest.raises(exceptions.InvalidArgument, match="max_messages"):
        subscriber.pull(request={"subscription": sub, "max_messages": 0})
    with pytest.raises(exceptions.InvalidArgument, match="invalid ack ID"):
        subscriber.acknowledge(subscription=sub, ack_ids=["garbage"])
    with pytest.raises(exceptions.InvalidArgument, match="between 0 and 600"):
        subscriber.modify_ack_deadline(subscription=sub, ack_ids=["1-1"], ack_deadline_seconds=601)
    with pytest.raises(exceptions.InvalidArgument, match="ack ids"):
        subscriber.acknowledge(subscription=sub, ack_ids=[])
    with pytest.raises(exceptions.InvalidArgument, match="subscriptions"):
        subscriber.pull(subscription="subscriptions/x", max_messages=1)
    with pytest.raises(exceptions.InvalidArgument, match="topics"):
        subscriber.pull(subscription=f"projects/{project}/topics/not-a-sub", max_messages=1)


def test_publish_to_malformed_topic_name(publisher: Any) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid \\[topics\\] name"):
        publisher.api.publish(topic="projects/p/topics/x", messages=[{"data": b"x"}])


def _publish_raw(publisher: Any, topic: str, messages: list[dict[str, Any]]) -> Any:
    return publisher.api.publish(topic=topic, messages=messages, timeout=30)


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([{"data": b"x" * (10 * 1024 * 1024 + 1)}], "maximum message size"),
        ([{"data": b"x", "attributes": {f"k{i}": "v" for i in range(101)}}], "101 attributes"),
        ([{"data": b"x", "attributes": {"k" * 257: "v"}}], "attribute key"),
        ([{"data": b"x", "attributes": {"k": "v" * 1025}}], "value of attribute"),
        ([{"data": b"x", "attributes": {"googthing": "v"}}], "reserved"),
        ([{"data": b""}], "empty"),
        ([{"data": b"x"}] * 1001, "maximum value is 1000"),
        ([{"data": b"x" * (6 * 1024 * 1024)}, {"data": b"y" * (5 * 1024 * 1024)}], "payload size"),
        # 9,999,980 bytes of messages, but over 10,000,000 bytes of PublishRequest with framing
        ([{"data": b"x" * 4_999_990}] * 2, "10000000 bytes"),
        ([], "at least one message"),
    ],
    ids=[
        "message-size",
        "attr-count",
        "key-size",
        "value-size",
        "goog-key",
        "empty",
        "count",
        "request-size",
        "request-size-with-framing",
        "no-messages",
    ],
)
def test_publish_limits(
    publisher: Any, topic: str, messages: list[dict[str, Any]], words: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=words):
        _publish_raw(publisher, topic, messages)


def test_limits_are_inclusive(
    broker: Any, publisher: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    # The stock emulator channel cannot receive more than 4 MiB; use one that can.
    channel = grpc.insecure_channel(broker.host, options=[("grpc.max_receive_message_length", -1)])
    subscriber = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    sub = make_sub()
    attributes = {f"{i:03d}" + "k" * 253: "v" * 1024 for i in range(100)}
    _publish_raw(publisher, topic, [{"data": b"x", "attributes": attributes}])
    _publish_raw(publisher, topic, [{"data": b"y"}] * 1000)
    _publish_raw(publisher, topic, [{"attributes": {"only": "attributes"}}])
    big = b"z" * _largest_data(topic)
    _publish_raw(publisher, topic, [{"data": big}])
    received = []
    while len(received) < 1003:
        batch = _pull(subscriber, sub, 1000)
        assert batch
        received.extend(batch)
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in batch])
    assert received[0].message.attributes == attributes
    assert received[-1].message.data == big
    channel.close()


def _largest_data(topic: str) -> int:
    """The data size that makes a one-message PublishRequest exactly 10,000,000 bytes."""
    size = 10_000_000
    while True:
        request = types.PublishRequest(topic=topic, messages=[{"data": b"z" * size}])
        excess = types.PublishRequest.pb(request).ByteSize() - 10_000_000
        if excess == 0:
            return size
        size -= max(excess, 1)


def test_request_of_one_byte_too_many_is_refused(publisher: Any, topic: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="10000000 bytes"):
        _publish_raw(publisher, topic, [{"data": b"z" * (_largest_data(topic) + 1)}])


def test_many_concurrent_publishers(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    futures = [publisher.publish(topic, f"{i}".encode()) for i in range(2000)]
    ids = {f.result(30) for f in futures}
    assert len(ids) == 2000
    seen = set()
    while len(seen) < 2000:
        batch = _pull(subscriber, sub, 1000)
        assert batch
        seen.update(m.message.message_id for m in batch)
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in batch])
    assert seen == ids


def test_proto_plus_types_roundtrip(subscriber: Any, make_sub: Callable[..., str]) -> None:
    sub = make_sub()
    got = subscriber.get_subscription(request=types.GetSubscriptionRequest(subscription=sub))
    assert isinstance(got, types.Subscription)
