"""Fixtures of the function-side tests: a completion topic on relay broker to pull results from,
functions-framework test clients of function modules, and request builders."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from relay.functions import REPLY_TOPICS_ENV
from relay.protocol import Event, Message, from_message, new_request, to_binary

# The functions under test publish results to the tests' own (per-test) completion topics.
os.environ.setdefault(REPLY_TOPICS_ENV, "projects/relay-test/topics/*")

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
EXAMPLES = ROOT / "functions"


@dataclass
class Completion:
    """A results topic with a pull subscription; `pull` returns decoded result events."""

    topic: str
    subscription: str
    subscriber: Any

    def pull(self, count: int = 1, timeout: float = 15.0) -> list[Event]:
        """Pull (and ack) until `count` results arrived; fail after `timeout` seconds."""
        return [event for event, _ in self.pull_messages(count, timeout)]

    def pull_messages(self, count: int = 1, timeout: float = 15.0) -> list[tuple[Event, Any]]:
        from google.api_core import exceptions

        found: list[tuple[Event, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} results, got {len(found)}: {found}")
            try:
                response = self.subscriber.pull(
                    request={"subscription": self.subscription, "max_messages": 10},
                    timeout=min(remaining, 5.0),
                )
            except (exceptions.DeadlineExceeded, exceptions.RetryError):
                continue
            ack_ids = []
            for received in response.received_messages:
                message = received.message
                event = from_message(message.data, dict(message.attributes))
                found.append((event, message))
                ack_ids.append(received.ack_id)
            if ack_ids:
                self.subscriber.acknowledge(
                    request={"subscription": self.subscription, "ack_ids": ack_ids}
                )
        return found

    def assert_empty(self, wait: float = 0.5) -> None:
        """No (further) result arrives within `wait` seconds."""
        from google.api_core import exceptions

        try:
            response = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": 10}, timeout=wait
            )
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            return
        assert not response.received_messages, [m.message for m in response.received_messages]


@pytest.fixture(scope="session")
def pubsub_clients(broker: Any) -> Iterator[tuple[Any, Any]]:
    """A publisher and a subscriber bound to the session broker."""
    publisher, subscriber = broker.publisher(), broker.subscriber()
    yield publisher, subscriber
    subscriber.close()


@pytest.fixture
def completion(
    pubsub_clients: tuple[Any, Any], project: str, unique: Callable[[str], str]
) -> Completion:
    """A fresh completion (results) topic and a pull subscription on it."""
    publisher, subscriber = pubsub_clients
    topic = publisher.topic_path(project, unique("results"))
    publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(project, unique("results-pull"))
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=30)
    return Completion(topic, subscription, subscriber)


@pytest.fixture
def make_client() -> Callable[..., Any]:
    """make_client(target, source path) -> a functions-framework test client of that module."""

    def make(target: str, source: Path) -> Any:
        return functions_framework.create_app(target, str(source), "cloudevent").test_client()

    return make


@pytest.fixture
def echo_client(broker: Any, make_client: Callable[..., Any]) -> Any:
    """The echo example, served by functions-framework's test client."""
    return make_client("echo", EXAMPLES / "echo" / "main.py")


def request_event(completion: Completion, data: Any, **kwargs: Any) -> Event:
    """An echo request answering to the completion topic."""
    kwargs.setdefault("source", "/tests/functions")
    kind = kwargs.pop("type", "dev.relay.example.echo")
    return new_request(kind, data, reply_to=completion.topic, **kwargs)


def push_body(
    message: Message,
    *,
    attempt: int | None = None,
    message_id: str = "m-1",
    subscription: str = "projects/relay-test/subscriptions/fn",
) -> bytes:
    """Google's push wrapper around `message`."""
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": message.attributes,
            "messageId": message_id,
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": subscription,
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return json.dumps(body).encode()


def post_push(
    client: Any, event: Event | Message, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> Any:
    """POST `event` (binary mode) as a Pub/Sub push; returns the response."""
    message = to_binary(event) if isinstance(event, Event) else event
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return client.post("/", data=push_body(message, **kwargs), headers=all_headers)


def log_lines(captured: str) -> list[dict[str, Any]]:
    """The structured JSON log lines relay wrote to stdout."""
    lines = []
    for line in captured.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines
