"""Building requests and results: how a request and the events answering it correlate."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.protocol._attributes import check_topic_path
from relay.protocol._errors import DecodeError, InvalidAttributeError
from relay.protocol._event import RESULT_FAILED, RESULT_SUCCEEDED, Event, format_expiry

# Namespace of the deterministic result ids (uuid5), so a redelivered request answered twice
# produces the same result id and consumers can deduplicate on (source, id).
_RESULT_NAMESPACE = uuid.UUID("5b0c1d2e-8f3a-4c6b-9d7e-2a1f0e3c4b5d")


def new_request(
    type: str,
    data: Any,
    *,
    source: str,
    reply_to: str,
    correlation_id: str | None = None,
    id: str | None = None,
    expiry: datetime | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    time: datetime | None = None,
    subject: str | None = None,
    datacontenttype: str = "application/json",
    extensions: Mapping[str, str] | None = None,
) -> Event:
    """A request event: fresh uuid4 id (keep the Event to retry a publish with the same id),
    correlationid defaulting to the id, replyto the full topic path results go to."""
    event_id = id if id is not None else str(uuid.uuid4())
    ext: dict[str, str] = dict(extensions or {})
    ext["correlationid"] = correlation_id if correlation_id is not None else event_id
    ext["replyto"] = check_topic_path("replyto", reply_to)
    if expiry is not None:
        ext["expirytime"] = format_expiry(expiry)
    if traceparent is not None:
        ext["traceparent"] = traceparent
    if tracestate is not None:
        ext["tracestate"] = tracestate
    return Event(
        id=event_id,
        source=source,
        type=type,
        data=data,
        datacontenttype=datacontenttype,
        time=time if time is not None else datetime.now(UTC),
        subject=subject,
        extensions=ext,
    )


def _result(
    request: Event, result_type: str, data: Any, source: str, key: str, datacontenttype: str
) -> Event:
    if not isinstance(request, Event):
        raise InvalidAttributeError(
            f"request must be an Event, got {type(request).__name__}", field="request"
        )
    ext = {
        "correlationid": request.correlationid or request.id,
        "causationid": request.id,
    }
    for name in ("traceparent", "tracestate"):
        value = request.extensions.get(name)
        if value is not None:
            ext[name] = value
    result_id = uuid.uuid5(
        _RESULT_NAMESPACE, f"{request.source}\n{request.id}\n{result_type}\n{key}"
    )
    return Event(
        id=str(result_id),
        source=source,
        type=result_type,
        data=data,
        datacontenttype=datacontenttype,
        time=datetime.now(UTC),
        subject=request.type,
        extensions=ext,
    )


def succeeded(
    request: Event, data: Any, *, source: str, datacontenttype: str = "application/json"
) -> Event:
    """The success result of `request` (dev.relay.result.succeeded), data as returned."""
    return _result(request, RESULT_SUCCEEDED, data, source, "", datacontenttype)


def failed(
    request: Event,
    *,
    error_type: str,
    message: str,
    retryable: bool,
    attempt: int,
    source: str,
) -> Event:
    """The failure result of `request` (dev.relay.result.failed), the error envelope as data."""
    info = ErrorInfo(error_type, message, retryable, attempt)
    return _result(request, RESULT_FAILED, info.to_data(), source, str(attempt), "application/json")


@dataclass(frozen=True)
class ErrorInfo:
    """The error of a failed result: `{"error": {"type", "message", "retryable", "attempt"}}`.

    `attempt` is the 1-based delivery attempt that failed (0 when unknown).
    """

    type: str
    message: str
    retryable: bool
    attempt: int

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise InvalidAttributeError("error type must be a non-empty string", field="error.type")
        if not isinstance(self.message, str):
            raise InvalidAttributeError("error message must be a string", field="error.message")
        if not isinstance(self.retryable, bool):
            raise InvalidAttributeError("error retryable must be a bool", field="error.retryable")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 0:
            raise InvalidAttributeError(
                "error attempt must be an integer >= 0", field="error.attempt"
            )

    def to_data(self) -> dict[str, Any]:
        """The failed result's data."""
        return {
            "error": {
                "type": self.type,
                "message": self.message,
                "retryable": self.retryable,
                "attempt": self.attempt,
            }
        }

    @classmethod
    def from_event(cls, event: Event) -> ErrorInfo:
        """Parse the error of a failed result.

        InvalidAttributeError if `event` is not a failed result, DecodeError if its data is bad.
        """
        if event.type != RESULT_FAILED:
            raise InvalidAttributeError(
                f"not a failed result: type is {event.type!r}", field="type", event=event
            )
        data = event.data
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            raise DecodeError(
                "failed result data must be {'error': {...}}", field="data", event=event
            )
        try:
            values: dict[str, Any] = {
                k: error.get(k) for k in ("type", "message", "retryable", "attempt")
            }
            return cls(**values)
        except InvalidAttributeError as exc:
            raise DecodeError(
                f"malformed failed result: {exc.message}", field=exc.field, event=event
            ) from None
