"""StreamingPull: subscribe() of the real client, and raw streams to check flow control."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1 import types

from relay.broker._streaming import RECEIPT_WAIT_SECONDS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class RawStream:
    """A StreamingPull call driven by hand through the client's GAPIC method."""

    def __init__(self, subscriber: Any, subscription: str, **first: Any) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        first.setdefault("stream_ack_deadline_seconds", 60)
        self.requests.put(types.StreamingPullRequest(subscription=subscription, **first))
        self.stream = subscriber.streaming_pull(requests=self._requests(), timeout=60)
        self.received: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[tuple[float, list[Any]]] = queue.Queue()  # (arrival, messages)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self.requests.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self.stream:
                self.responses.put((time.monotonic(), list(response.received_messages)))
                for message in response.received_messages:
                    self.received.put(message)
        except BaseException as exc:  # recorded for the test to check
            self.error = exc

    def take(self, n: int, timeout: float = 10) -> list[Any]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out.append(self.received.get(timeout=max(deadline - time.monotonic(), 0.01)))
        return out

    def next_response(self, timeout: float = 10) -> tuple[float, list[Any]]:
        """(arrival time, messages) of the next response."""
        return self.responses.get(timeout=timeout)

    def nothing_for(self, seconds: float) -> bool:
        try:
            self.received.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.requests.put(None)
        self.stream.cancel()
        self.thread.join(10)


def test_subscribe_receives_and_acks(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    ids = {publisher.publish(topic, f"{i}".encode()).result(10) for i in range(50)}
    seen: set[str] = set()
    done = threading.Event()

    def callback(message: Any) -> None:
        seen.add(message.message_id)
        message.ack()
        if seen >= ids:
            done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(20), f"got {len(seen)} of {len(ids)}"
    finally:
        future.cancel()
        future.result(10)
    time.sleep(0.5)  # acks travel as unary calls; the broker commits them
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": 100, "return_immediately": True}
    )
    assert list(response.received_messages) == []


def test_subscribe_nack_redelivers(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    publisher.publish(topic, b"nack-me").result(10)
    attempts: list[str] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        attempts.append(message.message_id)
        if len(attempts) < 3:
            message.nack()
        else:
            message.ack()
            done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(20)
    finally:
        future.cancel()
        future.result(10)
    assert len(set(attempts)) == 1
    assert len(attempts) == 3


def test_stream_on_missing_subscription_is_not_found(subscriber: Any, project: str) -> None:
    future = subscriber.subscribe(f"projects/{project}/subscriptions/no-such-sub", lambda m: None)
    with pytest.raises(exceptions.NotFound):
        future.result(20)


def test_deleting_subscription_ends_stream(subscriber: Any, make_sub: Callable[..., str]) -> None:
    sub = make_sub()
    future = subscriber.subscribe(sub, lambda m: None)
    time.sleep(0.5)
    subscriber.delete_subscription(subscription=sub)
    with pytest.raises(exceptions.NotFound):
        future.result(20)


def test_flow_control_limits_outstanding_messages(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    stream = RawStream(subscriber, sub, max_outstanding_messages=3)
    try:
        for i in range(10):
            publisher.publish(topic, f"{i}".encode()).result(10)
        first = stream.take(3)
        assert stream.nothing_for(0.5)
        # Acks on the stream and as unary calls both free room.
        stream.requests.put(types.StreamingPullRequest(ack_ids=[first[0].ack_id]))
        subscriber.acknowledge(subscription=sub, ack_ids=[first[1].ack_id])
        more = stream.take(2)
        assert stream.nothing_for(0.5)
        # A nack frees room too (the nacked message goes back in the queue).
        subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[first[2].ack_id], ack_deadline_seconds=0
        )
        again = stream.take(1)
        assert stream.nothing_for(0.3)
        assert len({m.message.data for m in first + more + again}) == 6
    finally:
        stream.close()


def test_flow_control_limits_outstanding_bytes(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    stream = RawStream(subscriber, sub, max_outstanding_bytes=2500)
    try:
        for i in range(5):
            publisher.publish(topic, bytes([65 + i]) * 1000).result(10)
        got = stream.take(2)
        assert stream.nothing_for(0.5)
        stream.requests.put(types.StreamingPullRequest(ack_ids=[got[0].ack_id]))
        assert len(stream.take(1)) == 1
    finally:
        stream.close()


def test_stream_modack_and_heartbeat(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    stream = RawStream(subscriber, sub)
    try:
        publisher.publish(topic, b"x").result(10)
        (message,) = stream.take(1)
        stream.requests.put(types.StreamingPullRequest())  # heartbeat
        stream.requests.put(
            types.StreamingPullRequest(
                modify_deadline_ack_ids=[message.ack_id], modify_deadline_seconds=[1]
            )
        )
        (again,) = stream.take(1, timeout=5)  # the 1 s lease expired: redelivered
        assert again.message.message_id == message.message.message_id
        stream.requests.put(types.StreamingPullRequest(stream_ack_deadline_seconds=30))
        stream.requests.put(types.StreamingPullRequest(ack_ids=[again.ack_id]))
        assert stream.nothing_for(1.5)
    finally:
        stream.close()


def test_bad_first_request_is_invalid(subscriber: Any, make_sub: Callable[..., str]) -> None:
    stream = RawStream(subscriber, make_sub(), stream_ack_deadline_seconds=5)
    stream.thread.join(10)
    assert isinstance(stream.error, exceptions.InvalidArgument)
    assert "stream_ack_deadline_seconds" in str(stream.error)
    stream.close()


def test_ordering_one_outstanding_per_key(
    broker: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub(enable_message_ordering=True)
    ordered = broker.publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    for i in range(3):
        for key in ("a", "b"):
            ordered.publish(topic, f"{key}{i}".encode(), ordering_key=key).result(10)
    ordered.publish(topic, b"free").result(10)
    stream = RawStream(subscriber, sub)
    try:
        first = stream.take(3)
        assert sorted(m.message.data for m in first) == [b"a0", b"b0", b"free"]
        assert stream.nothing_for(0.5)
        by_data = {m.message.data: m for m in first}
        # Nack a0: it comes back before a1, which stays blocked.
        subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[by_data[b"a0"].ack_id], ack_deadline_seconds=0
        )
        (redelivered,) = stream.take(1)
        assert redelivered.message.data == b"a0"
        subscriber.acknowledge(
            subscription=sub, ack_ids=[redelivered.ack_id, by_data[b"b0"].ack_id]
        )
        assert sorted(m.message.data for m in stream.take(2)) == [b"a1", b"b1"]
    finally:
        stream.close()
        ordered.stop()


def test_subscribe_preserves_order_per_key(
    broker: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub(enable_message_ordering=True)
    ordered = broker.publisher(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    futures = [ordered.publish(topic, f"{i}".encode(), ordering_key=f"k{i % 3}") for i in range(60)]
    for future in futures:
        future.result(10)
    ordered.stop()
    got: dict[str, list[int]] = {}
    lock = threading.Lock()
    done = threading.Event()

    def callback(message: Any) -> None:
        with lock:
            got.setdefault(message.ordering_key, []).append(int(message.data))
            if sum(len(v) for v in got.values()) == 60:
                done.set()
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(30)
    finally:
        future.cancel()
        future.result(10)
    for key, values in got.items():
        assert values == sorted(values), key


def test_burst_is_shared_between_streams(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    streams = [RawStream(subscriber, sub) for _ in range(2)]
    try:
        time.sleep(0.5)  # both streams open and waiting
        publisher.api.publish(topic=topic, messages=[{"data": b"%d" % i} for i in range(100)])
        time.sleep(0.5)
        counts = [s.received.qsize() for s in streams]
        assert sum(counts) == 100
        assert min(counts) >= 25, counts
    finally:
        for s in streams:
            s.close()


def _data(messages: list[Any]) -> list[bytes]:
    return [m.message.data for m in messages]


@pytest.fixture
def receipting(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> Iterator[tuple[RawStream, str, Any, float]]:
    """A raw stream that has sent one receipt (a unary modack, as the Python client does), then
    got a second response it has not confirmed: (stream, subscription, its message, arrival)."""
    sub = make_sub()
    stream = RawStream(subscriber, sub)
    try:
        publisher.publish(topic, b"0").result(10)
        _, (first,) = stream.next_response()
        subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=[first.ack_id], ack_deadline_seconds=60
        )
        publisher.publish(topic, b"1").result(10)
        sent_at, (second,) = stream.next_response()
        yield stream, sub, second, sent_at
    finally:
        stream.close()


def test_next_response_waits_for_the_receipt_of_the_last(
    publisher: Any, subscriber: Any, topic: str, receipting: tuple[RawStream, str, Any, float]
) -> None:
    """What was published while the last response was unconfirmed goes out in one response once
    the client confirms it: not one response per publish, each waiting for its own receipt."""
    stream, sub, second, sent_at = receipting
    for i in (2, 3, 4):
        publisher.publish(topic, b"%d" % i).result(10)
    confirmed_at = time.monotonic()
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[second.ack_id], ack_deadline_seconds=60
    )
    arrived, messages = stream.next_response()
    if arrived < sent_at + RECEIPT_WAIT_SECONDS:  # not released by the time limit
        assert arrived >= confirmed_at
        assert _data(messages) == [b"2", b"3", b"4"]
    else:  # a slow machine: the limit released what had come
        assert _data(messages)[0] == b"2"


def test_unconfirmed_response_holds_the_next_only_for_a_while(
    publisher: Any, topic: str, receipting: tuple[RawStream, str, Any, float]
) -> None:
    """A receipt that never comes delays the next response by the time limit, not forever."""
    stream, _, _, sent_at = receipting
    publisher.publish(topic, b"2").result(10)
    arrived, messages = stream.next_response()
    assert _data(messages) == [b"2"]
    assert arrived >= sent_at + RECEIPT_WAIT_SECONDS - 0.01


def test_acks_release_the_next_response(
    publisher: Any, topic: str, receipting: tuple[RawStream, str, Any, float]
) -> None:
    """An ack (on the stream) of the last response's first message confirms it too."""
    stream, _, second, sent_at = receipting
    publisher.publish(topic, b"2").result(10)
    acked_at = time.monotonic()
    stream.requests.put(types.StreamingPullRequest(ack_ids=[second.ack_id]))
    arrived, messages = stream.next_response()
    assert _data(messages) == [b"2"]
    assert arrived >= acked_at or arrived >= sent_at + RECEIPT_WAIT_SECONDS - 0.01
