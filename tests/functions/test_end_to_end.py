"""End to end: functions served by the functions-framework CLI (a subprocess, gunicorn) behind
relay broker push subscriptions; requests published and results pulled with the real client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

from relay.protocol import RESULT_FAILED, RESULT_SUCCEEDED, ErrorInfo, Event, to_binary

from ._served import Served, free_port
from .conftest import EXAMPLES, Completion, request_event

ALLOWED = "pusher@relay-test.iam.gserviceaccount.com"
AUDIENCE = "https://echo.relay.test"


@pytest.fixture(scope="module")
def serve(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    started: dict[tuple[str, str], Served] = {}
    logs = tmp_path_factory.mktemp("served")

    def start(target: str, source: Path, port: int | None = None, **env: str) -> Served:
        key = (target, repr(sorted(env.items())))
        if key not in started:
            started[key] = Served(
                target, source, logs / f"{target}-{len(started)}.log",
                {"PUBSUB_EMULATOR_HOST": broker.host, **env}, port,
            )  # fmt: skip
        return started[key]

    yield start
    for served in started.values():
        served.stop()


@pytest.fixture(scope="module")
def echo(serve: Callable[..., Served]) -> Served:
    return serve("echo", EXAMPLES / "echo" / "main.py")


@pytest.fixture
def route(
    pubsub_clients: tuple[Any, Any], project: str, unique: Callable[[str], str]
) -> Callable[..., Callable[[Event], None]]:
    """route(endpoint, **subscription options) -> publish(event) through a new push subscription."""
    publisher, subscriber = pubsub_clients

    def make(endpoint: str, **options: Any) -> Callable[[Event], None]:
        topic = publisher.topic_path(project, unique("requests"))
        publisher.create_topic(name=topic)
        push_config = {"push_endpoint": endpoint, **options.pop("push", {})}
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(project, unique("push")),
                "topic": topic,
                "push_config": push_config,
                "ack_deadline_seconds": 10,
                "retry_policy": {"minimum_backoff": {"nanos": 100_000_000},
                                 "maximum_backoff": {"nanos": 300_000_000}},
                **options,
            }
        )  # fmt: skip

        def publish(event: Event) -> None:
            message = to_binary(event)
            publisher.publish(topic, message.data, **message.attributes).result(timeout=10)

        return publish

    return make


def _dead_letter_policy(
    pubsub_clients: tuple[Any, Any], project: str, unique: Callable[[str], str]
) -> tuple[str, dict[str, Any]]:
    publisher, _ = pubsub_clients
    topic = publisher.topic_path(project, unique("dead"))
    publisher.create_topic(name=topic)
    return topic, {"dead_letter_topic": topic, "max_delivery_attempts": 5}


@pytest.mark.parametrize(
    "push",
    [
        {},
        {"attributes": {"x-relay-push-format": "cloudevent"}},
        {"no_wrapper": {"write_metadata": True}},
    ],
    ids=["wrapper", "eventarc", "no-wrapper"],
)
def test_success_through_each_push_format(
    echo: Served, route: Any, completion: Completion, push: dict[str, Any]
) -> None:
    publish = route(echo.url, push=push)
    request = request_event(completion, {"hello": "world"})
    publish(request)
    (result,) = completion.pull(1)
    assert (result.type, result.data) == (RESULT_SUCCEEDED, {"hello": "world"})
    assert result.correlationid == request.correlationid


def test_non_retryable_failure(echo: Served, route: Any, completion: Completion) -> None:
    publish = route(echo.url)
    publish(request_event(completion, {"fail": "no way"}))
    (result,) = completion.pull(1)
    error = ErrorInfo.from_event(result)
    assert (result.type, error.type, error.retryable) == (RESULT_FAILED, "EchoFailure", False)


def test_retry_then_success(
    echo: Served,
    route: Any,
    completion: Completion,
    pubsub_clients: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
) -> None:
    _, policy = _dead_letter_policy(pubsub_clients, project, unique)
    publish = route(echo.url, dead_letter_policy=policy)  # attempts are counted
    request = request_event(completion, {"crash": 2})
    publish(request)
    (result,) = completion.pull(1)
    assert (result.type, result.data) == (RESULT_SUCCEEDED, {"crash": 2})
    outcomes = [(line["outcome"], line["attempt"]) for line in _lines_of(echo, request, 3)]
    assert outcomes == [("retry", 1), ("retry", 2), ("succeeded", 3)]


def test_retry_budget_spent_ends_in_a_dead_letter_result(
    echo: Served,
    serve: Callable[..., Served],
    route: Any,
    completion: Completion,
    pubsub_clients: tuple[Any, Any],
    project: str,
    unique: Callable[[str], str],
) -> None:
    dead_letter = serve("dead_letter", EXAMPLES / "dead_letter" / "main.py")
    _, subscriber = pubsub_clients
    dead_topic, policy = _dead_letter_policy(pubsub_clients, project, unique)
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(project, unique("dead-push")),
            "topic": dead_topic,
            "push_config": {"push_endpoint": dead_letter.url},
        }
    )
    publish = route(echo.url, dead_letter_policy=policy)
    request = request_event(completion, {"crash": 99})
    publish(request)
    (result,) = completion.pull(1, timeout=30)
    error = ErrorInfo.from_event(result)
    assert (result.type, error.type, error.retryable, error.attempt) == (
        RESULT_FAILED,
        "DeadLettered",
        True,
        5,
    )
    assert result.correlationid == request.correlationid
    attempts = [
        line["attempt"]
        for line in echo.lines()
        if line.get("correlationid") == request.correlationid
    ]
    assert attempts == [1, 2, 3, 4, 5]
    (dead,) = _lines_of(dead_letter, request, 1)
    assert (dead["outcome"], dead["error"]["message"]) == ("dead-lettered", "after 5 attempts")


def _lines_of(served: Served, request: Event, count: int) -> list[dict[str, Any]]:
    """The log lines of `request`, once there are `count` (a function logs a result just after
    publishing it, so the result can come first)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            line for line in served.lines() if line.get("correlationid") == request.correlationid
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_duplicate_publish_answers_twice_with_one_result_id(
    echo: Served, route: Any, completion: Completion
) -> None:
    publish = route(echo.url)
    request = request_event(completion, {"twice": True})
    publish(request)
    publish(request)
    first, second = completion.pull(2)
    assert first.correlationid == second.correlationid == request.correlationid
    assert first.id == second.id


def test_expired_request(echo: Served, route: Any, completion: Completion) -> None:
    publish = route(echo.url)
    publish(request_event(completion, {"crash": 99}, expiry=datetime.now(UTC) - timedelta(1)))
    (result,) = completion.pull(1)
    assert ErrorInfo.from_event(result).type == "Expired"


def test_csv_profile_example(
    serve: Callable[..., Served], route: Any, completion: Completion, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    served = serve(
        "csv_profile", EXAMPLES / "csv_profile" / "main.py", CSV_PROFILE_SOURCES=str(inputs)
    )
    inputs.mkdir()
    data = inputs / "people.csv"
    data.write_text("name,age\nann,3\nbob,\n")
    publish = route(served.url)
    kind = "dev.relay.example.csv.profile"
    requests = {
        uri: request_event(completion, {"uri": uri}, type=kind)
        for uri in [data.as_uri(), "ftp://nowhere/x.csv", "file:///etc/passwd"]
    }
    for request in requests.values():
        publish(request)
    results = {event.correlationid: event for event in completion.pull(3)}
    by_uri = {uri: results[request.correlationid] for uri, request in requests.items()}
    assert by_uri[data.as_uri()].data == {
        "uri": data.as_uri(),
        "rows": 2,
        "columns": ["name", "age"],
        "nulls": {"name": 0, "age": 1},
    }
    assert ErrorInfo.from_event(by_uri["ftp://nowhere/x.csv"]).type == "SchemaValidationError"
    refused = ErrorInfo.from_event(by_uri["file:///etc/passwd"])
    assert (refused.type, refused.retryable) == ("NotAllowed", False)
    assert "root:" not in refused.message


def test_push_oidc_tokens_from_the_broker(
    broker: Any, serve: Callable[..., Served], route: Any, completion: Completion
) -> None:
    # The broker sends a token only to the endpoint its audience names (docs/broker.md, "Hostile
    # input"), so the function's audience is its own URL, chosen before it starts; a wrong
    # audience is refused by the broker here and by the function in test_push_auth.py.
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    guarded = serve(
        "echo",
        EXAMPLES / "echo" / "main.py",
        port,
        RELAY_PUSH_AUDIENCE=url,
        RELAY_PUSH_ALLOWED_EMAILS=ALLOWED,
        RELAY_PUSH_CERTS_URL=broker.certs_url,
    )
    allowed = route(guarded.url, push={"oidc_token": {"service_account_email": ALLOWED}})
    intruder = route(
        guarded.url,
        push={"oidc_token": {"service_account_email": "x@evil.iam.gserviceaccount.com"}},
    )
    with pytest.raises(exceptions.InvalidArgument, match="is not the push_endpoint"):
        route(
            guarded.url,
            push={"oidc_token": {"service_account_email": ALLOWED, "audience": AUDIENCE}},
        )
    no_token = route(guarded.url)
    request = request_event(completion, {"signed": True})
    allowed(request)
    for publish in (intruder, no_token):
        publish(request_event(completion, {"signed": False}))
    (result,) = completion.pull(1)
    assert result.data == {"signed": True}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        outcomes = {line["outcome"] for line in guarded.lines()}
        if {"succeeded", "forbidden", "unauthorized"} <= outcomes:
            break
        time.sleep(0.1)
    assert {"succeeded", "forbidden", "unauthorized"} <= outcomes
    completion.assert_empty(0.5)
