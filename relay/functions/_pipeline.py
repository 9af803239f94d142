"""The request pipeline of a relay function: decode, check, run the handler, encode, publish."""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from relay.functions._call import Call, Response
from relay.functions._envelope import Delivery
from relay.functions._errors import NonRetryableError, Unanswerable
from relay.functions._request import Request
from relay.protocol import (
    CORRELATION_ID_ATTRIBUTE,
    REPLY_TO_ATTRIBUTE,
    RESULT_SUCCEEDED,
    DataRefError,
    DataRefRefusedError,
    Event,
    Message,
    ProtocolError,
    from_message,
    succeeded,
    to_binary,
)


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


class HandlerPipeline:
    """Serve each delivery with `handler(Request)`: the pipeline behind @relay_function."""

    def __init__(self, handler: Callable[[Request], Any]) -> None:
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)

    def __call__(self, call: Call) -> Response:
        assert call.delivery is not None
        try:
            event, problem = decode(call)
        except Unanswerable as exc:
            return call.unanswerable(exc)
        except DataRefError as exc:  # inside an allowed store: the blob may be readable later
            return call.retry(exc)
        if problem is not None:
            found = (type(problem).__name__, str(problem))
            return call.answer("failed", call.failed(*found), found)
        expiry = event.expirytime
        if expiry is not None and expiry <= datetime.now(UTC):
            reason = f"request expired at {expiry.isoformat()}"
            return call.answer("expired", call.failed("Expired", reason), ("Expired", reason))
        store, key = call.runtime.idempotency, f"{event.source}\n{event.id}"
        if store is not None:
            try:
                stored = store.get(key)
            except Exception as exc:
                return call.retry(exc)
            if stored is not None:
                return call.publish("duplicate", stored)
        outcome, answer, error = self._run(call, event, expiry)
        if answer is None:  # retryable handler error
            assert error is not None
            return call.retry(error)
        try:
            message, encode_error = _encode(call, answer)
            if encode_error is not None:
                outcome, error = "failed", encode_error
            if store is not None:
                message = store.put_if_absent(key, message)
        except Exception as exc:
            return call.retry(exc)
        logged = None
        if error is not None:
            name = (
                error.error_type if isinstance(error, NonRetryableError) else type(error).__name__
            )
            logged = (name, str(error))
        return call.publish(outcome, message, logged)

    def _run(
        self, call: Call, event: Event, deadline: datetime | None
    ) -> tuple[str, Event | None, BaseException | None]:
        """Run the handler: (outcome, result event or None to retry, error)."""
        assert event.replyto is not None
        assert event.correlationid is not None
        assert call.delivery is not None
        request = Request(
            data=event.data,
            type=event.type,
            id=event.id,
            correlation_id=event.correlationid,
            reply_to=event.replyto,
            attributes=MappingProxyType(call.delivery.message.attributes),
            delivery_attempt=call.attempt,
            deadline=deadline,
            event=event,
            message_id=call.delivery.message_id,
            subscription=call.delivery.subscription,
        )
        try:
            if self.is_async:
                value = _async_runner.run(self.handler(request))
            else:
                value = self.handler(request)
                if inspect.isawaitable(value):
                    value = _async_runner.run(value)
        except NonRetryableError as exc:
            return "failed", call.failed(exc.error_type, exc.message), exc
        except Exception as exc:
            return "retry", None, exc
        try:
            return "succeeded", succeeded(event, value, source=call.runtime.source), None
        except (ProtocolError, TypeError, ValueError, RecursionError) as exc:
            problem = NonRetryableError(
                f"handler result cannot be sent: {exc}", error_type="ResultEncodingError"
            )
            return "failed", call.failed(problem.error_type, problem.message), problem


def decode(call: Call) -> tuple[Event, ProtocolError | None]:
    """The request event (checked answerable), plus the decode problem that makes it fail if any.
    A refused dataref is such a problem: nothing was read, and retrying cannot help."""
    assert call.delivery is not None
    data, attributes = call.delivery.message
    runtime = call.runtime
    try:
        event = from_message(
            data,
            attributes,
            registry=runtime.registry,
            blob_store=runtime.blob_stores,
            check_envelope=call.check_reply,  # before any data is decoded or dataref read
        )
    except DataRefError as exc:
        if not isinstance(exc, DataRefRefusedError):
            raise
        return call.answerable(_salvaged(exc, attributes, call.delivery)), exc
    except ProtocolError as exc:
        return call.answerable(_salvaged(exc, attributes, call.delivery)), exc
    return call.request(event), None


def _salvaged(exc: ProtocolError, attributes: Mapping[str, str], delivery: Delivery) -> Event:
    salvaged = exc.event if exc.event is not None else salvage(attributes, delivery)
    if salvaged is None:
        raise Unanswerable(
            f"cannot decode the request envelope: {exc}", message_id=delivery.message_id
        ) from None
    return salvaged


def _encode(call: Call, result: Event) -> tuple[Message, NonRetryableError | None]:
    """Binary-mode result message; a succeeded result that cannot travel (too large without
    a blob store) becomes a failed one: (message, the error that made it fail)."""
    try:
        return to_binary(result, blob_store=call.runtime.blob_stores.writer), None
    except ProtocolError as exc:
        if result.type != RESULT_SUCCEEDED:
            raise
        problem = NonRetryableError(f"result cannot be sent: {exc}", error_type=type(exc).__name__)
        return to_binary(call.failed(problem.error_type, problem.message)), problem


def salvage(attributes: Mapping[str, str], delivery: Delivery) -> Event | None:
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
