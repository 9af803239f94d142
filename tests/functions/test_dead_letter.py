"""The dead-letter function: every dead-lettered request becomes a failed, retryable result."""

from __future__ import annotations

from typing import Any

import pytest

from relay.functions import DELIVERY_COUNT_ATTRIBUTE, MAX_DELIVERY_ATTEMPTS_ENV
from relay.protocol import RESULT_FAILED, ErrorInfo, Message, to_binary

from .conftest import EXAMPLES, Completion, log_lines, post_push, request_event


@pytest.fixture
def dead_letter_client(broker: Any, make_client: Any) -> Any:
    return make_client("dead_letter", EXAMPLES / "dead_letter" / "main.py")


def _dead_lettered(message: Message, count: str | None) -> Message:
    attributes = dict(message.attributes)
    attributes["CloudPubSubDeadLetterSourceSubscription"] = "projects/relay-test/subscriptions/fn"
    if count is not None:
        attributes[DELIVERY_COUNT_ATTRIBUTE] = count
    return Message(message.data, attributes)


@pytest.mark.parametrize(("count", "push_attempt", "expected"), [("5", None, 5), (None, 7, 7)])
def test_dead_lettered_request_gets_a_failed_result(
    dead_letter_client: Any,
    completion: Completion,
    count: str | None,
    push_attempt: int | None,
    expected: int,
) -> None:
    request = request_event(completion, {"crash": 99})
    message = _dead_lettered(to_binary(request), count)
    assert post_push(dead_letter_client, message, attempt=push_attempt).status_code == 200
    (result,) = completion.pull(1)
    assert result.type == RESULT_FAILED
    assert result.correlationid == request.correlationid
    error = ErrorInfo.from_event(result)
    assert (error.type, error.retryable, error.attempt) == ("DeadLettered", True, expected)
    assert "projects/relay-test/subscriptions/fn" in error.message


def test_dead_lettered_request_with_bad_data_is_still_answered(
    dead_letter_client: Any, completion: Completion
) -> None:
    message = to_binary(request_event(completion, {}))
    bad = _dead_lettered(Message(b"{broken", message.attributes), "5")
    assert post_push(dead_letter_client, bad).status_code == 200
    (result,) = completion.pull(1)
    assert ErrorInfo.from_event(result).type == "DeadLettered"


def test_unanswerable_dead_letter_without_attempt_counts_is_logged_and_acked(
    dead_letter_client: Any, completion: Completion, capsys: pytest.CaptureFixture[str]
) -> None:
    message = to_binary(request_event(completion, {"secret": "kept in the log"}))
    attributes = {k: v for k, v in message.attributes.items() if k != "ce-replyto"}
    lost = _dead_lettered(Message(message.data, attributes), "5")
    assert post_push(dead_letter_client, lost, message_id="m-dead").status_code == 200
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["severity"], line["outcome"], line["message_id"]) == (
        "ERROR",
        "undeliverable",
        "m-dead",
    )
    assert "only record" in line["error"]["message"]
    assert line["attributes"][DELIVERY_COUNT_ATTRIBUTE] == "5"
    assert line["data_bytes"] == len(message.data)
    completion.assert_empty(0.2)


@pytest.fixture
def counted_dead_letter_client(
    broker: Any, make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The dead-letter function on a subscription with a dead-letter policy of 5 attempts."""
    monkeypatch.setenv(MAX_DELIVERY_ATTEMPTS_ENV, "5")
    return make_client("dead_letter", EXAMPLES / "dead_letter" / "main.py")


@pytest.mark.parametrize(("attempt", "said"), [(2, "after its last attempt"), (5, "now")])
def test_unanswerable_dead_letter_is_nacked_on_to_the_terminal_topic(
    counted_dead_letter_client: Any,
    completion: Completion,
    capsys: pytest.CaptureFixture[str],
    attempt: int,
    said: str,
) -> None:
    request = request_event(completion, {})
    message = to_binary(request)
    attributes = {k: v for k, v in message.attributes.items() if k != "ce-replyto"}
    lost = _dead_lettered(Message(message.data, attributes), "5")
    response = post_push(counted_dead_letter_client, lost, attempt=attempt, message_id="m-x")
    assert response.status_code == 400  # Pub/Sub counts it; after the 5th it moves it on
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["outcome"], line["attempt"], line["request_id"]) == (
        "undeliverable",
        attempt,
        request.id,
    )
    assert said in line["error"]["message"]
    completion.assert_empty(0.2)


def test_dead_letter_reply_topic_outside_the_allowed_ones_is_never_published_to(
    counted_dead_letter_client: Any,
    pubsub_clients: tuple[Any, Any],
    unique: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publisher, subscriber = pubsub_clients
    elsewhere = Completion(
        publisher.topic_path("relay-other", unique("stolen")),
        subscriber.subscription_path("relay-other", unique("stolen-pull")),
        subscriber,
    )
    publisher.create_topic(name=elsewhere.topic)
    subscriber.create_subscription(name=elsewhere.subscription, topic=elsewhere.topic)
    message = _dead_lettered(to_binary(request_event(elsewhere, {})), "5")
    response = post_push(counted_dead_letter_client, message, attempt=1)
    assert response.status_code == 400
    (line,) = log_lines(capsys.readouterr().out)
    assert line["outcome"] == "undeliverable"
    assert "may not publish to" in line["error"]["message"]
    elsewhere.assert_empty(0.5)


def test_dead_letter_publish_failing_on_the_last_attempt_is_logged_undeliverable(
    counted_dead_letter_client: Any, project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = Completion(f"projects/{project}/topics/never-created", "", None)
    message = _dead_lettered(to_binary(request_event(missing, {})), "5")
    first = post_push(counted_dead_letter_client, message, attempt=1)
    assert first.status_code == 500  # maybe transient: Pub/Sub retries
    assert [line["outcome"] for line in log_lines(capsys.readouterr().out)] == ["retry"]
    last = post_push(counted_dead_letter_client, message, attempt=5)
    assert last.status_code == 500
    outcomes = [line["outcome"] for line in log_lines(capsys.readouterr().out)]
    assert outcomes == ["retry", "undeliverable"]
