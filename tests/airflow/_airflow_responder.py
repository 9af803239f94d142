"""A stand-in for a relay function in Airflow tests: answers requests from a Pub/Sub subscription
with real relay.protocol results, published with the real PublisherClient to the request's replyto.

Request data drives it: {"fail": msg} -> dev.relay.result.failed (EchoFailure, msg, not retryable;
with "retryable": true retryable, as a dead-lettered request's result);
{"silent": true} -> no answer; {"delay": s} -> answer after s seconds; {"twice": true} -> two
succeeded results ({"copy": 1} then {"copy": 2}); anything else is echoed back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from relay.protocol import Event, failed, from_message, succeeded, to_binary

SOURCE = "/functions/test-responder"


def answer(
    publisher: Any,
    request: Event,
    data: Any = None,
    *,
    error: str | None = None,
    retryable: bool = False,
) -> str:
    """Publish one result for `request`; returns its Pub/Sub message id."""
    if error is not None:
        result = failed(
            request,
            error_type="EchoFailure",
            message=error,
            retryable=retryable,
            attempt=1,
            source=SOURCE,
        )
    else:
        result = succeeded(request, data, source=SOURCE)
    message = to_binary(result)
    assert request.replyto is not None
    return str(publisher.publish(request.replyto, message.data, **message.attributes).result(30))


class Responder:
    """Runs a StreamingPull on `subscription` in the background while in its `with` block."""

    def __init__(self, broker: Any, subscription: str) -> None:
        self.publisher = broker.publisher()
        self.subscriber = broker.subscriber()
        self.subscription = subscription
        self.requests: list[Event] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._future: Any = None

    def __enter__(self) -> Responder:
        self._future = self.subscriber.subscribe(self.subscription, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._future.cancel()
        with contextlib.suppress(Exception):
            self._future.result(timeout=10)

    def _handle(self, message: Any) -> None:
        try:
            request = from_message(message.data, dict(message.attributes))
            with self._lock:
                self.requests.append(request)
            data = request.data if isinstance(request.data, dict) else {}
            if data.get("delay"):
                time.sleep(float(data["delay"]))
            if data.get("silent"):
                pass
            elif "fail" in data:
                answer(
                    self.publisher,
                    request,
                    error=str(data["fail"]),
                    retryable=bool(data.get("retryable")),
                )
            elif data.get("twice"):
                answer(self.publisher, request, {"copy": 1})
                answer(self.publisher, request, {"copy": 2})
            else:
                answer(self.publisher, request, request.data)
            message.ack()
        except BaseException as exc:  # surfaced by tests through .errors
            self.errors.append(exc)
            message.nack()

    def wait_for_requests(self, count: int, timeout: float = 20.0) -> list[Event]:
        """Block until `count` requests arrived; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"got {len(self.requests)} requests, expected {count}")
