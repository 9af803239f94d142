"""Push delivery: the request formats and ack rules of `push`, against real HTTP receivers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cloudevents.http import from_http

from relay.broker._push import ACK_STATUSES, CLOUDEVENT_TYPE, PushRequest, push, render

SUBSCRIPTION = "projects/relay-test/subscriptions/orders-push"
TOPIC = "projects/relay-test/topics/orders"
PUBLISHED = dt.datetime(2026, 11, 26, 12, 30, 45, 123000, tzinfo=dt.UTC)


# ---- receivers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One HTTP request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real aiohttp server on loopback, in its own thread, that records every request.

    Answers with the next status from `statuses` (then `default_status`), after `delay` seconds.
    Works from sync and async tests alike (the broker pushes from another process).
    """

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    port: int = 0  # 0: a free port, set once started
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._cond:
            self.received.append(
                Received(request.path_qs, dict(request.headers), body, time.monotonic())
            )
            status = self.statuses.pop(0) if self.statuses else self.default_status
            self._cond.notify_all()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=status)

    def start(self) -> Receiver:
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            self.port = self._runner.addresses[0][1]
            ready.set()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        assert ready.is_set()
        return self

    def stop(self) -> None:
        assert self._loop is not None
        assert self._thread is not None
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until `count` requests arrived; fail the test after `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise AssertionError(
                    f"receiver got {len(self.received)} requests, expected {count} "
                    f"within {timeout} s"
                )
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs).start())
        return made[-1]

    yield make
    for each in made:
        each.stop()


class FunctionServer:
    """A functions-framework CloudEvent function behind a real werkzeug HTTP server thread.

    The function (written to a temp file, loaded by `functions_framework.create_app`) appends
    every CloudEvent it is given to a JSON-lines file; it raises (-> HTTP 500) while
    `fail_first` events have not yet been seen.
    """

    def __init__(self, directory: Path, fail_first: int = 0) -> None:
        import functions_framework
        from werkzeug.serving import make_server

        self.sink = directory / "events.jsonl"
        source = directory / "main.py"
        source.write_text(
            textwrap.dedent(
                f"""
                import json
                import functions_framework

                SINK = {str(self.sink)!r}
                FAIL_FIRST = {fail_first}
                seen = []

                @functions_framework.cloud_event
                def handle(event):
                    seen.append(event["id"])
                    record = {{
                        "attributes": dict(event.get_attributes()),
                        "data": event.data,
                    }}
                    with open(SINK, "a") as sink:
                        sink.write(json.dumps(record) + "\\n")
                    if len(seen) <= FAIL_FIRST:
                        raise RuntimeError("failing on purpose")
                """
            )
        )
        app = functions_framework.create_app("handle", str(source), "cloudevent")
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        if not self.sink.exists():
            return []
        return [json.loads(line) for line in self.sink.read_text().splitlines()]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if len(events) >= count:
                return events
            time.sleep(0.05)
        raise AssertionError(f"function got {len(self.events())} events, expected {count}")

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def function_server(tmp_path: Path) -> Iterator[FunctionServer]:
    server = FunctionServer(tmp_path)
    yield server
    server.stop()
    sys.modules.pop("main", None)


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_request(endpoint: str, **overrides: Any) -> PushRequest:
    fields: dict[str, Any] = {
        "endpoint": endpoint,
        "subscription": SUBSCRIPTION,
        "topic": TOPIC,
        "data": b'{"order": 42}',
        "attributes": {"ce-type": "dev.relay.example.echo", "origin": "test"},
        "message_id": "1234567890",
        "publish_time": PUBLISHED,
    }
    fields.update(overrides)
    return PushRequest(**fields)


async def send(request: PushRequest, limit: float = 5.0) -> bool:
    async with aiohttp.ClientSession() as session:
        return await push(session, request, limit)


# ---- formats ---------------------------------------------------------------------------------


async def test_wrapper_format_is_googles_push_json(receiver: Receiver) -> None:
    request = make_request(
        receiver.url + "/push?x=1", ordering_key="customer-7", delivery_attempt=3, token="tok"
    )
    assert await send(request) is True
    (got,) = receiver.wait_for(1)
    assert got.path == "/push?x=1"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Authorization"] == "Bearer tok"
    assert json.loads(got.body) == {
        "message": {
            "data": base64.b64encode(b'{"order": 42}').decode(),
            "attributes": {"ce-type": "dev.relay.example.echo", "origin": "test"},
            "messageId": "1234567890",
            "message_id": "1234567890",
            "publishTime": "2026-11-26T12:30:45.123Z",
            "publish_time": "2026-11-26T12:30:45.123Z",
            "orderingKey": "customer-7",
        },
        "subscription": SUBSCRIPTION,
        "deliveryAttempt": 3,
    }


async def test_wrapper_leaves_out_unset_optional_fields(receiver: Receiver) -> None:
    request = make_request(receiver.url, data=b"", attributes={})
    assert await send(request) is True
    (got,) = receiver.wait_for(1)
    body = json.loads(got.body)
    assert "deliveryAttempt" not in body
    assert "orderingKey" not in body["message"]
    assert body["message"]["data"] == ""  # present even when empty: functions-framework needs it
    assert body["message"]["attributes"] == {}
    assert "Authorization" not in got.headers


async def test_no_wrapper_sends_raw_data_only(receiver: Receiver) -> None:
    request = make_request(receiver.url, no_wrapper=True, data=b"\x00raw\xff")
    assert await send(request) is True
    (got,) = receiver.wait_for(1)
    assert got.body == b"\x00raw\xff"
    assert not [name for name in got.headers if name.lower().startswith("x-goog-pubsub")]
    assert "origin" not in {name.lower() for name in got.headers}


async def test_no_wrapper_with_metadata_writes_headers(receiver: Receiver) -> None:
    request = make_request(
        receiver.url,
        no_wrapper=True,
        write_metadata=True,
        ordering_key="k1",
        delivery_attempt=2,
        token="tok",
        attributes={
            "origin": "test",
            "content-type": "text/csv",
            "Host": "evil.example",
            "bad header": "x",
            "multi": "line\nbreak",
        },
    )
    assert await send(request) is True
    (got,) = receiver.wait_for(1)
    headers = {name.lower(): value for name, value in got.headers.items()}
    assert got.body == b'{"order": 42}'
    assert headers["x-goog-pubsub-subscription-name"] == SUBSCRIPTION
    assert headers["x-goog-pubsub-message-id"] == "1234567890"
    assert headers["x-goog-pubsub-publish-time"] == "2026-11-26T12:30:45.123Z"
    assert headers["x-goog-pubsub-ordering-key"] == "k1"
    assert headers["origin"] == "test"
    assert headers["content-type"] == "text/csv"
    assert headers["host"] == f"127.0.0.1:{receiver.port}"  # not overridable by an attribute
    assert "bad header" not in headers
    assert "multi" not in headers
    assert headers["authorization"] == "Bearer tok"


async def test_cloudevent_format_is_eventarcs_binary_event(receiver: Receiver) -> None:
    request = make_request(
        receiver.url,
        push_attributes={"x-relay-push-format": "cloudevent"},
        ordering_key="k1",
        delivery_attempt=5,
    )
    assert await send(request) is True
    (got,) = receiver.wait_for(1)
    assert got.headers["ce-id"] == "1234567890"
    assert got.headers["ce-source"] == "//pubsub.googleapis.com/projects/relay-test/topics/orders"
    assert (
        got.headers["ce-type"] == CLOUDEVENT_TYPE == "google.cloud.pubsub.topic.v1.messagePublished"
    )
    assert got.headers["ce-specversion"] == "1.0"
    assert got.headers["ce-time"] == "2026-11-26T12:30:45.123Z"
    assert got.headers["Content-Type"] == "application/json"
    event = from_http(got.headers, got.body)
    assert event["type"] == CLOUDEVENT_TYPE
    assert event.data["subscription"] == SUBSCRIPTION
    message = event.data["message"]
    assert base64.b64decode(message["data"]) == b'{"order": 42}'
    assert message["attributes"] == {"ce-type": "dev.relay.example.echo", "origin": "test"}
    assert message["messageId"] == "1234567890"
    assert message["publishTime"] == "2026-11-26T12:30:45.123Z"
    assert message["orderingKey"] == "k1"


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC), "2026-01-02T03:04:05.120Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC), "2026-01-02T03:04:05.123456Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),
        (
            dt.datetime(2026, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-01-02T03:04:05Z",
        ),
    ],
)
def test_publish_time_is_rfc3339_utc(moment: dt.datetime, expected: str) -> None:
    _, body = render(make_request("http://x", publish_time=moment))
    assert json.loads(body)["message"]["publishTime"] == expected


def test_push_format_selection() -> None:
    base = make_request("http://x")
    assert base.push_format == "wrapper"
    assert replace(base, no_wrapper=True).push_format == "no_wrapper"
    cloudevent = replace(base, push_attributes={"x-relay-push-format": "cloudevent"})
    assert cloudevent.push_format == "cloudevent"
    assert replace(cloudevent, no_wrapper=True).push_format == "cloudevent"
    other = replace(base, push_attributes={"x-relay-push-format": "other"})
    assert other.push_format == "wrapper"


# ---- ack rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_success_statuses_ack(make_receiver: Callable[..., Receiver], status: int) -> None:
    target = make_receiver(default_status=status)
    assert await send(make_request(target.url)) is True
    assert status in ACK_STATUSES


def test_ack_statuses_are_googles() -> None:
    assert frozenset({102, 200, 201, 202, 204}) == ACK_STATUSES


@pytest.mark.parametrize("status", [203, 301, 302, 400, 401, 403, 404, 409, 429, 500, 503])
async def test_other_statuses_nack(make_receiver: Callable[..., Receiver], status: int) -> None:
    target = make_receiver(default_status=status)
    assert await send(make_request(target.url)) is False
    assert len(target.wait_for(1)) == 1  # delivered once, redirects not followed


async def test_timeout_nacks_promptly(make_receiver: Callable[..., Receiver]) -> None:
    slow = make_receiver(delay=3.0)
    started = time.monotonic()
    assert await send(make_request(slow.url), limit=0.3) is False
    assert time.monotonic() - started < 2.0


async def test_refused_connection_nacks() -> None:
    assert await send(make_request(f"http://127.0.0.1:{free_port()}/push")) is False


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://127.0.0.1/x", "http://", ""])
async def test_bad_endpoint_nacks(endpoint: str) -> None:
    assert await send(make_request(endpoint)) is False


# ---- functions-framework parses what we push -------------------------------------------------


async def test_functions_framework_reads_wrapper_and_cloudevent(
    function_server: FunctionServer,
) -> None:
    wrapper = make_request(function_server.url + "/projects/relay-test/topics/orders")
    eventarc = make_request(
        function_server.url,
        message_id="999",
        push_attributes={"x-relay-push-format": "cloudevent"},
    )
    assert await send(wrapper) is True
    assert await send(eventarc) is True
    first, second = await asyncio.to_thread(function_server.wait_for, 2)
    for event, message_id in ((first, "1234567890"), (second, "999")):
        assert event["attributes"]["type"] == CLOUDEVENT_TYPE
        assert event["attributes"]["id"] == message_id
        assert event["attributes"]["source"] == "//pubsub.googleapis.com/" + TOPIC
        message = event["data"]["message"]
        assert base64.b64decode(message["data"]) == b'{"order": 42}'
        assert message["attributes"]["origin"] == "test"
    assert second["data"]["subscription"] == SUBSCRIPTION


# ---- end to end: the stock google-cloud-pubsub client configures push on `relay broker` ----

EMAIL = "pusher@relay-test.iam.gserviceaccount.com"


@pytest.fixture
def admin(broker: Any) -> Iterator[tuple[Any, Any]]:
    """A PublisherClient and a SubscriberClient talking to the session broker."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    yield publisher, subscriber
    subscriber.close()
    publisher.stop()


def _create_topic(publisher: Any, project: str, unique: Callable[[str], str]) -> str:
    topic: str = publisher.topic_path(project, unique("push"))
    publisher.create_topic(name=topic)
    return topic


def _create_push(
    subscriber: Any,
    project: str,
    unique: Callable[[str], str],
    topic: str,
    push_config: dict[str, Any],
    **extra: Any,
) -> str:
    name: str = subscriber.subscription_path(project, unique("push-sub"))
    subscriber.create_subscription(
        request={"name": name, "topic": topic, "push_config": push_config, **extra}
    )
    return name


def _publish(publisher: Any, topic: str, data: bytes, **attributes: str) -> str:
    message_id: str = publisher.publish(topic, data, **attributes).result(timeout=30)
    return message_id


def test_e2e_functions_framework_gets_wrapper_and_cloudevent(
    admin: tuple[Any, Any], project: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    publisher, subscriber = admin
    server = FunctionServer(tmp_path)
    try:
        topic = _create_topic(publisher, project, unique)
        topic_path = topic  # "projects/P/topics/T": the wrapper endpoint carries it in its path
        wrapper_sub = _create_push(
            subscriber, project, unique, topic, {"push_endpoint": f"{server.url}/{topic_path}"}
        )
        eventarc_sub = _create_push(
            subscriber,
            project,
            unique,
            topic,
            {"push_endpoint": server.url, "attributes": {"x-relay-push-format": "cloudevent"}},
        )
        message_id = _publish(publisher, topic, b'{"n": 1}', origin="e2e")
        events = server.wait_for(2)
    finally:
        server.stop()
    by_subscription = {}
    for event in events:
        assert event["attributes"]["type"] == CLOUDEVENT_TYPE
        assert event["attributes"]["id"] == message_id
        assert event["attributes"]["source"] == f"//pubsub.googleapis.com/{topic}"
        message = event["data"]["message"]
        assert base64.b64decode(message["data"]) == b'{"n": 1}'
        assert message["attributes"] == {"origin": "e2e"}
        assert message["messageId"] == message_id
        assert message["publishTime"].endswith("Z")
        by_subscription[event["data"].get("subscription")] = event
    # functions-framework drops `subscription` when converting the wrapper; Eventarc keeps it.
    assert set(by_subscription) == {None, eventarc_sub}
    assert wrapper_sub not in by_subscription


def test_e2e_no_wrapper_with_and_without_metadata(
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    make_receiver: Callable[..., Receiver],
) -> None:
    publisher, subscriber = admin
    plain, with_metadata = make_receiver(), make_receiver()
    topic = _create_topic(publisher, project, unique)
    _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": plain.url + "/raw", "no_wrapper": {"write_metadata": False}},
    )
    meta_sub = _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": with_metadata.url + "/meta", "no_wrapper": {"write_metadata": True}},
    )
    message_id = _publish(publisher, topic, b"\x00raw bytes\xff", origin="e2e")
    (got_plain,) = plain.wait_for(1)
    (got_meta,) = with_metadata.wait_for(1)
    assert got_plain.path == "/raw"
    assert got_plain.body == b"\x00raw bytes\xff"
    assert not [h for h in got_plain.headers if h.lower().startswith("x-goog-pubsub")]
    assert "origin" not in {h.lower() for h in got_plain.headers}
    headers = {name.lower(): value for name, value in got_meta.headers.items()}
    assert got_meta.body == b"\x00raw bytes\xff"
    assert headers["x-goog-pubsub-subscription-name"] == meta_sub
    assert headers["x-goog-pubsub-message-id"] == message_id
    assert headers["x-goog-pubsub-publish-time"].endswith("Z")
    assert headers["origin"] == "e2e"


def test_e2e_wrapper_body_and_ack_codes(
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    make_receiver: Callable[..., Receiver],
) -> None:
    publisher, subscriber = admin
    topic = _create_topic(publisher, project, unique)
    receivers = {status: make_receiver(default_status=status) for status in (200, 201, 202, 204)}
    subs = {
        status: _create_push(
            subscriber, project, unique, topic, {"push_endpoint": target.url + "/push"}
        )
        for status, target in receivers.items()
    }
    message_id = _publish(publisher, topic, b"hello", ordering="none")
    for status, target in receivers.items():
        (got,) = target.wait_for(1)
        body = json.loads(got.body)
        assert got.headers["Content-Type"] == "application/json"
        assert body["subscription"] == subs[status]
        assert body["message"]["messageId"] == body["message"]["message_id"] == message_id
        assert base64.b64decode(body["message"]["data"]) == b"hello"
        assert body["message"]["attributes"] == {"ordering": "none"}
        assert "deliveryAttempt" not in body  # only with a dead-letter policy, as on Google
    time.sleep(2.0)  # an acked message is never pushed again
    assert [len(target.received) for target in receivers.values()] == [1, 1, 1, 1]


def test_e2e_nack_is_redelivered_with_backoff(
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    make_receiver: Callable[..., Receiver],
) -> None:
    publisher, subscriber = admin
    target = make_receiver(statuses=[500, 429, 400])  # three nacks, then 200
    topic = _create_topic(publisher, project, unique)
    _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": target.url},
        retry_policy={"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}},
    )
    _publish(publisher, topic, b"again")
    attempts = target.wait_for(4, timeout=30)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    # Exponential backoff between 1 s and 2 s (allow scheduling slack on a busy machine).
    assert all(0.8 <= gap <= 4.0 for gap in gaps), gaps
    assert gaps[-1] >= gaps[0] - 0.3, gaps
    ids = {json.loads(attempt.body)["message"]["messageId"] for attempt in attempts}
    assert len(ids) == 1
    time.sleep(2.5)
    assert len(target.received) == 4  # acked on the fourth attempt


def _refused_then_up(
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    retry_policy: dict[str, Any],
    down_for: float,
) -> Received:
    """Push to a closed port for `down_for` seconds, then open it; return what arrives."""
    publisher, subscriber = admin
    port = free_port()
    topic = _create_topic(publisher, project, unique)
    _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": f"http://127.0.0.1:{port}/late"},
        retry_policy=retry_policy,
    )
    _publish(publisher, topic, b"are you there")
    time.sleep(down_for)  # attempts against the closed port fail meanwhile
    late = Receiver(port=port).start()
    try:
        got = late.wait_for(1, timeout=20)[0]
    finally:
        late.stop()
    assert got.path == "/late"
    assert base64.b64decode(json.loads(got.body)["message"]["data"]) == b"are you there"
    return got


def test_e2e_refused_connection_is_redelivered(
    admin: tuple[Any, Any], project: str, unique: Callable[[str], str]
) -> None:
    policy = {"minimum_backoff": {"nanos": 200_000_000}, "maximum_backoff": {"seconds": 1}}
    _refused_then_up(admin, project, unique, policy, down_for=1.5)


def test_e2e_zero_backoff_survives_many_fast_failures(
    admin: tuple[Any, Any], project: str, unique: Callable[[str], str]
) -> None:
    # minimum_backoff 0 is valid on Google; a refused endpoint then fails ~1,000 times a second
    # and the attempt count must not break the backoff arithmetic.
    policy = {"minimum_backoff": {"seconds": 0}, "maximum_backoff": {"seconds": 0}}
    _refused_then_up(admin, project, unique, policy, down_for=2.5)


def test_e2e_dead_letter_after_max_attempts(
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    make_receiver: Callable[..., Receiver],
) -> None:
    publisher, subscriber = admin
    target = make_receiver(default_status=503)
    topic = _create_topic(publisher, project, unique)
    dead_topic = _create_topic(publisher, project, unique)
    dead_sub = subscriber.subscription_path(project, unique("dead"))
    subscriber.create_subscription(name=dead_sub, topic=dead_topic)
    source_sub = _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": target.url},
        retry_policy={"minimum_backoff": {"seconds": 0}, "maximum_backoff": {"seconds": 0}},
        dead_letter_policy={"dead_letter_topic": dead_topic, "max_delivery_attempts": 5},
    )
    message_id = _publish(publisher, topic, b"poison", kind="poison")
    attempts = target.wait_for(5, timeout=60)
    assert [json.loads(a.body)["deliveryAttempt"] for a in attempts] == [1, 2, 3, 4, 5]
    deadline = time.monotonic() + 30
    received: list[Any] = []
    while not received and time.monotonic() < deadline:
        response = subscriber.pull(subscription=dead_sub, max_messages=10, timeout=10)
        received = list(response.received_messages)
    assert len(received) == 1
    dead = received[0].message
    assert dead.data == b"poison"
    assert dead.attributes["kind"] == "poison"
    assert dead.message_id != ""
    subscriber.acknowledge(subscription=dead_sub, ack_ids=[received[0].ack_id])
    time.sleep(1.5)
    assert len(target.received) == 5  # no more pushes once dead-lettered
    assert message_id
    assert source_sub


def test_e2e_oidc_token_verifies_with_broker_certs(
    broker: Any,
    admin: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
    make_receiver: Callable[..., Receiver],
) -> None:
    import google.auth.transport.requests
    from google.oauth2 import id_token

    publisher, subscriber = admin
    explicit, implicit = make_receiver(), make_receiver()
    topic = _create_topic(publisher, project, unique)
    _create_push(
        subscriber,
        project,
        unique,
        topic,
        {
            "push_endpoint": explicit.url + "/fn",
            # the audience must be the endpoint (tests/broker/test_hostile.py)
            "oidc_token": {"service_account_email": EMAIL, "audience": explicit.url + "/fn"},
        },
    )
    _create_push(
        subscriber,
        project,
        unique,
        topic,
        {"push_endpoint": implicit.url + "/fn", "oidc_token": {"service_account_email": EMAIL}},
    )
    _publish(publisher, topic, b"signed")
    request = google.auth.transport.requests.Request()
    for target, audience in (
        (explicit, explicit.url + "/fn"),
        (implicit, implicit.url + "/fn"),  # no audience configured: the endpoint URL
    ):
        (got,) = target.wait_for(1)
        scheme, _, token = got.headers["Authorization"].partition(" ")
        assert scheme == "Bearer"
        claims = id_token.verify_token(
            token, request, audience=audience, certs_url=broker.certs_url
        )
        assert claims["email"] == EMAIL
        assert claims["email_verified"] is True
        assert claims["iss"] == "https://accounts.google.com"
        with pytest.raises(ValueError, match="audience"):
            id_token.verify_token(
                token, request, audience="https://other", certs_url=broker.certs_url
            )
