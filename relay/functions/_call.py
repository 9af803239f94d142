"""`Call`: one delivery being served, carrying what every stage needs to answer, retry or log it.

Outcomes and the HTTP status that tells Pub/Sub what to do:
  succeeded / failed (non-retryable) / expired / duplicate / dead-lettered -> result published,
  then 200 (ack); retry (handler raised, or the result could not be published) -> 500 (redeliver
  with backoff); unanswerable (no envelope, no replyto or correlation id, a reply topic the function
  may not publish to) -> 400 (kept, ends dead-lettered).
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.functions._envelope import Delivery
from relay.functions._errors import Unanswerable
from relay.functions._logging import emit, trace_fields
from relay.protocol import Event, Message, failed, to_binary, topic_matches

if TYPE_CHECKING:
    from relay.functions._runtime import Runtime

_SEVERITY = {
    "succeeded": "INFO",
    "duplicate": "INFO",
    "failed": "WARNING",
    "expired": "WARNING",
    "dead-lettered": "WARNING",
    "retry": "ERROR",
    "unanswerable": "ERROR",
    "undeliverable": "ERROR",
    "unauthorized": "WARNING",
    "forbidden": "WARNING",
}
_STATUS = {
    "succeeded": 200,
    "duplicate": 200,
    "failed": 200,
    "expired": 200,
    "dead-lettered": 200,
}
_MAX_TRACE_BYTES = 512  # W3C: traceparent is 55 characters, tracestate at most 512
_MAX_ERROR_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer the HTTP request with."""

    status: int
    body: bytes
    content_type: str = "application/json"


def response(
    status: int, outcome: str, *, event: Event | None = None, error: str | None = None
) -> Response:
    """The JSON body relay answers with: outcome, the request's ids and the error if any."""
    body: dict[str, Any] = {"outcome": outcome}
    if event is not None:
        body["id"] = event.id
        body["correlationid"] = event.correlationid
    if error is not None:
        body["error"] = error
    return Response(status, json.dumps(body, separators=(",", ":")).encode("utf-8"))


@dataclass(slots=True)
class Call:
    """One delivery through a pipeline: the runtime's settings, the delivery, when it started and,
    once decoded, the request event and its delivery attempt."""

    runtime: Runtime
    delivery: Delivery | None
    started: float
    http_traceparent: str | None = None
    event: Event | None = None

    @property
    def attempt(self) -> int:
        """The delivery attempt (1 when Pub/Sub does not count them: no dead-letter policy)."""
        if self.delivery is None or self.delivery.delivery_attempt is None:
            return 1
        return self.delivery.delivery_attempt

    @property
    def trace(self) -> str | None:
        """The W3C traceparent: the request's own, else the HTTP request's."""
        own = self.event.traceparent if self.event is not None else None
        return own or self.http_traceparent

    def check_reply(self, event: Event) -> None:
        """Unanswerable unless a result may be sent for `event`: a replyto the function may
        publish to and a correlationid. `event` is kept as this call's request (for the log)."""
        self.event = event
        message_id = self.delivery.message_id if self.delivery is not None else None
        if not event.replyto or not event.correlationid:
            missing = "replyto" if not event.replyto else "correlationid"
            raise Unanswerable(
                f"request {event.id!r} has no {missing}: nowhere to send the result",
                message_id=message_id,
            )
        allowed = self.runtime.reply_topics
        if not any(topic_matches(event.replyto, pattern) for pattern in allowed):
            from relay.functions._settings import REPLY_TOPICS_ENV

            listed = ", ".join(allowed) or f"none are configured ({REPLY_TOPICS_ENV})"
            raise Unanswerable(
                f"request {event.id!r} asks for results on {event.replyto!r}, which this "
                f"function may not publish to (allowed: {listed}); nothing was run or published",
                message_id=message_id,
            )

    def answerable(self, event: Event) -> Event:
        """`event`, checked (`check_reply`) and kept as this call's request."""
        self.check_reply(event)
        return self.request(event)

    def request(self, event: Event) -> Event:
        """Keep `event`, whose reply was checked, as this call's request, minus trace
        attributes too large for a result to copy."""
        extensions = event.extensions
        oversized = {
            name: None
            for name in ("traceparent", "tracestate")
            if len(extensions.get(name, "")) * 4 > _MAX_TRACE_BYTES  # UTF-8: at most 4 per char
            and len(extensions[name].encode("utf-8")) > _MAX_TRACE_BYTES
        }
        self.event = event.with_extensions(**oversized) if oversized else event
        return self.event

    def failed(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool = False,
        attempt: int | None = None,
    ) -> Event:
        """A failed result for this call's request (after `attempt`, default this call's)."""
        assert self.event is not None
        return failed(
            self.event,
            error_type=error_type,
            message=message[:_MAX_ERROR_MESSAGE],
            retryable=retryable,
            attempt=self.attempt if attempt is None else attempt,
            source=self.runtime.source,
        )

    @property
    def last_attempt(self) -> bool:
        """Whether Pub/Sub dead-letters this message if this delivery is not acked."""
        most = self.runtime.max_delivery_attempts
        counted = self.delivery is not None and self.delivery.delivery_attempt is not None
        return counted and most is not None and self.attempt >= most

    def answer(self, outcome: str, result: Event, error: tuple[str, str] | None = None) -> Response:
        """Encode `result` (offloading large data to the blob store) and publish it."""
        try:
            message = to_binary(result, blob_store=self.runtime.blob_stores.writer)
        except Exception as exc:
            return self.retry(exc)
        return self.publish(outcome, message, error)

    def publish(
        self, outcome: str, message: Message, error: tuple[str, str] | None = None
    ) -> Response:
        """Publish the result to the request's replyto, log `outcome` and answer its status."""
        assert self.event is not None
        assert self.event.replyto is not None
        try:
            self.runtime.publisher.publish(
                self.event.replyto, message, self.runtime.publish_timeout
            )
        except Exception as exc:
            return self.retry(exc, stage="publish")
        self.log(outcome, error=error)
        return response(_STATUS[outcome], outcome, event=self.event)

    def retry(self, exc: BaseException, *, stage: str = "handler") -> Response:
        """Log the error with its stack and answer 500: Pub/Sub redelivers with backoff."""
        self.log(
            "retry",
            error=(type(exc).__name__, f"{stage}: {exc}"),
            stack="".join(traceback.format_exception(exc)),
        )
        return response(500, "retry", event=self.event, error=f"{type(exc).__name__}: {exc}")

    def unanswerable(self, exc: Unanswerable) -> Response:
        """Log why no result can be sent and answer 400: Pub/Sub keeps it, then dead-letters it."""
        self.log("unanswerable", error=("Unanswerable", exc.reason), message_id=exc.message_id)
        return response(400, "unanswerable", event=self.event, error=exc.reason)

    def log(
        self,
        outcome: str,
        *,
        error: tuple[str, str] | None = None,
        stack: str | None = None,
        message_id: str | None = None,
        **extra: Any,
    ) -> None:
        """One structured log line for this call."""
        event, delivery = self.event, self.delivery
        what = event.type if event is not None else "request"
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(outcome, "INFO"),
            "message": f"{self.runtime.name}: {what} {outcome}"
            + (f": {error[0]}: {error[1]}" if error else ""),
            "function": self.runtime.name,
            "outcome": outcome,
            "correlationid": event.correlationid if event is not None else None,
            "request_id": event.id if event is not None else None,
            "type": event.type if event is not None else None,
            "attempt": self.attempt if event is not None else None,
            "message_id": message_id or (delivery.message_id if delivery is not None else None),
            "route": delivery.route if delivery is not None else None,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        if error is not None:
            entry["error"] = {"type": error[0], "message": error[1]}
        if stack is not None:
            entry["stack_trace"] = stack
        entry.update(extra)
        entry.update(trace_fields(self.trace, event.replyto if event is not None else None))
        emit(entry)
