"""Push subscriptions: the broker POSTs to an HTTP endpoint, acks on 2xx, retries, dead-letters."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from google.auth.transport.requests import Request as AuthRequest
from google.oauth2 import id_token

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Receiver:
    """A local HTTP endpoint that records pushes and answers with scripted statuses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # consumed one per request; 200 when empty
        self.delay = 0.0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.active += 1
                    receiver.max_active = max(receiver.max_active, receiver.active)
                    receiver.calls.append((self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.active -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 10) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.calls) >= n:
                    return list(self.calls)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.calls)} pushes arrived, expected {n}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _backoff(seconds: float) -> dict[str, Any]:
    whole = int(seconds)
    nanos = int((seconds - whole) * 1e9)
    span = {"seconds": whole, "nanos": nanos}
    return {"minimum_backoff": span, "maximum_backoff": span}


def test_push_wrapper_format_and_ack(
    publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    sub = make_sub(push_config={"push_endpoint": receiver.url + "/push"})
    message_id = publisher.publish(topic, b"hello", k="v").result(10)
    ((path, headers, body),) = receiver.wait_for(1)
    assert path == "/push"
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert payload["subscription"] == sub
    assert payload["message"]["messageId"] == message_id
    assert base64.b64decode(payload["message"]["data"]) == b"hello"
    assert payload["message"]["attributes"] == {"k": "v"}
    time.sleep(0.5)
    assert len(receiver.calls) == 1  # acked: not pushed again


def test_push_failure_is_retried_then_dead_lettered(
    publisher: Any,
    subscriber: Any,
    project: str,
    topic: str,
    make_sub: Callable[..., str],
    receiver: Receiver,
    unique: Callable[[str], str],
) -> None:
    dlq = publisher.topic_path(project, unique("dlq"))
    publisher.create_topic(name=dlq)
    dlq_sub = subscriber.subscription_path(project, unique("dlq-sub"))
    subscriber.create_subscription(name=dlq_sub, topic=dlq)
    receiver.statuses = [500, 503, 429, 404, 400]
    make_sub(
        push_config={"push_endpoint": receiver.url},
        retry_policy=_backoff(0.05),
        dead_letter_policy={"dead_letter_topic": dlq, "max_delivery_attempts": 5},
    )
    publisher.publish(topic, b"doomed").result(10)
    calls = receiver.wait_for(5)
    attempts = [json.loads(body)["deliveryAttempt"] for _, _, body in calls]
    assert attempts == [1, 2, 3, 4, 5]
    response = subscriber.pull(subscription=dlq_sub, max_messages=10, timeout=10)
    (dead,) = response.received_messages
    assert dead.message.data == b"doomed"
    assert dead.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    time.sleep(0.3)
    assert len(receiver.calls) == 5


def test_push_retries_until_success(
    publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    make_sub(push_config={"push_endpoint": receiver.url}, retry_policy=_backoff(0.1))
    publisher.publish(topic, b"eventually").result(10)
    calls = receiver.wait_for(3)
    assert len({json.loads(body)["message"]["messageId"] for _, _, body in calls}) == 1
    time.sleep(0.4)
    assert len(receiver.calls) == 3


def test_refused_endpoint_then_fixed(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    sub = make_sub(
        push_config={"push_endpoint": "http://127.0.0.1:9/nothing"}, retry_policy=_backoff(0.1)
    )
    publisher.publish(topic, b"patient").result(10)
    time.sleep(0.3)
    subscriber.modify_push_config(
        request={"subscription": sub, "push_config": {"push_endpoint": receiver.url}}
    )
    ((_, _, body),) = receiver.wait_for(1)
    assert base64.b64decode(json.loads(body)["message"]["data"]) == b"patient"


def test_push_oidc_token_verifies_against_broker_certs(
    broker: Any, publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    email = "pusher@relay-test.iam.gserviceaccount.com"
    endpoint = receiver.url + "/fn"  # the audience must be the endpoint (tests/broker/test_hostile)
    make_sub(
        push_config={
            "push_endpoint": endpoint,
            "oidc_token": {"service_account_email": email, "audience": endpoint},
        }
    )
    publisher.publish(topic, b"signed").result(10)
    ((_, headers, _),) = receiver.wait_for(1)
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    session = requests.Session()
    claims = id_token.verify_token(
        token, AuthRequest(session), audience=endpoint, certs_url=broker.certs_url
    )
    assert claims["email"] == email
    assert claims["email_verified"] is True
    assert claims["iss"] == "https://accounts.google.com"


def test_push_oidc_audience_defaults_to_endpoint(
    broker: Any, publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    endpoint = receiver.url + "/aud"
    make_sub(
        push_config={
            "push_endpoint": endpoint,
            "oidc_token": {"service_account_email": "a@b.iam.gserviceaccount.com"},
        }
    )
    publisher.publish(topic, b"x").result(10)
    ((_, headers, _),) = receiver.wait_for(1)
    token = headers["Authorization"].split(" ", 1)[1]
    claims = id_token.verify_token(
        token, AuthRequest(requests.Session()), audience=endpoint, certs_url=broker.certs_url
    )
    assert claims["aud"] == endpoint


def test_push_cloudevent_format(
    publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    sub = make_sub(
        push_config={
            "push_endpoint": receiver.url,
            "attributes": {"x-relay-push-format": "cloudevent"},
        }
    )
    message_id = publisher.publish(topic, b"{}", a="b").result(10)
    ((_, headers, body),) = receiver.wait_for(1)
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert lower["ce-id"] == message_id
    assert lower["ce-source"] == f"//pubsub.googleapis.com/{topic}"
    assert json.loads(body)["subscription"] == sub


def test_push_no_wrapper(
    publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    make_sub(push_config={"push_endpoint": receiver.url, "no_wrapper": {"write_metadata": True}})
    publisher.publish(topic, b"raw bytes", color="blue").result(10)
    ((_, headers, body),) = receiver.wait_for(1)
    assert body == b"raw bytes"
    assert {k.lower(): v for k, v in headers.items()}["color"] == "blue"


def test_push_concurrency_cap(
    publisher: Any, topic: str, make_sub: Callable[..., str], receiver: Receiver
) -> None:
    receiver.delay = 0.3
    make_sub(
        push_config={"push_endpoint": receiver.url, "attributes": {"x-relay-push-concurrency": "2"}}
    )
    futures = [publisher.publish(topic, f"{i}".encode()) for i in range(6)]
    for future in futures:
        future.result(10)
    receiver.wait_for(6)
    assert receiver.max_active == 2
