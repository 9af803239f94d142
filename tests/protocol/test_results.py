"""Requests and results: correlation, causation, ids, the error envelope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.protocol import (
    PROGRESS,
    RESULT_FAILED,
    RESULT_SUCCEEDED,
    DecodeError,
    ErrorInfo,
    Event,
    InvalidAttributeError,
    default_registry,
    failed,
    from_message,
    new_request,
    succeeded,
    to_binary,
)

REPLY_TO = "projects/relay-test/topics/results"


def request(**kwargs: object) -> Event:
    return new_request(
        "dev.relay.example.echo",
        {"x": 1},
        source="//airflow/dags/d/tasks/t",
        reply_to=REPLY_TO,
        **kwargs,  # type: ignore[arg-type]
    )


def test_constants() -> None:
    assert RESULT_SUCCEEDED == "dev.relay.result.succeeded"
    assert RESULT_FAILED == "dev.relay.result.failed"
    assert PROGRESS == "dev.relay.progress"


def test_new_request_defaults() -> None:
    before = datetime.now(UTC)
    event = request()
    assert event.type == "dev.relay.example.echo"
    assert event.source == "//airflow/dags/d/tasks/t"
    assert event.data == {"x": 1}
    assert event.correlationid == event.id
    assert event.replyto == REPLY_TO
    assert event.time is not None
    assert before <= event.time <= datetime.now(UTC)
    assert event.expirytime is None
    assert event.traceparent is None
    assert len({request().id for _ in range(50)}) == 50


def test_new_request_options() -> None:
    expiry = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(microseconds=5)
    time = datetime(2029, 1, 1, tzinfo=UTC)
    event = request(
        correlation_id="corr",
        id="fixed",
        expiry=expiry,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate="vendor=1",
        time=time,
    )
    assert (event.id, event.correlationid, event.time) == ("fixed", "corr", time)
    assert event.expirytime == expiry
    assert event.extensions["expirytime"] == "2030-01-01T00:00:00.000005Z"
    assert event.tracestate == "vendor=1"
    assert from_message(*to_binary(event)) == event


@pytest.mark.parametrize(
    "reply_to", ["results", "projects/relay-test/topics/", "projects//topics/results", ""]
)
def test_new_request_rejects_bad_reply_to(reply_to: str) -> None:
    with pytest.raises(InvalidAttributeError) as info:
        new_request("t", None, source="s", reply_to=reply_to)
    assert info.value.field == "replyto"


def test_new_request_rejects_naive_expiry() -> None:
    with pytest.raises(InvalidAttributeError) as info:
        request(expiry=datetime(2030, 1, 1))
    assert info.value.field == "expirytime"


def test_succeeded_correlates() -> None:
    req = request(correlation_id="corr", traceparent="00-abc")
    result = succeeded(req, {"answer": 42}, source="//functions/echo")
    assert result.type == RESULT_SUCCEEDED
    assert result.data == {"answer": 42}
    assert result.source == "//functions/echo"
    assert result.correlationid == "corr"
    assert result.causationid == req.id
    assert result.subject == req.type
    assert result.traceparent == "00-abc"
    assert result.replyto is None
    assert result.time is not None
    assert from_message(*to_binary(result), registry=default_registry()) == result


def test_result_ids_are_deterministic_per_outcome() -> None:
    req = request()
    assert succeeded(req, 1, source="f").id == succeeded(req, 2, source="f").id
    assert succeeded(req, 1, source="f").id != succeeded(request(), 1, source="f").id
    one = failed(req, error_type="E", message="m", retryable=True, attempt=1, source="f")
    two = failed(req, error_type="E", message="m", retryable=True, attempt=2, source="f")
    assert one.id != two.id != succeeded(req, 1, source="f").id


def test_result_without_correlationid_uses_the_request_id() -> None:
    req = Event("r1", "s", "t")
    assert succeeded(req, None, source="f").correlationid == "r1"


def test_failed_envelope_and_error_info() -> None:
    req = request()
    result = failed(
        req, error_type="ValueError", message="bad input", retryable=False, attempt=3, source="f"
    )
    assert result.type == RESULT_FAILED
    assert result.data == {
        "error": {"type": "ValueError", "message": "bad input", "retryable": False, "attempt": 3}
    }
    assert result.correlationid == req.correlationid
    assert result.causationid == req.id
    decoded = from_message(*to_binary(result), registry=default_registry())
    info = ErrorInfo.from_event(decoded)
    assert info == ErrorInfo("ValueError", "bad input", False, 3)
    assert info.to_data() == result.data


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"error_type": ""}, "error.type"),
        ({"message": None}, "error.message"),
        ({"retryable": "yes"}, "error.retryable"),
        ({"attempt": -1}, "error.attempt"),
        ({"attempt": True}, "error.attempt"),
    ],
)
def test_failed_rejects_bad_fields(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "error_type": "E",
        "message": "m",
        "retryable": True,
        "attempt": 1,
        "source": "f",
    }
    args.update(kwargs)
    with pytest.raises(InvalidAttributeError) as info:
        failed(request(), **args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_error_info_from_other_events() -> None:
    with pytest.raises(InvalidAttributeError) as info:
        ErrorInfo.from_event(succeeded(request(), 1, source="f"))
    assert info.value.field == "type"
    bad = Event("1", "f", RESULT_FAILED, data={"error": {"type": "E", "message": "m"}})
    with pytest.raises(DecodeError) as decode:
        ErrorInfo.from_event(bad)
    assert decode.value.field == "error.retryable"
    with pytest.raises(DecodeError):
        ErrorInfo.from_event(Event("1", "f", RESULT_FAILED, data=[1]))


def test_results_need_an_event() -> None:
    with pytest.raises(InvalidAttributeError):
        succeeded({"id": "x"}, 1, source="f")  # type: ignore[arg-type]
