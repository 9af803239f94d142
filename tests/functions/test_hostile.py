"""Malformed and hostile deliveries: never a crash; answered (failed result) when possible,
otherwise a non-2xx so Pub/Sub keeps the message and it ends dead-lettered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.protocol import RESULT_FAILED, ErrorInfo, Message, to_binary

from .conftest import Completion, log_lines, post_push, request_event


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
