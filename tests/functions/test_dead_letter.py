"""The dead-letter function: every dead-lettered request becomes a failed, retryable result."""

from __future__ import annotations

from typing import Any

import pytest

from relay.functions import DELIVERY_COUNT_ATTRIBUTE
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


def test_unanswerable_dead_letter_is_logged_and_acked(
    dead_letter_client: Any, completion: Completion, capsys: pytest.CaptureFixture[str]
) -> None:
    message = to_binary(request_event(completion, {"secret": "kept in the log"}))
    attributes = {k: v for k, v in message.attributes.items() if k != "ce-replyto"}
    lost = _dead_lettered(Message(message.data, attributes), "5")
    assert post_push(dead_letter_client, lost, message_id="m-dead").status_code == 200
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["severity"], line["outcome"], line["message_id"]) == (
        "ERROR",
        "unanswerable",
        "m-dead",
    )
    assert line["attributes"][DELIVERY_COUNT_ATTRIBUTE] == "5"
    assert line["data_bytes"] == len(message.data)
    completion.assert_empty(0.2)
