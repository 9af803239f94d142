"""Hostile input against `relay broker` (issue 12): each attack gets the right status and a
message naming the rule and the value, changes nothing, and leaves the broker serving (100 of
100 canary messages published and delivered afterwards)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.auth.transport.requests import Request as AuthRequest
from google.oauth2 import id_token
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.pubsub_v1 import types

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PUSHER = "pusher@relay-test.iam.gserviceaccount.com"
StreamingPullRequest: Any = types.StreamingPullRequest.pb()
StreamingPullResponse: Any = types.StreamingPullResponse.pb()


# -- helpers -----------------------------------------------------------------------------------


def assert_serving(broker: Any, project: str = "relay-test") -> None:
    """The canary: 100 of 100 messages published on a new topic are delivered and acked."""
    publisher, subscriber = broker.publisher(), broker.subscriber()
    try:
        suffix = os.urandom(4).hex()
        topic = publisher.topic_path(project, f"canary-{suffix}")
        sub = subscriber.subscription_path(project, f"canary-{suffix}")
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        futures = [publisher.publish(topic, f"canary {i}".encode()) for i in range(100)]
        published = {future.result(30) for future in futures}
        received: set[str] = set()
        deadline = time.monotonic() + 30
        while len(received) < 100 and time.monotonic() < deadline:
            response = subscriber.pull(subscription=sub, max_messages=100, timeout=10)
            ids = [m.ack_id for m in response.received_messages]
            received |= {m.message.message_id for m in response.received_messages}
            if ids:
                subscriber.acknowledge(subscription=sub, ack_ids=ids)
        assert received == published
        assert len(received) == 100
    finally:
        publisher.stop()
        subscriber.close()


class _Endpoint:
    """An HTTP endpoint that records what is POSTed to it (and answers 200)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.calls.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 10) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= n, f"{len(self.calls)} pushes arrived, expected {n}"
        return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Callable[[], _Endpoint]]:
    made: list[_Endpoint] = []

    def make() -> _Endpoint:
        made.append(_Endpoint())
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def _broker_command(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `relay broker` on `data_dir` expecting it to refuse to start (it would run on)."""
    return subprocess.run(
        [sys.executable, "-m", "relay.broker", "--port", "0", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _refused_start(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "relay broker ready" not in result.stdout + result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# -- push tokens (item 3) ----------------------------------------------------------------------


@pytest.fixture
def guarded(
    start_broker: Callable[..., Any], tmp_path: Path, endpoints: Callable[[], _Endpoint]
) -> tuple[Any, _Endpoint]:
    """A broker that signs push tokens only for PUSHER and the URL of `function` (an endpoint
    standing for a function); returns (broker, function)."""
    function = endpoints()
    broker = start_broker(
        tmp_path / "data",
        args=["--push-service-accounts", PUSHER, "--push-audiences", function.url],
    )
    return broker, function


def _push_sub(subscriber: Any, project: str, topic: str, push_config: dict[str, Any]) -> str:
    name = subscriber.subscription_path(project, f"push-{os.urandom(4).hex()}")
    subscriber.create_subscription(
        request={"name": name, "topic": topic, "push_config": push_config}
    )
    return name


@pytest.mark.parametrize(
    ("token", "error", "words"),
    [
        # the attack of the issue: the function's identity and audience, the attacker's endpoint
        (
            {"service_account_email": PUSHER, "audience": "FUNCTION"},
            exceptions.InvalidArgument,
            "is not the push_endpoint",
        ),
        # the audience defaults to the attacker's endpoint, which no function accepts
        ({"service_account_email": PUSHER}, exceptions.PermissionDenied, "--push-audiences"),
        (
            {"service_account_email": "x@evil.iam.gserviceaccount.com", "audience": "FUNCTION"},
            exceptions.PermissionDenied,
            "--push-service-accounts",
        ),
    ],
)
def test_no_push_token_for_an_endpoint_of_the_callers_choice(
    guarded: tuple[Any, _Endpoint],
    endpoints: Callable[[], _Endpoint],
    project: str,
    token: dict[str, str],
    error: type[Exception],
    words: str,
) -> None:
    broker, function = guarded
    attacker = endpoints()
    token = {k: function.url if v == "FUNCTION" else v for k, v in token.items()}
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "tokens")
    publisher.create_topic(name=topic)
    with pytest.raises(error, match=words) as info:
        _push_sub(subscriber, project, topic, {"push_endpoint": attacker.url, "oidc_token": token})
    assert repr(token.get("audience", attacker.url)) in info.value.message or (
        repr(token["service_account_email"]) in info.value.message
    )
    assert list(subscriber.list_subscriptions(project=f"projects/{project}")) == []
    publisher.publish(topic, b"secret").result(10)
    time.sleep(0.5)
    assert attacker.calls == []
    assert_serving(broker)


def test_modify_push_config_and_update_refuse_the_same(
    guarded: tuple[Any, _Endpoint], endpoints: Callable[[], _Endpoint], project: str
) -> None:
    broker, function = guarded
    attacker = endpoints()
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "tokens")
    publisher.create_topic(name=topic)
    legit = {"push_endpoint": function.url, "oidc_token": {"service_account_email": PUSHER}}
    sub = _push_sub(subscriber, project, topic, legit)
    hostile = {
        "push_endpoint": attacker.url,
        "oidc_token": {"service_account_email": PUSHER, "audience": function.url},
    }
    with pytest.raises(exceptions.InvalidArgument, match="is not the push_endpoint"):
        subscriber.modify_push_config(request={"subscription": sub, "push_config": hostile})
    with pytest.raises(exceptions.InvalidArgument, match="is not the push_endpoint"):
        subscriber.update_subscription(
            request={
                "subscription": {"name": sub, "push_config": hostile},
                "update_mask": field_mask_pb2.FieldMask(paths=["push_config"]),
            }
        )
    assert subscriber.get_subscription(subscription=sub).push_config.push_endpoint == function.url
    publisher.publish(topic, b"for the function").result(10)
    ((headers, _),) = function.wait_for(1)
    claims = id_token.verify_token(
        headers["Authorization"].split(" ", 1)[1],
        AuthRequest(requests.Session()),
        audience=function.url,
        certs_url=broker.certs_url,
    )
    assert claims["email"] == PUSHER
    assert attacker.calls == []
    assert_serving(broker)


def test_audience_other_than_the_endpoint_is_refused_without_allow_lists(
    broker: Any, make_sub: Callable[..., str], endpoints: Callable[[], _Endpoint]
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="is not the push_endpoint") as info:
        make_sub(
            push_config={
                "push_endpoint": endpoints().url,
                "oidc_token": {"service_account_email": PUSHER, "audience": "https://fn.test"},
            }
        )
    assert "stricter than Google" in info.value.message
    assert_serving(broker)


def test_a_stored_push_config_outside_the_rules_is_not_pushed_to(
    start_broker: Callable[..., Any], tmp_path: Path, endpoints: Callable[[], _Endpoint]
) -> None:
    """Created on a broker without allow lists, restarted with them: no token goes out."""
    attacker = endpoints()
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path("relay-test", "stored")
    publisher.create_topic(name=topic)
    token = {"service_account_email": "x@evil.iam.gserviceaccount.com"}
    _push_sub(subscriber, "relay-test", topic, {"push_endpoint": attacker.url, "oidc_token": token})
    broker.stop()
    broker.args = ["--push-service-accounts", PUSHER, "--push-audiences", "http://127.0.0.1:1/"]
    broker.start()
    publisher.publish(topic, b"secret").result(10)
    time.sleep(1.0)
    assert attacker.calls == []
    assert "not pushing projects/relay-test/subscriptions/push-" in broker.log_text()
    assert_serving(broker)


# -- where the broker listens, and its HTTP port -------------------------------------------------


def test_a_non_loopback_host_needs_insecure_listen(tmp_path: Path) -> None:
    result = _broker_command(tmp_path / "data", "--host", "0.0.0.0", "--http-port", "0")
    _refused_start(result, "'0.0.0.0' is not a loopback address", "--insecure-listen")


def test_insecure_listen_warns_what_is_exposed(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    broker = start_broker(tmp_path / "data", args=["--host", "0.0.0.0", "--insecure-listen"])
    log = broker.log_text()
    assert "listens on 0.0.0.0 WITHOUT AUTHENTICATION" in log
    assert f"gRPC port {broker.port} or HTTP port {broker.http_port}" in log
    assert "push tokens signed for any service account" in log
    assert_serving(broker)


def _post_control(broker: Any, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{broker.http_url}/control", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"Content-Type": "text/plain"}, "Content-Type must be application/json"),  # a web form
        (
            {"Content-Type": "application/json", "Host": "rebound.example:8086"},
            "must be an IP address or localhost",
        ),
    ],
)
def test_control_refuses_requests_a_web_page_can_send(
    broker: Any, headers: dict[str, str], words: str
) -> None:
    before = broker.stats()
    body = json.dumps({"advance_seconds": 86400 * 31, "short_pull_rate": 1.0}).encode()
    status, text = _post_control(broker, body, headers)
    assert status == 403
    assert words in json.loads(text)["error"]
    after = broker.stats()
    for key in ("behaviour", "clock_offset_seconds"):
        assert after[key] == before[key]
    assert_serving(broker)


def test_the_http_port_mints_no_token_and_turns_no_check_off(broker: Any) -> None:
    for path in ("/token", "/computeMetadata/v1/instance/service-accounts/default/identity"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{broker.http_url}{path}", timeout=10)
        assert info.value.code in (404, 405)
    for body in ({"push_service_accounts": None}, {"push_audiences": ["https://x"]}):
        status, text = _post_control(
            broker, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        assert status == 400
        assert "unknown behaviour setting" in json.loads(text)["error"]
    certs = json.load(urllib.request.urlopen(broker.certs_url, timeout=10))
    assert all("PRIVATE" not in pem for pem in certs.values())
    assert_serving(broker)


# -- the store (item 7) --------------------------------------------------------------------------


def _used_data_dir(start_broker: Callable[..., Any], data: Path) -> None:
    """A data dir with a topic, a subscription and 50 unacked messages, broker stopped."""
    broker = start_broker(data)
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path("relay-test", "kept")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        name=subscriber.subscription_path("relay-test", "kept"), topic=topic
    )
    for future in [publisher.publish(topic, b"x" * 1000) for _ in range(50)]:
        future.result(10)
    publisher.stop()
    subscriber.close()
    assert broker.stop() == 0


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_a_used_data_dir_without_its_store_refuses_to_start(
    start_broker: Callable[..., Any], tmp_path: Path, how: str
) -> None:
    data = tmp_path / "data"
    _used_data_dir(start_broker, data)
    store = data / "broker.sqlite3"
    if how == "truncated":
        store.write_bytes(b"")
    else:
        store.unlink()
    before = sorted(p.name for p in data.iterdir())
    result = _broker_command(data, "--http-port", "0")
    _refused_start(result, str(store), "--reset-store", "oidc-key.pem")
    assert ("is empty (0 bytes)" if how == "truncated" else "is missing") in result.stderr
    assert sorted(p.name for p in data.iterdir()) == before  # nothing created, nothing moved

    broker = start_broker(data, args=["--reset-store"])
    log = broker.log_text()
    assert "--reset-store: starting with an empty store" in log
    assert "topics, subscriptions, messages, snapshots, schemas and IAM policies" in log
    publisher = broker.publisher()
    assert list(publisher.list_topics(project="projects/relay-test")) == []
    assert_serving(broker)


def test_a_damaged_store_refuses_to_start_and_reset_moves_it_aside(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _used_data_dir(start_broker, data)
    store = data / "broker.sqlite3"
    original = store.read_bytes()
    damaged = bytearray(original)
    damaged[3 * 4096 : 4 * 4096] = os.urandom(4096)  # page 4 of 4096 bytes: the topics table
    store.write_bytes(bytes(damaged))
    result = _broker_command(data, "--http-port", "0")
    _refused_start(result, f"the store {store} is damaged", "--reset-store")
    assert store.read_bytes() == bytes(damaged)

    store.write_bytes(original)  # a healthy store, reset on purpose: moved aside, kept whole
    broker = start_broker(data, args=["--reset-store"])
    (moved,) = data.glob("broker.sqlite3.reset-*")
    assert f"it was moved to {moved}" in broker.log_text()
    with contextlib.closing(sqlite3.connect(moved)) as old:
        assert old.execute("SELECT name FROM topics").fetchall() == [
            ("projects/relay-test/topics/kept",)
        ]
    assert list(broker.publisher().list_topics(project="projects/relay-test")) == []
    assert_serving(broker)


def test_a_new_data_dir_still_starts(start_broker: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broker.lock").touch()  # a first start that failed early leaves it
    assert_serving(start_broker(tmp_path / "data"))


# -- Seek (item 8) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (int(dt.datetime(3000, 1, 1, tzinfo=dt.UTC).timestamp()), 0),  # after 2262
        (int(dt.datetime(1600, 1, 1, tzinfo=dt.UTC).timestamp()), 0),  # before 1677
        (0, -1),
    ],
)
def test_seek_out_of_range_changes_nothing(
    start_broker: Callable[..., Any], tmp_path: Path, project: str, seconds: int, nanos: int
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "seek")
    sub = subscriber.subscription_path(project, "seek")
    publisher.create_topic(request={"name": topic, "message_retention_duration": {"seconds": 3600}})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "retain_acked_messages": True}
    )
    ids = {publisher.publish(topic, f"{i}".encode()).result(10) for i in range(5)}
    with pytest.raises(exceptions.InvalidArgument, match="Invalid Seek time") as info:
        subscriber.seek(
            request={
                "subscription": sub,
                "time": timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
            }
        )
    assert f"seconds={seconds}, nanos={nanos}" in info.value.message
    assert "1700-01-01T00:00:00.000000Z to 2250-12-31T23:59:59.999999Z" in info.value.message
    for restart in (False, True):  # memory, then the store, still hold all five
        if restart:
            broker.restart()
        response = subscriber.pull(subscription=sub, max_messages=10, timeout=10)
        assert {m.message.message_id for m in response.received_messages} == ids
        subscriber.modify_ack_deadline(
            subscription=sub,
            ack_ids=[m.ack_id for m in response.received_messages],
            ack_deadline_seconds=0,
        )
    publisher.stop()
    subscriber.close()
    assert_serving(broker)


# -- ack ids and names (item 10) -----------------------------------------------------------------


def _arabic(digits: str) -> str:
    return "".join(chr(0x660 + int(d)) for d in digits)


def _leased(broker: Any, project: str) -> tuple[Any, str, Any]:
    """(subscriber, subscription, the one leased ReceivedMessage) on a new topic."""
    publisher, subscriber = broker.publisher(), broker.subscriber()
    suffix = os.urandom(4).hex()
    topic = publisher.topic_path(project, f"acks-{suffix}")
    sub = subscriber.subscription_path(project, f"acks-{suffix}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=600)
    publisher.publish(topic, b"one").result(10)
    publisher.stop()
    (message,) = subscriber.pull(subscription=sub, max_messages=1, timeout=10).received_messages
    return subscriber, sub, message


def _hostile_ack_ids(ack_id: str) -> list[str]:
    seq, _, attempt = ack_id.partition("-")
    return ["9" * 5000, f"{_arabic(seq)}-{attempt}", f"{seq}-{attempt}\x00", "", f"{seq}"]


def _still_unacked(subscriber: Any, sub: str, message: Any) -> None:
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[message.ack_id], ack_deadline_seconds=0
    )
    (again,) = subscriber.pull(subscription=sub, max_messages=1, timeout=10).received_messages
    assert again.message.message_id == message.message.message_id
    subscriber.acknowledge(subscription=sub, ack_ids=[again.ack_id])


def test_invalid_ack_ids_are_invalid_argument_and_change_nothing(broker: Any, project: str) -> None:
    subscriber, sub, message = _leased(broker, project)
    for bad in _hostile_ack_ids(message.ack_id):
        for call in (
            lambda ids: subscriber.acknowledge(subscription=sub, ack_ids=ids),
            lambda ids: subscriber.modify_ack_deadline(
                subscription=sub, ack_ids=ids, ack_deadline_seconds=0
            ),
        ):
            with pytest.raises(exceptions.InvalidArgument, match="invalid ack ID") as info:
                call([message.ack_id, bad])  # the valid one is not applied either
            assert repr(bad[:100]) in info.value.message or bad in info.value.message
            assert len(info.value.message) < 400
    _still_unacked(subscriber, sub, message)
    assert_serving(broker)


def test_invalid_ack_ids_on_a_stream_end_it_with_invalid_argument(
    broker: Any, project: str
) -> None:
    subscriber, sub, message = _leased(broker, project)
    channel = grpc.insecure_channel(broker.host)
    call = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=StreamingPullRequest.SerializeToString,
        response_deserializer=StreamingPullResponse.FromString,
    )
    try:
        for bad in _hostile_ack_ids(message.ack_id):
            first = StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
            # the valid ack comes first in the request: it must not be applied
            later = StreamingPullRequest(
                ack_ids=[message.ack_id],
                modify_deadline_ack_ids=[bad],
                modify_deadline_seconds=[30],
            )
            with pytest.raises(grpc.RpcError) as info:
                for _ in call(iter([first, later]), timeout=10):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            details = info.value.details() or ""
            assert "invalid ack ID" in details
            assert "ValueError" not in details
            assert "Exceeds the limit" not in details
    finally:
        channel.close()
    _still_unacked(subscriber, sub, message)
    assert_serving(broker)


@pytest.mark.parametrize("bad", ["p\x00x", "proj\x1bect", "proj\u200bect", "proj\u2028ect"])
def test_control_characters_are_refused_in_project_ids(
    broker: Any, publisher: Any, subscriber: Any, schema_client: Any, bad: str
) -> None:
    escaped = repr(bad)[1:-1]
    with pytest.raises(exceptions.InvalidArgument, match="the project id must be") as info:
        publisher.create_topic(name=f"projects/{bad}/topics/topic-x")
    assert escaped in info.value.message
    assert bad not in info.value.message
    with pytest.raises(exceptions.InvalidArgument, match="control character"):
        subscriber.create_subscription(
            name=f"projects/{bad}/subscriptions/sub-x", topic=f"projects/{bad}/topics/topic-x"
        )
    with pytest.raises(exceptions.InvalidArgument, match="control character"):
        list(publisher.list_topics(project=f"projects/{bad}"))
    with pytest.raises(exceptions.InvalidArgument, match="control character"):
        schema_client.create_schema(
            request={
                "parent": f"projects/{bad}",
                "schema_id": "schema-x",
                "schema": {"type_": 2, "definition": '{"type": "string"}'},
            }
        )
    assert_serving(broker)


@pytest.mark.parametrize("bad", ["topic\x00x", "topic\nx", "topic\u200bx"])
def test_control_characters_are_refused_in_resource_ids(
    broker: Any, publisher: Any, bad: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="the id must be 3-255") as info:
        publisher.create_topic(name=f"projects/relay-test/topics/{bad}")
    assert repr(f"projects/relay-test/topics/{bad}")[1:-1] in info.value.message
    assert_serving(broker)


def test_control_characters_are_refused_in_push_configs(
    broker: Any, make_sub: Callable[..., str], endpoints: Callable[[], _Endpoint]
) -> None:
    url = endpoints().url
    with pytest.raises(exceptions.InvalidArgument, match="push_endpoint"):
        make_sub(push_config={"push_endpoint": url + "\r\nX-Injected: 1"})
    with pytest.raises(exceptions.InvalidArgument, match="service_account_email"):
        make_sub(
            push_config={
                "push_endpoint": url,
                "oidc_token": {"service_account_email": "a\n@b.iam.gserviceaccount.com"},
            }
        )
    assert_serving(broker)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_is_readable_by_its_owner_only(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    data = tmp_path / "data" / "new"  # created by the broker, not by the test's harness
    previous = os.umask(0o022)
    try:
        broker = start_broker(tmp_path / "data", args=["--data-dir", str(data)])
        assert_serving(broker)  # writes: the WAL and its index exist now
        assert _mode(data) == 0o700
        for name in ("broker.sqlite3", "broker.sqlite3-wal", "broker.sqlite3-shm"):
            assert _mode(data / name) == 0o600, name
        assert _mode(data / "oidc-key.pem") == 0o600
        broker.stop()
        (data / "broker.sqlite3").chmod(0o644)  # a store from before: tightened on start
        broker.start()
        assert _mode(data / "broker.sqlite3") == 0o600
    finally:
        os.umask(previous)


# -- a full disk (item 10) -----------------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.fixture
def full_disk_broker(start_broker: Callable[..., Any], tmp_path: Path) -> tuple[Any, Path]:
    """A broker whose data dir is a 32 MiB tmpfs of its own (in a mount namespace), and the
    path through which this process reaches that tmpfs (/proc/PID/root/...)."""
    if not _can_mount_tmpfs():
        pytest.skip("needs unshare and a tmpfs mount in a user namespace")
    data = tmp_path / "data"
    mount = 'mount -t tmpfs -o size=32m,mode=0700 tmpfs "$0" && exec "$@"'
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(data)]
    broker = start_broker(data, launcher=namespace)
    return broker, Path(f"/proc/{broker.proc.pid}/root") / str(data).lstrip("/")


def _fill(directory: Path) -> Path:
    """Fill the file system of `directory` with one file; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 4096):  # to the very end
            with contextlib.suppress(OSError):
                while out.write(b"\0" * size):
                    pass
    return filler


def test_a_full_disk_is_resource_exhausted_and_changes_nothing(
    full_disk_broker: tuple[Any, Path], project: str
) -> None:
    """A real full disk (tmpfs): SQLite answers SQLITE_FULL, the broker RESOURCE_EXHAUSTED."""
    broker, visible = full_disk_broker
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "full")
    sub = subscriber.subscription_path(project, "full")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=600)
    kept = publisher.publish(topic, b"kept").result(10)
    (leased,) = subscriber.pull(subscription=sub, max_messages=1, timeout=10).received_messages
    filler = _fill(visible)

    big = {"data": b"x" * 2_000_000}  # more than the WAL holds already
    with pytest.raises(exceptions.ResourceExhausted) as info:  # not retried: retry=None
        publisher.api.publish(request={"topic": topic, "messages": [big]}, retry=None)
    assert "The relay broker's disk is full" in info.value.message
    assert "the 1 message of this Publish (no message id was given out) was not stored" in (
        info.value.message
    )
    other = publisher.topic_path(project, "not-created")
    with pytest.raises(exceptions.ResourceExhausted, match=r"the new topic .* was not stored"):
        publisher.create_topic(name=other, retry=None)
    with pytest.raises(exceptions.ResourceExhausted, match=r"ack of 1 message .* was not stored"):
        subscriber.acknowledge(subscription=sub, ack_ids=[leased.ack_id], retry=None)
    with pytest.raises(exceptions.ResourceExhausted, match="deletion of the topic"):
        publisher.delete_topic(topic=topic, retry=None)
    # Nothing of it changed: memory shows what the store has.
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=other)
    assert publisher.get_topic(topic=topic).name == topic
    subscriber.modify_ack_deadline(
        subscription=sub, ack_ids=[leased.ack_id], ack_deadline_seconds=0
    )
    (again,) = subscriber.pull(subscription=sub, max_messages=10, timeout=10).received_messages
    assert again.message.message_id == kept  # unacked, and the refused publish is not there

    filler.unlink()
    subscriber.acknowledge(subscription=sub, ack_ids=[again.ack_id])
    assert "Traceback" not in broker.log_text()
    publisher.stop()
    subscriber.close()
    assert_serving(broker)
