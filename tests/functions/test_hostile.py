"""Malformed and hostile deliveries: never a crash; answered (failed result) when possible,
otherwise a non-2xx so Pub/Sub keeps the message and it ends dead-lettered."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.functions import REPLY_TOPICS_ENV
from relay.functions._decorator import BODY_READ_TIMEOUT
from relay.protocol import RESULT_FAILED, ErrorInfo, Message, to_binary

from ._served import Served
from .conftest import APPS, EXAMPLES, Completion, log_lines, post_push, push_body, request_event


def _message(completion: Completion, data: Any = None, **changes: str | None) -> Message:
    message = to_binary(request_event(completion, data if data is not None else {"x": 1}))
    attributes = dict(message.attributes)
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return Message(message.data, attributes)


@pytest.mark.parametrize(
    ("data", "changes", "error_type"),
    [
        (b"{not json", {}, "DecodeError"),
        (b'{"crash": "three"}', {}, "SchemaValidationError"),
        (b'"a string"', {}, "SchemaValidationError"),
        (b"\x00\x01binary", {"content_type": "application/octet-stream"}, "DecodeError"),
        (b"{}", {"ce_id": None}, "MissingAttributeError"),
        (b"{}", {"ce_specversion": "0.3"}, "InvalidAttributeError"),
        (b"{}", {"ce_time": "yesterday"}, "InvalidAttributeError"),
        (b"{}", {"ce_expirytime": "soon"}, "InvalidAttributeError"),
    ],
)
def test_bad_request_data_gets_a_failed_result(
    echo_client: Any,
    completion: Completion,
    data: bytes,
    changes: dict[str, str | None],
    error_type: str,
) -> None:
    message = _message(completion, **changes)
    response = post_push(echo_client, Message(data, message.attributes))
    assert response.status_code == 200, response.data
    (result,) = completion.pull(1)
    assert result.type == RESULT_FAILED
    error = ErrorInfo.from_event(result)
    assert (error.type, error.retryable) == (error_type, False)
    assert result.correlationid == message.attributes["ce-correlationid"]


@pytest.mark.parametrize(
    "changes",
    [
        {"ce_replyto": None},
        {"ce_correlationid": None},
        {"ce_replyto": "not-a-topic"},
        {"ce_replyto": None, "ce_id": None},
        {"ce_correlationid": "c" * 1025},
    ],
)
def test_unanswerable_request_is_kept_and_logged(
    echo_client: Any,
    completion: Completion,
    changes: dict[str, str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = _message(completion, **changes)
    response = post_push(echo_client, message, message_id="m-lost")
    assert response.status_code == 400  # non-2xx: Pub/Sub redelivers, then dead-letters
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["outcome"], line["severity"], line["message_id"]) == (
        "unanswerable",
        "ERROR",
        "m-lost",
    )
    completion.assert_empty(0.2)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", {}),
        (b"\x00\xff" * 100, {"Content-Type": "application/octet-stream"}),
        (b"{not json", {"Content-Type": "application/json"}),
        (b"[]", {"Content-Type": "application/json"}),
        (b'{"message": {"data": "***", "messageId": "m"}}', {"Content-Type": "application/json"}),
        (
            b'{"message": {"data": "", "attributes": {"a": 1}}}',
            {"Content-Type": "application/json"},
        ),
        (b'{"message": "x", "subscription": "s"}', {"Content-Type": "application/json"}),
        (b"<xml/>", {"Content-Type": "application/xml"}),
        (b"{}", {"Content-Type": "application/cloudevents-batch+json"}),
        (b"{bad", {"Content-Type": "application/cloudevents+json"}),
        (
            b"{}",
            {"ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"},
        ),
        (b"{}", {"ce-specversion": "1.0", "ce-id": "x"}),
    ],
)
def test_garbage_is_rejected_without_crashing(
    echo_client: Any, body: bytes, headers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    response = echo_client.post("/", data=body, headers=headers)
    assert response.status_code == 400, response.data
    assert json.loads(response.data)["outcome"] == "unanswerable"
    assert [line["outcome"] for line in log_lines(capsys.readouterr().out)] == ["unanswerable"]


def test_oversized_body_is_refused(echo_client: Any) -> None:
    response = echo_client.post("/", data=b"x" * (16 * 1024 * 1024 + 1))
    assert response.status_code == 413


def test_other_methods_are_not_served(echo_client: Any) -> None:
    assert echo_client.get("/").status_code == 405
    assert echo_client.put("/", data=b"{}").status_code == 405


def test_many_attributes_and_unicode_are_fine(echo_client: Any, completion: Completion) -> None:
    message = _message(completion, {"text": "ünïcødé ✓"})
    attributes = dict(message.attributes)
    attributes.update({f"x-extra-{i}": "v" * 1000 for i in range(50)})
    assert post_push(echo_client, Message(message.data, attributes)).status_code == 200
    (result,) = completion.pull(1)
    assert result.data == {"text": "ünïcødé ✓"}


def test_oversized_attributes_do_not_poison_the_result(
    echo_client: Any, completion: Completion
) -> None:
    """Pub/Sub caps values at 1024 bytes, a direct HTTP caller may not: relay still answers."""
    message = _message(
        completion, ce_subject="s" * 5000, ce_traceparent="t" * 5000, ce_tracestate="u" * 600
    )
    assert echo_client.post("/", data=message.data, headers=message.attributes).status_code == 200
    (result,) = completion.pull(1)
    assert result.type == "dev.relay.result.succeeded"
    assert result.traceparent is None
    assert result.tracestate is None


# -- what a request may make a function read or publish -------------------------------------------


def _dataref(completion: Completion, uri: str) -> Message:
    message = _message(completion)
    return Message(b"", {**message.attributes, "ce-dataref": uri})


@pytest.mark.parametrize(
    "uri",
    [
        "gs://any-bucket/secret.json",
        "file:///etc/passwd",
        "file:///proc/self/environ",
        "file:///" + "0" * 64,  # content-addressed name, but in no configured store
        "http://169.254.169.254/computeMetadata/v1/token",
        "ftp://example.com/x",
    ],
)
def test_dataref_outside_every_blob_store_is_refused_unread(
    echo_client: Any, completion: Completion, uri: str
) -> None:
    """echo has no blob store: a dataref is an immediate non-retryable failure (a read of
    gs:// would have needed Google credentials here and answered 500)."""
    response = post_push(echo_client, _dataref(completion, uri))
    assert response.status_code == 200, response.data
    (result,) = completion.pull(1)
    error = ErrorInfo.from_event(result)
    assert (result.type, error.type, error.retryable) == (
        RESULT_FAILED,
        "DataRefRefusedError",
        False,
    )
    assert "refused" in error.message


@pytest.fixture
def blob_echo(make_client: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A function whose one blob store is tmp_path/store (tmp_path/outside is not in it)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("TEST_BLOB_DIR", str(tmp_path / "store"))
    return make_client("blob_echo", APPS / "kinds.py")


def test_dataref_inside_the_blob_store_is_read(
    blob_echo: Any, completion: Completion, tmp_path: Any
) -> None:
    (tmp_path / "store" / "in.json").write_bytes(b'{"x": 1}')
    uri = (tmp_path / "store" / "in.json").as_uri()
    assert post_push(blob_echo, _dataref(completion, uri)).status_code == 200
    (result,) = completion.pull(1)
    assert result.data == {"data": {"x": 1}}


def test_dataref_links_out_of_the_blob_store_are_refused(
    blob_echo: Any, completion: Completion, tmp_path: Any
) -> None:
    secret = tmp_path / "outside" / "secret.json"
    secret.write_bytes(b'{"password": "hunter2"}')
    (tmp_path / "store" / "link.json").symlink_to(secret)
    (tmp_path / "store" / "up").symlink_to(tmp_path / "outside")
    store = tmp_path / "store"
    for uri in [
        secret.as_uri(),
        (store / "link.json").as_uri(),
        (store / "up" / "secret.json").as_uri(),
        f"{store.as_uri()}/../outside/secret.json",
    ]:
        assert post_push(blob_echo, _dataref(completion, uri)).status_code == 200
        (result,) = completion.pull(1)
        assert ErrorInfo.from_event(result).type == "DataRefRefusedError", uri
        assert "hunter2" not in json.dumps(result.data)


def test_reply_topic_not_allowed_gets_nothing_and_nothing_is_read(
    blob_echo: Any,
    pubsub_clients: tuple[Any, Any],
    unique: Any,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tests allow projects/relay-test/topics/*: a topic of another project is refused
    before the dataref is resolved (a missing blob would otherwise answer 500)."""
    publisher, subscriber = pubsub_clients
    stolen = Completion(
        publisher.topic_path("relay-other", unique("stolen")),
        subscriber.subscription_path("relay-other", unique("stolen-pull")),
        subscriber,
    )
    publisher.create_topic(name=stolen.topic)
    subscriber.create_subscription(name=stolen.subscription, topic=stolen.topic)
    message = _dataref(stolen, (tmp_path / "store" / "missing.json").as_uri())
    response = post_push(blob_echo, message)
    assert response.status_code == 400, response.data
    (line,) = log_lines(capsys.readouterr().out)
    assert line["outcome"] == "unanswerable"
    assert (line["correlationid"], line["request_id"]) == (
        message.attributes["ce-correlationid"],
        message.attributes["ce-id"],
    )
    assert "may not publish to" in line["error"]["message"]
    stolen.assert_empty(0.5)


def test_a_function_with_no_reply_topics_answers_nothing(
    make_client: Any, completion: Completion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REPLY_TOPICS_ENV, "")
    client = make_client("echo", EXAMPLES / "echo" / "main.py")
    response = post_push(client, _message(completion))
    assert response.status_code == 400
    assert "none are configured (RELAY_REPLY_TOPICS)" in json.loads(response.data)["error"]
    completion.assert_empty(0.3)


def test_a_bad_reply_topic_setting_stops_the_function_loading(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REPLY_TOPICS_ENV, "projects/relay-test/topics/fine,results")
    with pytest.raises(ValueError, match="RELAY_REPLY_TOPICS: topic pattern 'results'"):
        make_client("echo", EXAMPLES / "echo" / "main.py")


# -- input that once made Flask answer 500 --------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "application/cloudevents+json"])
def test_deeply_nested_json_envelopes_are_answered_400(echo_client: Any, content_type: str) -> None:
    body = b'{"message": ' + b"[" * 100_000
    response = echo_client.post("/", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.data[:300]
    assert json.loads(response.data)["outcome"] == "unanswerable"


def test_deeply_nested_request_data_is_a_failed_result(
    echo_client: Any, completion: Completion
) -> None:
    message = _message(completion)
    deep = Message(b"[" * 100_000, message.attributes)
    assert post_push(echo_client, deep).status_code == 200
    (result,) = completion.pull(1)
    assert ErrorInfo.from_event(result).type == "DecodeError"


# -- a served function (gunicorn): authentication before the body, bounded reads -----------------


def _raw_post(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: fn\r\nContent-Type: application/json\r\n" + head)
    sock.sendall(b"\r\n" + body)
    return sock


def _status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    try:
        return int(sock.recv(64).split(b" ")[1])
    finally:
        sock.close()


@pytest.fixture(scope="module")
def served_echo(
    broker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def serve(**env: str) -> Served:
        log = tmp_path_factory.mktemp("served-echo") / "echo.log"
        served = Served("echo", EXAMPLES / "echo" / "main.py", log, env)
        started.append(served)
        return served

    yield serve
    for served in started:
        served.stop()


def test_no_token_is_refused_before_a_huge_body_is_read(
    served_echo: Callable[..., Served],
) -> None:
    echo = served_echo(
        RELAY_PUSH_AUDIENCE="https://echo.relay.test",
        RELAY_PUSH_ALLOWED_EMAILS="pusher@relay-test.iam.gserviceaccount.com",
        RELAY_PUSH_CERTS_URL="http://127.0.0.1:9/certs",
    )
    started = time.monotonic()
    sock = _raw_post(echo.port, f"Content-Length: {256 * 1024 * 1024}\r\n".encode())
    assert _status(sock, 5) == 401  # no byte of the body was sent
    assert time.monotonic() - started < 5


def test_a_declared_body_over_the_cap_is_refused_unread(
    served_echo: Callable[..., Served],
) -> None:
    echo = served_echo()
    sock = _raw_post(echo.port, f"Content-Length: {17 * 1024 * 1024}\r\n".encode())
    assert _status(sock, 5) == 413


def test_half_open_requests_do_not_freeze_the_function(
    served_echo: Callable[..., Served], completion: Completion
) -> None:
    """THREADS=4 (Served): six clients that send half a body hold the threads for at most
    BODY_READ_TIMEOUT, then get 408; a real push is answered meanwhile or right after."""
    echo = served_echo()
    stalled = [_raw_post(echo.port, b"Content-Length: 1000\r\n", b'{"message": ') for _ in range(6)]
    time.sleep(0.3)
    started = time.monotonic()
    body = push_body(_message(completion))
    request = urllib.request.Request(
        echo.url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert time.monotonic() - started < BODY_READ_TIMEOUT + 3
    assert completion.pull(1)[0].type == "dev.relay.result.succeeded"
    assert [_status(sock, 10) for sock in stalled[:4]] == [408] * 4
