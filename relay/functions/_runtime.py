"""The request pipeline behind every relay function: unwrap, authenticate, decode, run, answer.

Outcomes and the HTTP status that tells Pub/Sub what to do:
  succeeded / failed (non-retryable) / expired / duplicate -> result published, then 200 (ack);
  retry (handler raised, or the result could not be published) -> 500 (redeliver with backoff);
  unanswerable (no envelope, no replyto or correlation id) -> 400 (kept, ends dead-lettered);
  unauthorized / forbidden (push token) -> 401 / 403, the handler never runs.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from relay.functions._auth import PushAuth
from relay.functions._envelope import Delivery, from_http
from relay.functions._errors import NonRetryableError, PushAuthError, Unanswerable
from relay.functions._idempotency import IdempotencyStore
from relay.functions._logging import emit, trace_fields
from relay.functions._publisher import ResultPublisher, default_publisher
from relay.functions._request import Request
from relay.protocol import (
    CORRELATION_ID_ATTRIBUTE,
    REPLY_TO_ATTRIBUTE,
    RESULT_SUCCEEDED,
    BlobStore,
    DataRefError,
    Event,
    Message,
    ProtocolError,
    SchemaRegistry,
    failed,
    from_message,
    succeeded,
    to_binary,
)
from relay.protocol import (
    default_registry as _default_registry,
)

MAX_BODY_BYTES = 16 * 1024 * 1024  # a Pub/Sub message is at most 10 MB, base64 adds a third
_MAX_TRACE_BYTES = 512  # W3C: traceparent is 55 characters, tracestate at most 512
_SEVERITY = {
    "succeeded": "INFO",
    "duplicate": "INFO",
    "failed": "WARNING",
    "expired": "WARNING",
    "dead-lettered": "WARNING",
    "retry": "ERROR",
    "unanswerable": "ERROR",
    "unauthorized": "WARNING",
    "forbidden": "WARNING",
}
_STATUS = {
    "succeeded": 200,
    "duplicate": 200,
    "failed": 200,
    "expired": 200,
    "dead-lettered": 200,
    "retry": 500,
    "unanswerable": 400,
}


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer the HTTP request with."""

    status: int
    body: bytes
    content_type: str = "application/json"


class _AsyncRunner:
    """One event loop in a daemon thread per process: async handlers run there, callers block.
    asyncio is imported on the first async handler call (it costs cold-start time otherwise)."""

    def __init__(self) -> None:
        self._loop: Any = None
        self._lock = threading.Lock()

    def run(self, coroutine: Any) -> Any:
        import asyncio

        if self._loop is None:
            with self._lock:
                if self._loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(
                        target=loop.run_forever, name="relay-async-handlers", daemon=True
                    ).start()
                    self._loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


_async_runner = _AsyncRunner()


class Runtime:
    """Everything one relay function needs at run time; built once by the decorator."""

    def __init__(
        self,
        handler: Callable[[Request], Any],
        *,
        name: str,
        source: str,
        registry: SchemaRegistry | None,
        blob_store: BlobStore | None,
        publisher: ResultPublisher | None,
        idempotency: IdempotencyStore | None,
        publish_timeout: float,
        auth: PushAuth | None,
        use_default_registry: bool,
    ) -> None:
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.name = name
        self.source = source
        self._registry = registry
        self._use_default_registry = use_default_registry
        self.blob_store = blob_store
        self._publisher = publisher
        self.idempotency = idempotency
        self.publish_timeout = publish_timeout
        self.auth = auth

    @property
    def registry(self) -> SchemaRegistry | None:
        """The schema registry (relay's default one is loaded on first use, not at import)."""
        if self._registry is None and self._use_default_registry:
            self._registry = _default_registry()
        return self._registry

    @property
    def publisher(self) -> ResultPublisher:
        """The result publisher (the instance-wide PubSubPublisher unless one was given)."""
        if self._publisher is None:
            self._publisher = default_publisher()
        return self._publisher

    # ------------------------------------------------------------------------------- entry points

    def handle_http(self, headers: Mapping[str, str], body: bytes) -> Response:
        """Serve one HTTP request; `headers` case-insensitive or with lower-case keys."""
        started = time.perf_counter()
        if self.auth is not None:
            try:
                self.auth.verify(headers.get("authorization"))
            except PushAuthError as exc:
                outcome = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "unauthorized")
                self._log(outcome, started, None, None, error=("PushAuthError", exc.reason))
                return _response(exc.status, outcome, error=exc.reason)
        if len(body) > MAX_BODY_BYTES:
            reason = f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}"
            self._log("unanswerable", started, None, None, error=("Unanswerable", reason))
            return _response(413, "unanswerable", error=reason)
        try:
            delivery = from_http(headers, body)
        except Unanswerable as exc:
            return self.unanswerable(exc, started, None)
        return self.handle_delivery(
            delivery, started=started, http_traceparent=headers.get("traceparent")
        )

    def handle_delivery(
        self,
        delivery: Delivery,
        *,
        started: float | None = None,
        http_traceparent: str | None = None,
    ) -> Response:
        """Decode the request in `delivery`, run the handler and publish the result."""
        started = time.perf_counter() if started is None else started
        attempt = delivery.delivery_attempt or 1
        try:
            event, problem = self._decode(delivery)
        except Unanswerable as exc:
            return self.unanswerable(exc, started, delivery)
        except DataRefError as exc:  # the blob may be readable later: let Pub/Sub retry
            return self._retry(exc, started, delivery, exc.event, attempt)
        trace = event.traceparent or http_traceparent
        if problem is not None:
            result = self._failed(event, type(problem).__name__, str(problem), attempt)
            return self._answer(
                "failed",
                result,
                started,
                delivery,
                event,
                attempt,
                trace,
                error=(type(problem).__name__, str(problem)),
            )
        expiry = event.expirytime
        if expiry is not None and expiry <= datetime.now(UTC):
            reason = f"request expired at {expiry.isoformat()}"
            result = self._failed(event, "Expired", reason, attempt)
            return self._answer(
                "expired",
                result,
                started,
                delivery,
                event,
                attempt,
                trace,
                error=("Expired", reason),
            )
        store, key = self.idempotency, f"{event.source}\n{event.id}"
        if store is not None:
            try:
                stored = store.get(key)
            except Exception as exc:
                return self._retry(exc, started, delivery, event, attempt)
            if stored is not None:
                return self._publish("duplicate", stored, started, delivery, event, attempt, trace)
        outcome, answer, error = self._run(event, delivery, attempt, expiry)
        if answer is None:  # retryable handler error
            assert error is not None
            return self._retry_logged(error, started, delivery, event, attempt, trace)
        try:
            message, encode_error = self._encode(answer, event, attempt)
            if encode_error is not None:
                outcome, error = "failed", encode_error
            if store is not None:
                message = store.put_if_absent(key, message)
        except Exception as exc:
            return self._retry(exc, started, delivery, event, attempt)
        err = None
        if error is not None:
            err = (
                type(error).__name__
                if not isinstance(error, NonRetryableError)
                else error.error_type,
                str(error),
            )
        return self._publish(outcome, message, started, delivery, event, attempt, trace, error=err)

    # ------------------------------------------------------------------------------------ stages

    def _decode(self, delivery: Delivery) -> tuple[Event, ProtocolError | None]:
        """The request event, plus the decode problem that makes it fail (answerable) if any."""
        data, attributes = delivery.message
        problem: ProtocolError | None = None
        try:
            event = from_message(
                data, attributes, registry=self.registry, blob_store=self.blob_store
            )
        except DataRefError:
            raise
        except ProtocolError as exc:
            problem = exc
            salvaged = exc.event if exc.event is not None else _salvage(attributes, delivery)
            if salvaged is None:
                raise Unanswerable(
                    f"cannot decode the request envelope: {exc}", message_id=delivery.message_id
                ) from None
            event = salvaged
        return answerable(event, delivery.message_id), problem

    def _run(
        self, event: Event, delivery: Delivery, attempt: int, deadline: datetime | None
    ) -> tuple[str, Event | None, BaseException | None]:
        """Run the handler: (outcome, result event or None to retry, error)."""
        assert event.replyto is not None
        assert event.correlationid is not None
        request = Request(
            data=event.data,
            type=event.type,
            id=event.id,
            correlation_id=event.correlationid,
            reply_to=event.replyto,
            attributes=MappingProxyType(delivery.message.attributes),
            delivery_attempt=attempt,
            deadline=deadline,
            event=event,
            message_id=delivery.message_id,
            subscription=delivery.subscription,
        )
        try:
            if self.is_async:
                value = _async_runner.run(self.handler(request))
            else:
                value = self.handler(request)
                if inspect.isawaitable(value):
                    value = _async_runner.run(value)
        except NonRetryableError as exc:
            return "failed", self._failed(event, exc.error_type, exc.message, attempt), exc
        except Exception as exc:
            return "retry", None, exc
        try:
            return "succeeded", succeeded(event, value, source=self.source), None
        except (ProtocolError, TypeError, ValueError) as exc:
            problem = NonRetryableError(
                f"handler result cannot be sent: {exc}", error_type="ResultEncodingError"
            )
            return (
                "failed",
                self._failed(event, problem.error_type, problem.message, attempt),
                problem,
            )

    def _encode(
        self, result: Event, request: Event, attempt: int
    ) -> tuple[Message, NonRetryableError | None]:
        """Binary-mode result message; a succeeded result that cannot travel (too large without
        a blob store) becomes a failed one: (message, the error that made it fail)."""
        try:
            return to_binary(result, blob_store=self.blob_store), None
        except ProtocolError as exc:
            if result.type != RESULT_SUCCEEDED:
                raise
            problem = NonRetryableError(
                f"result cannot be sent: {exc}", error_type=type(exc).__name__
            )
            fallback = self._failed(request, problem.error_type, problem.message, attempt)
            return to_binary(fallback), problem

    def _failed(self, event: Event, error_type: str, message: str, attempt: int) -> Event:
        return failed(
            event,
            error_type=error_type,
            message=message[:1000],
            retryable=False,
            attempt=attempt,
            source=self.source,
        )

    # --------------------------------------------------------------------------------- answers

    def _answer(
        self,
        outcome: str,
        result: Event,
        started: float,
        delivery: Delivery,
        event: Event,
        attempt: int,
        trace: str | None,
        *,
        error: tuple[str, str] | None = None,
    ) -> Response:
        try:
            message = to_binary(result, blob_store=self.blob_store)
        except Exception as exc:
            return self._retry(exc, started, delivery, event, attempt)
        return self._publish(
            outcome, message, started, delivery, event, attempt, trace, error=error
        )

    def _publish(
        self,
        outcome: str,
        message: Message,
        started: float,
        delivery: Delivery,
        event: Event,
        attempt: int,
        trace: str | None,
        *,
        error: tuple[str, str] | None = None,
    ) -> Response:
        assert event.replyto is not None
        try:
            self.publisher.publish(event.replyto, message, self.publish_timeout)
        except Exception as exc:
            return self._retry(exc, started, delivery, event, attempt, stage="publish")
        self._log(outcome, started, delivery, event, attempt=attempt, trace=trace, error=error)
        return _response(_STATUS[outcome], outcome, event=event)

    def _retry(
        self,
        exc: BaseException,
        started: float,
        delivery: Delivery,
        event: Event | None,
        attempt: int,
        *,
        stage: str = "handler",
    ) -> Response:
        trace = event.traceparent if event is not None else None
        return self._retry_logged(exc, started, delivery, event, attempt, trace, stage=stage)

    def _retry_logged(
        self,
        exc: BaseException,
        started: float,
        delivery: Delivery,
        event: Event | None,
        attempt: int,
        trace: str | None,
        *,
        stage: str = "handler",
    ) -> Response:
        self._log(
            "retry",
            started,
            delivery,
            event,
            attempt=attempt,
            trace=trace,
            error=(type(exc).__name__, f"{stage}: {exc}"),
            stack="".join(traceback.format_exception(exc)),
        )
        return _response(500, "retry", event=event, error=f"{type(exc).__name__}: {exc}")

    def unanswerable(
        self, exc: Unanswerable, started: float, delivery: Delivery | None
    ) -> Response:
        self._log(
            "unanswerable",
            started,
            delivery,
            None,
            error=("Unanswerable", exc.reason),
            message_id=exc.message_id,
        )
        return _response(400, "unanswerable", error=exc.reason)

    def _log(
        self,
        outcome: str,
        started: float,
        delivery: Delivery | None,
        event: Event | None,
        *,
        attempt: int | None = None,
        trace: str | None = None,
        error: tuple[str, str] | None = None,
        stack: str | None = None,
        message_id: str | None = None,
    ) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        what = event.type if event is not None else "request"
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(outcome, "INFO"),
            "message": f"{self.name}: {what} {outcome}"
            + (f": {error[0]}: {error[1]}" if error else ""),
            "function": self.name,
            "outcome": outcome,
            "correlationid": event.correlationid if event is not None else None,
            "request_id": event.id if event is not None else None,
            "type": event.type if event is not None else None,
            "attempt": attempt,
            "message_id": message_id or (delivery.message_id if delivery is not None else None),
            "route": delivery.route if delivery is not None else None,
            "duration_ms": duration_ms,
        }
        if error is not None:
            entry["error"] = {"type": error[0], "message": error[1]}
        if stack is not None:
            entry["stack_trace"] = stack
        entry.update(trace_fields(trace, event.replyto if event is not None else None))
        emit(entry)


def _response(
    status: int, outcome: str, *, event: Event | None = None, error: str | None = None
) -> Response:
    body: dict[str, Any] = {"outcome": outcome}
    if event is not None:
        body["id"] = event.id
        body["correlationid"] = event.correlationid
    if error is not None:
        body["error"] = error
    return Response(status, json.dumps(body, separators=(",", ":")).encode("utf-8"))


def answerable(event: Event, message_id: str | None) -> Event:
    """`event` if a result can be sent for it (replyto and a correlationid, whose form the
    protocol checked), minus oversized trace attributes a result would copy; else Unanswerable."""
    if not event.replyto or not event.correlationid:
        missing = "replyto" if not event.replyto else "correlationid"
        raise Unanswerable(
            f"request {event.id!r} has no {missing}: nowhere to send the result",
            message_id=message_id,
        )
    oversized = {
        name: None
        for name in ("traceparent", "tracestate")
        if len(event.extensions.get(name, "").encode("utf-8")) > _MAX_TRACE_BYTES
    }
    return event.with_extensions(**oversized) if oversized else event


def _salvage(attributes: Mapping[str, str], delivery: Delivery) -> Event | None:
    """A stand-in request built from raw `ce-*` attributes when the envelope itself is broken,
    so a request that names replyto and correlationid still gets a failed result."""
    reply_to = attributes.get(REPLY_TO_ATTRIBUTE)
    correlation_id = attributes.get(CORRELATION_ID_ATTRIBUTE)
    if not reply_to or not correlation_id:
        return None
    try:
        return Event(
            id=attributes.get("ce-id") or delivery.message_id or str(uuid.uuid4()),
            source=attributes.get("ce-source") or "unknown",
            type=attributes.get("ce-type") or "unknown",
            extensions={"replyto": reply_to, "correlationid": correlation_id},
        )
    except ProtocolError:
        return None
