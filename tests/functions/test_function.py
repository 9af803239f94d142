"""relay functions through functions-framework's test client; results pulled from relay broker."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.functions import Request
from relay.protocol import (
    RESULT_FAILED,
    RESULT_SUCCEEDED,
    ErrorInfo,
    Message,
    to_binary,
    to_structured,
)

from .conftest import APPS, EXAMPLES, Completion, log_lines, post_push, push_body, request_event

MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def _error(event: Any) -> ErrorInfo:
    assert event.type == RESULT_FAILED
    return ErrorInfo.from_event(event)


def test_success_publishes_result_then_acks(
    echo_client: Any, completion: Completion, capsys: pytest.CaptureFixture[str]
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    request = request_event(completion, {"text": "hé"}, traceparent=traceparent)
    response = post_push(echo_client, request, attempt=1)
    assert response.status_code == 200
    (result,) = completion.pull(1)
    assert result.type == RESULT_SUCCEEDED
    assert result.data == {"text": "hé"}
    assert (result.correlationid, result.causationid) == (request.correlationid, request.id)
    (line,) = log_lines(capsys.readouterr().out)
    assert line["severity"] == "INFO"
    assert line["outcome"] == "succeeded"
    assert line["correlationid"] == request.correlationid
    assert line["request_id"] == request.id
    assert line["type"] == "dev.relay.example.echo"
    assert line["attempt"] == 1
    assert line["message_id"] == "m-1"
    assert isinstance(line["duration_ms"], float)
    assert line["logging.googleapis.com/trace"] == (
        "projects/relay-test/traces/0af7651916cd43dd8448eb211c80319c"
    )
    assert line["logging.googleapis.com/spanId"] == "b7ad6b7169203331"


def _eventarc_binary(message: Message) -> tuple[bytes, dict[str, str]]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "evt-1",
        "ce-source": "//pubsub.googleapis.com/projects/relay-test/topics/requests",
        "ce-type": MESSAGE_PUBLISHED,
        "ce-time": "2026-01-01T00:00:00Z",
        "Content-Type": "application/json",
    }
    body = json.loads(push_body(message))
    return json.dumps(body).encode(), headers


def _eventarc_structured(message: Message) -> tuple[bytes, dict[str, str]]:
    envelope = {
        "specversion": "1.0",
        "id": "evt-2",
        "source": "//pubsub.googleapis.com/projects/relay-test/topics/requests",
        "type": MESSAGE_PUBLISHED,
        "datacontenttype": "application/json",
        "data": json.loads(push_body(message)),
    }
    return json.dumps(envelope).encode(), {"Content-Type": "application/cloudevents+json"}


def _push(message: Message) -> tuple[bytes, dict[str, str]]:
    return push_body(message), {"Content-Type": "application/json"}


def _no_wrapper(message: Message) -> tuple[bytes, dict[str, str]]:
    headers = dict(message.attributes)
    headers["x-goog-pubsub-message-id"] = "m-raw"
    headers["x-goog-pubsub-subscription-name"] = "projects/relay-test/subscriptions/raw"
    headers["x-goog-pubsub-publish-time"] = "2026-01-01T00:00:00Z"
    return message.data, headers


def _direct_binary(message: Message) -> tuple[bytes, dict[str, str]]:
    return message.data, dict(message.attributes)


ROUTES: dict[str, Callable[[Message], tuple[bytes, dict[str, str]]]] = {
    "eventarc-binary": _eventarc_binary,
    "eventarc-structured": _eventarc_structured,
    "push": _push,
    "no-wrapper": _no_wrapper,
    "direct-binary": _direct_binary,
}


CASES = [(route, "binary") for route in sorted(ROUTES)] + [
    (route, "structured") for route in ("eventarc-binary", "eventarc-structured", "push")
]


@pytest.mark.parametrize(("route", "mode"), CASES)
def test_every_route_and_mode(
    echo_client: Any, completion: Completion, route: str, mode: str
) -> None:
    request = request_event(completion, {"route": route, "mode": mode})
    message = to_binary(request) if mode == "binary" else to_structured(request)
    body, headers = ROUTES[route](message)
    response = echo_client.post("/", data=body, headers=headers)
    assert response.status_code == 200, response.data
    (result,) = completion.pull(1)
    assert (result.type, result.data) == (RESULT_SUCCEEDED, {"route": route, "mode": mode})
    assert result.correlationid == request.correlationid


@pytest.mark.parametrize(
    "content_type", ["application/cloudevents+json", "application/octet-stream"]
)
def test_structured_body_without_wrapper(
    echo_client: Any, completion: Completion, content_type: str
) -> None:
    """Direct structured HTTP CloudEvent, and a no_wrapper push of a structured message."""
    request = request_event(completion, {"structured": True})
    response = echo_client.post(
        "/", data=to_structured(request).data, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.data
    (result,) = completion.pull(1)
    assert result.data == {"structured": True}


def test_non_retryable_failure_is_acked(echo_client: Any, completion: Completion) -> None:
    request = request_event(completion, {"fail": "bad input"})
    assert post_push(echo_client, request, attempt=2).status_code == 200
    (result,) = completion.pull(1)
    error = _error(result)
    assert (error.type, error.message, error.retryable, error.attempt) == (
        "EchoFailure",
        "bad input",
        False,
        2,
    )
    assert result.correlationid == request.correlationid


def test_retryable_error_answers_5xx_until_it_succeeds(
    echo_client: Any, completion: Completion, capsys: pytest.CaptureFixture[str]
) -> None:
    request = request_event(completion, {"crash": 2})
    assert post_push(echo_client, request, attempt=1).status_code == 500
    assert post_push(echo_client, request, attempt=2).status_code == 500
    completion.assert_empty()
    assert post_push(echo_client, request, attempt=3).status_code == 200
    (result,) = completion.pull(1)
    assert (result.type, result.data) == (RESULT_SUCCEEDED, {"crash": 2})
    lines = log_lines(capsys.readouterr().out)
    assert [line["outcome"] for line in lines] == ["retry", "retry", "succeeded"]
    assert lines[0]["severity"] == "ERROR"
    assert "Crash" in lines[0]["stack_trace"]
    assert lines[0]["error"]["type"] == "Crash"


def test_expired_request_is_failed_without_running(
    echo_client: Any, completion: Completion
) -> None:
    request = request_event(
        completion, {"crash": 99}, expiry=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert post_push(echo_client, request).status_code == 200
    (result,) = completion.pull(1)
    error = _error(result)
    assert (error.type, error.retryable) == ("Expired", False)


def test_deadline_in_the_future_runs(make_client: Any, completion: Completion) -> None:
    client = make_client("view", APPS / "kinds.py")
    expiry = datetime.now(UTC) + timedelta(minutes=5)
    request = request_event(completion, {"a": 1}, expiry=expiry, type="dev.relay.test.view")
    assert post_push(client, request, attempt=4, message_id="m-42").status_code == 200
    (result,) = completion.pull(1)
    seen = result.data
    assert seen["attempt"] == 4
    assert seen["message_id"] == "m-42"
    assert seen["subscription"] == "projects/relay-test/subscriptions/fn"
    assert abs(datetime.fromisoformat(seen["deadline"]) - expiry) < timedelta(milliseconds=1)
    assert (seen["id"], seen["correlation_id"], seen["reply_to"]) == (
        request.id,
        request.correlationid,
        completion.topic,
    )
    assert "ce-replyto" in seen["attributes"]


def test_duplicate_delivery_runs_again_with_the_same_result_id(
    echo_client: Any, completion: Completion
) -> None:
    request = request_event(completion, {"dup": 1})
    assert post_push(echo_client, request).status_code == 200
    assert post_push(echo_client, request).status_code == 200
    first, second = completion.pull(2)
    assert first.correlationid == second.correlationid == request.correlationid
    assert first.id == second.id  # receivers keep the first, deduplicating on (source, id)


def test_idempotency_store_answers_duplicates_without_rerunning(
    make_client: Any, completion: Completion
) -> None:
    client = make_client("idempotent", APPS / "kinds.py")
    request = request_event(completion, {"crash": True}, type="dev.relay.test.idem")
    assert post_push(client, request, attempt=1).status_code == 500  # retryable: not stored
    assert post_push(client, request, attempt=2).status_code == 200
    assert post_push(client, request, attempt=3).status_code == 200
    first, second = completion.pull(2)
    assert first == second
    assert first.data["runs"] == 2  # crashed once, succeeded once, never ran for the duplicate


def test_async_handler(make_client: Any, completion: Completion) -> None:
    client = make_client("async_echo", APPS / "kinds.py")
    ok = request_event(completion, {"n": 1}, type="dev.relay.test.async")
    bad = request_event(completion, {"fail": True}, type="dev.relay.test.async")
    assert post_push(client, ok).status_code == 200
    assert post_push(client, bad).status_code == 200
    results = {event.correlationid: event for event in completion.pull(2)}
    assert results[ok.correlationid].data == {"async": True, "data": {"n": 1}}
    assert _error(results[bad.correlationid]).message == "async says no"


@pytest.mark.parametrize(
    ("target", "error_type"), [("unserialisable", "ResultEncodingError"), ("huge", "LimitError")]
)
def test_result_that_cannot_travel_fails(
    make_client: Any,
    completion: Completion,
    target: str,
    error_type: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = make_client(target, APPS / "kinds.py")
    request = request_event(completion, {}, type="dev.relay.test.result")
    assert post_push(client, request).status_code == 200
    (result,) = completion.pull(1)
    error = _error(result)
    assert (error.type, error.retryable) == (error_type, False)
    (line,) = log_lines(capsys.readouterr().out)
    assert (line["outcome"], line["error"]["type"]) == ("failed", error_type)


def test_large_result_is_offloaded_to_the_blob_store(
    make_client: Any, completion: Completion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_BLOB_DIR", str(tmp_path))
    client = make_client("offloading", APPS / "kinds.py")
    request = request_event(completion, {}, type="dev.relay.test.result")
    assert post_push(client, request).status_code == 200
    (result,) = completion.pull(1)
    assert result.type == RESULT_SUCCEEDED
    assert result.dataref is not None
    assert result.dataref.startswith("file://")
    assert result.data == "y" * 2_000_000


def test_decorated_function_accepts_a_cloud_event(completion: Completion) -> None:
    """Called directly (no Flask request), the function takes a cloudevents CloudEvent."""
    from cloudevents.http import CloudEvent

    from relay.functions import RelayDeliveryError

    spec = importlib.util.spec_from_file_location("echo_direct", EXAMPLES / "echo" / "main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    request = request_event(completion, {"direct": True})
    attributes = {
        "id": request.id,
        "source": request.source,
        "type": request.type,
        "correlationid": request.correlationid,
        "replyto": request.replyto,
    }
    assert module.echo(CloudEvent(attributes, {"direct": True})) is None
    (result,) = completion.pull(1)
    assert result.data == {"direct": True}
    with pytest.raises(RelayDeliveryError):  # retryable: functions-framework answers 500
        module.echo(CloudEvent({**attributes, "id": "crash-1"}, {"crash": 5}))
    completion.assert_empty()


def test_request_type_is_frozen() -> None:
    assert Request.__dataclass_params__.frozen  # type: ignore[attr-defined]
