"""What Google is allowed to do, shown on demand: each behaviour alone, then the google profile.

Each test starts a broker of its own with one behaviour switched on (at rate 1 where a rate is
involved, so the test does not depend on luck) and checks it through the stock client, and that
nothing accepted is lost on the way.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud.pubsub_v1.types import PublisherOptions
from google.pubsub_v1 import types

from relay.broker import Behaviour

pytestmark = [
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
    pytest.mark.filterwarnings('ignore:The "api" property only exists'),
]


def _setup(broker: Any, project: str, **sub_fields: Any) -> tuple[Any, Any, str, str]:
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "behaviour")
    sub = subscriber.subscription_path(project, "behaviour")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": sub, "topic": topic, **sub_fields})
    return publisher, subscriber, topic, sub


def _publish_each(publisher: Any, topic: str, count: int, **attributes: str) -> list[str]:
    """One Publish call per message, in order: messages `0`, `1`, ..."""
    return [publisher.publish(topic, b"%d" % i, **attributes).result(10) for i in range(count)]


def _pull(subscriber: Any, sub: str, *, short: bool, max_messages: int = 100) -> list[Any]:
    request = {"subscription": sub, "max_messages": max_messages, "return_immediately": short}
    return list(subscriber.pull(request=request, timeout=30).received_messages)


def _pull_until(subscriber: Any, sub: str, count: int, timeout: float = 30) -> list[Any]:
    """Blocking pulls (acking each message) until `count` messages came."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = _pull(subscriber, sub, short=False)
        if batch:
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in batch])
        got.extend(batch)
    return got


# -- short pulls -----------------------------------------------------------------------------------


def _short_pull_sizes(
    broker: Any, project: str, *, always_short: bool, pulls: int = 12
) -> tuple[list[int], set[bytes]]:
    """Sizes of `pulls` short pulls over 10 ready messages (acking all), and what came;
    `always_short`: check that each returned fewer than were ready."""
    publisher, subscriber, topic, sub = _setup(broker, project)
    _publish_each(publisher, topic, 10)
    sizes, seen = [], set()
    for _ in range(pulls):
        ready = 10 - len(seen)
        got = _pull(subscriber, sub, short=True, max_messages=10)
        if always_short:
            assert ready == 0 or len(got) < ready, "a short pull returned everything ready"
        sizes.append(len(got))
        seen.update(m.message.data for m in got)
        if got:
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    seen.update(m.message.data for m in _pull_until(subscriber, sub, 10 - len(seen)))
    publisher.stop()
    subscriber.close()
    return sizes, seen


def test_short_pulls_may_return_fewer_than_ready_or_none(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--short-pull-rate", "1", "--seed", "3"])
    sizes, seen = _short_pull_sizes(broker, project, always_short=True)
    assert 0 in sizes[:5]  # none at all, with ten ready
    assert seen == {b"%d" % i for i in range(10)}  # fewer, never lost


def test_only_short_pulls_are_cut_by_the_short_pull_rate(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    """A pull that may wait at least short_pull_deadline (10 s) is not short."""
    broker = start_broker(tmp_path / "data", args=["--short-pull-rate", "1"])
    publisher, subscriber, topic, sub = _setup(broker, project)
    _publish_each(publisher, topic, 5)
    request = {"subscription": sub, "max_messages": 10}
    assert len(subscriber.pull(request=request, timeout=30).received_messages) == 5
    _publish_each(publisher, topic, 5)
    time.sleep(0.1)
    cut = subscriber.pull(request=request, timeout=5)  # a short deadline: a short pull
    assert len(cut.received_messages) < 5
    publisher.stop()
    subscriber.close()


def test_blocking_pulls_may_return_fewer_at_their_own_rate(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--blocking-short-pull-rate", "1"])
    publisher, subscriber, topic, sub = _setup(broker, project)
    _publish_each(publisher, topic, 5)
    got = _pull(subscriber, sub, short=False)
    assert len(got) < 5
    assert len(got) + len(_pull_until(subscriber, sub, 5 - len(got))) >= 5
    publisher.stop()
    subscriber.close()


def test_the_same_seed_gives_the_same_choices(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        args = ["--short-pull-rate", "0.5", "--seed", seed]
        broker = start_broker(tmp_path / name, args=args)
        runs[name], _ = _short_pull_sizes(broker, project, always_short=False)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


# -- at-least-once ---------------------------------------------------------------------------------


def test_an_acked_message_may_come_again(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(
        tmp_path / "data",
        args=["--redeliver-acked-rate", "1", "--redeliver-delay", "0.2-0.2", "--control"],
    )
    publisher, subscriber, topic, sub = _setup(broker, project)
    (message_id,) = _publish_each(publisher, topic, 1)
    (first,) = _pull_until(subscriber, sub, 1)
    (again,) = _pull(subscriber, sub, short=False)  # acked above, and delivered again
    assert again.message.message_id == first.message.message_id == message_id
    assert again.ack_id != first.ack_id
    broker.control({"redeliver_acked_rate": 0})
    subscriber.acknowledge(subscription=sub, ack_ids=[again.ack_id])
    publisher.publish(topic, b"once").result(10)
    (once,) = _pull_until(subscriber, sub, 1)
    assert once.message.data == b"once"
    time.sleep(0.5)  # a second delivery would be due by now
    assert _pull(subscriber, sub, short=True) == []
    publisher.stop()
    subscriber.close()


@pytest.mark.parametrize(
    ("fields", "attributes"),
    [
        ({"enable_exactly_once_delivery": True}, {}),
        ({"enable_message_ordering": True}, {"ordering_key": "k"}),
    ],
    ids=["exactly-once", "ordering-key"],
)
def test_acked_messages_stay_acked_where_google_promises_it(
    start_broker: Callable[..., Any],
    tmp_path: Path,
    project: str,
    fields: dict[str, Any],
    attributes: dict[str, str],
) -> None:
    broker = start_broker(
        tmp_path / "data", args=["--redeliver-acked-rate", "1", "--redeliver-delay", "0.1-0.1"]
    )
    publisher, subscriber, topic, sub = _setup(broker, project, **fields)
    if attributes:
        publisher.stop()
        publisher = broker.publisher(
            publisher_options=PublisherOptions(enable_message_ordering=True)
        )
    publisher.publish(topic, b"x", **attributes).result(10)
    assert len(_pull_until(subscriber, sub, 1)) == 1
    time.sleep(0.4)
    assert _pull(subscriber, sub, short=True) == []
    publisher.stop()
    subscriber.close()


def test_messages_without_ordering_keys_arrive_out_of_order(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--reorder-rate", "1", "--seed", "2"])
    publisher, subscriber, topic, sub = _setup(broker, project)
    _publish_each(publisher, topic, 20)
    time.sleep(0.7)  # every held-back message is due again
    got = [m.message.data for m in _pull_until(subscriber, sub, 20)]
    expected = [b"%d" % i for i in range(20)]
    assert sorted(got) == sorted(expected)
    assert got != expected
    publisher.stop()
    subscriber.close()


def test_messages_of_one_ordering_key_stay_in_order(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--reorder-rate", "1"])
    publisher, subscriber, topic, sub = _setup(broker, project, enable_message_ordering=True)
    publisher.stop()
    publisher = broker.publisher(
        publisher_options=PublisherOptions(enable_message_ordering=True)
    )
    _publish_each(publisher, topic, 10, ordering_key="k")
    got = [m.message.data for m in _pull_until(subscriber, sub, 10)]
    assert got == [b"%d" % i for i in range(10)]
    publisher.stop()
    subscriber.close()


# -- streams ---------------------------------------------------------------------------------------


def _raw_stream(broker: Any, sub: str) -> tuple[grpc.RpcError, int, float]:
    """Open a StreamingPull stream and read it to its end: (error, responses, seconds)."""
    channel = grpc.insecure_channel(broker.host)
    call = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=types.StreamingPullRequest.serialize,
        response_deserializer=types.StreamingPullResponse.deserialize,
    )
    done = threading.Event()

    def requests() -> Iterator[types.StreamingPullRequest]:
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
        done.wait(30)

    start = time.monotonic()
    responses = 0
    try:
        for _ in call(requests(), timeout=30):
            responses += 1
    except grpc.RpcError as error:
        return error, responses, time.monotonic() - start
    finally:
        done.set()
        channel.close()
    raise AssertionError("the stream ended without an error status")


def test_the_server_closes_streams_from_time_to_time(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--stream-lifetime", "1-1"])
    publisher, subscriber, topic, sub = _setup(broker, project)
    error, _, seconds = _raw_stream(broker, sub)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "closed the stream" in (error.details() or "")
    assert seconds >= 1.0
    # The stock subscriber reconnects and loses nothing.
    received: set[bytes] = set()
    future = subscriber.subscribe(sub, lambda m: (received.add(m.data), m.ack()))
    expected = set()
    for i in range(6):
        publisher.publish(topic, b"%d" % i).result(10)
        expected.add(b"%d" % i)
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while received != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    future.cancel()
    assert received == expected
    assert broker.stats()["rpcs"]["StreamingPull"] >= 3  # the raw one, then reconnections
    publisher.stop()
    subscriber.close()


def test_streams_may_fail_at_once_with_unavailable(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--stream-unavailable-rate", "1"])
    publisher, subscriber, topic, sub = _setup(broker, project)
    publisher.publish(topic, b"waiting").result(10)
    error, responses, _ = _raw_stream(broker, sub)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert responses == 0
    assert [m.message.data for m in _pull_until(subscriber, sub, 1)] == [b"waiting"]
    publisher.stop()
    subscriber.close()


# -- admin latency ---------------------------------------------------------------------------------


def test_admin_operations_take_time(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--admin-latency", "0.3-0.3"])
    publisher = broker.publisher()
    start = time.monotonic()
    publisher.create_topic(name=publisher.topic_path(project, "slow-admin"))
    assert time.monotonic() - start >= 0.3
    publisher.stop()


# -- push backoff ----------------------------------------------------------------------------------


class _Endpoint:
    """Records, for each push, its arrival time and how many pushes were in flight with it."""

    def __init__(self, statuses: list[int], delay: float) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.statuses = statuses
        self.lock = threading.Lock()
        self.active = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    endpoint.active += 1
                    endpoint.arrivals.append((time.monotonic(), endpoint.active))
                    status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                time.sleep(delay)
                with endpoint.lock:
                    endpoint.active -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[float, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.arrivals) >= count:
                    return list(self.arrivals)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.arrivals)} pushes arrived, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint_factory() -> Iterator[Callable[[list[int], float], _Endpoint]]:
    made: list[_Endpoint] = []

    def make(statuses: list[int], delay: float = 0.0) -> _Endpoint:
        made.append(_Endpoint(statuses, delay))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


_NO_BACKOFF = {"minimum_backoff": {}, "maximum_backoff": {}}  # redelivery at once


def test_failing_push_endpoints_are_backed_off(
    start_broker: Callable[..., Any],
    tmp_path: Path,
    project: str,
    endpoint_factory: Callable[..., _Endpoint],
) -> None:
    endpoint = endpoint_factory([503, 429, 500, 200])
    broker = start_broker(tmp_path / "data", args=["--push-backoff"])
    publisher, _, topic, _ = _setup(
        broker, project, push_config={"push_endpoint": endpoint.url}, retry_policy=_NO_BACKOFF
    )
    publisher.publish(topic, b"x").result(10)
    times = [at for at, _ in endpoint.wait_for(4)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 100 ms after the first failure, 200 ms after the second, 400 ms after the third
    assert [gap >= pause for gap, pause in zip(gaps, (0.1, 0.2, 0.4), strict=True)] == [True] * 3
    publisher.stop()


def test_push_starts_slowly(
    start_broker: Callable[..., Any],
    tmp_path: Path,
    project: str,
    endpoint_factory: Callable[..., _Endpoint],
) -> None:
    """The push window starts at one outstanding push and doubles with each acked one."""
    endpoint = endpoint_factory([], 0.3)
    broker = start_broker(tmp_path / "data", args=["--push-backoff"])
    publisher, _, topic, _ = _setup(broker, project, push_config={"push_endpoint": endpoint.url})
    publisher.api.publish(topic=topic, messages=[{"data": b"%d" % i} for i in range(7)])
    in_flight = [active for _, active in endpoint.wait_for(7)]
    assert in_flight[:2] == [1, 1]  # alone, then alone again after the first ack (window 2)
    assert max(in_flight) >= 3
    publisher.stop()


def test_without_push_backoff_pushes_start_together(
    start_broker: Callable[..., Any],
    tmp_path: Path,
    project: str,
    endpoint_factory: Callable[..., _Endpoint],
) -> None:
    endpoint = endpoint_factory([], 2.0)  # long enough to overlap on a loaded machine
    broker = start_broker(tmp_path / "data")
    publisher, _, topic, _ = _setup(broker, project, push_config={"push_endpoint": endpoint.url})
    publisher.api.publish(topic=topic, messages=[{"data": b"%d" % i} for i in range(7)])
    assert max(active for _, active in endpoint.wait_for(7)) == 7
    publisher.stop()


# -- the google profile ----------------------------------------------------------------------------


def test_the_google_profile_turns_everything_on(google_broker: Any) -> None:
    settings = google_broker.stats()["behaviour"]
    assert settings == Behaviour.google(seed=1).to_json()
    assert all(
        settings[name]
        for name in (
            "short_pull_rate",
            "blocking_short_pull_rate",
            "redeliver_acked_rate",
            "reorder_rate",
            "stream_lifetime",
            "stream_unavailable_rate",
            "admin_latency",
            "push_backoff",
        )
    )


def test_a_stock_subscriber_gets_everything_under_the_google_profile(
    google_broker: Any, project: str, unique: Callable[[str], str]
) -> None:
    publisher, subscriber = google_broker.publisher(), google_broker.subscriber()
    topic = publisher.topic_path(project, unique("topic"))
    sub = subscriber.subscription_path(project, unique("sub"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    received: list[str] = []
    lock = threading.Lock()

    def callback(message: Any) -> None:
        with lock:
            received.append(message.message_id)
        message.ack()

    future = subscriber.subscribe(sub, callback)
    ids = {publisher.publish(topic, b"%d" % i).result(30) for i in range(200)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if ids <= set(received):
                break
        time.sleep(0.1)
    future.cancel()
    with lock:
        assert ids <= set(received)  # at least once: duplicates allowed, losses not
    publisher.stop()
    subscriber.close()


def test_behaviour_is_a_frozen_dataclass_with_validated_fields() -> None:
    google = Behaviour.google(seed=4)
    assert google.seed == 4
    assert google.push_backoff
    assert Behaviour() == Behaviour(seed=0)
    with pytest.raises(ValueError, match="short_pull_rate"):
        Behaviour(short_pull_rate=1.5)
    with pytest.raises(ValueError, match="stream_lifetime"):
        Behaviour(stream_lifetime=(3.0, 1.0))
    assert google.updated({"stream_lifetime": [1, 2]}).stream_lifetime == (1.0, 2.0)
    with pytest.raises(AttributeError):
        google.seed = 5  # type: ignore[misc]


async def test_the_python_api_runs_a_broker_with_a_behaviour(tmp_path: Path, project: str) -> None:
    """`ServerOptions(behaviour=..., admin_ops_per_minute=..., control=...)` in process."""
    import aiohttp
    from google.api_core import exceptions
    from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

    from relay.broker import BrokerServer, ServerOptions

    options = ServerOptions(
        data_dir=tmp_path / "data",
        port=0,
        behaviour=Behaviour(short_pull_rate=1.0, seed=3),
        admin_ops_per_minute=3,
        control=True,
    )
    server = BrokerServer(options)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        publisher = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
        subscriber = SubscriberAsyncClient(
            transport=SubscriberGrpcAsyncIOTransport(channel=channel)
        )
        topic = f"projects/{project}/topics/in-process"
        sub = f"projects/{project}/subscriptions/in-process"
        await publisher.create_topic(name=topic)
        await subscriber.create_subscription(name=sub, topic=topic)
        await publisher.publish(topic=topic, messages=[{"data": b"%d" % i} for i in range(5)])
        pulled = await subscriber.pull(
            request={"subscription": sub, "max_messages": 5, "return_immediately": True}
        )
        assert len(pulled.received_messages) < 5
        await publisher.get_topic(topic=topic)  # the third administrator operation
        with pytest.raises(exceptions.ResourceExhausted, match="Quota exceeded"):
            await publisher.get_topic(topic=topic, retry=None)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.http_port}"
            async with session.post(f"{url}/control", json={"short_pull_rate": 0}) as response:
                assert response.status == 200
            async with session.get(f"{url}/stats") as response:
                stats = await response.json()
        assert stats["admin_ops"] == {project: 3}
        assert stats["behaviour"]["short_pull_rate"] == 0
    finally:
        await channel.close()
        await server.stop()
