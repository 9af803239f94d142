"""The dead-letter function: answer every dead-lettered request with a failed result.

Subscribe it to the dead-letter topic of the function's subscription. A request lands there once
Pub/Sub spent the retry budget (max_delivery_attempts); without an answer the Airflow sensor
waiting for its correlation id would wait until its timeout. The result is
dev.relay.result.failed with error type "DeadLettered", retryable=true (the cause was retryable)
and the attempt count from the CloudPubSubDeadLetterSourceDeliveryCount attribute.
A dead-lettered message that cannot be answered (no replyto/correlationid) is logged at ERROR
with its attributes and acked: the dead-letter topic is the end of the line.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from typing import Any

from relay.functions._auth import PushAuth
from relay.functions._decorator import build_function, default_source
from relay.functions._envelope import Delivery
from relay.functions._errors import Unanswerable
from relay.functions._logging import emit
from relay.functions._publisher import ResultPublisher
from relay.functions._runtime import Response, Runtime, _response, _salvage, answerable
from relay.protocol import Event, ProtocolError, failed, from_message

DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_SUBSCRIPTION_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"
_LOGGED_DATA_BYTES = 4096


def _unused_handler(request: object) -> None:  # the dead-letter runtime never runs a handler
    raise AssertionError("dead-letter runtime has no handler")


class DeadLetterRuntime(Runtime):
    """A Runtime whose every delivery is a dead-lettered request to report as failed."""

    def handle_delivery(
        self,
        delivery: Delivery,
        *,
        started: float | None = None,
        http_traceparent: str | None = None,
    ) -> Response:
        started = time.perf_counter() if started is None else started
        data, attributes = delivery.message
        count = attributes.get(DELIVERY_COUNT_ATTRIBUTE, "")
        attempt = int(count) if count.isdigit() else (delivery.delivery_attempt or 1)
        try:
            event: Event | None = from_message(data, attributes)
        except ProtocolError as exc:  # still answer: only the envelope matters here
            event = exc.event if exc.event is not None else _salvage(attributes, delivery)
        try:
            if event is None:
                raise Unanswerable("dead-lettered message has no request envelope")
            event = answerable(event, delivery.message_id)
        except Unanswerable as exc:
            return self.unanswerable(exc, started, delivery, dump=(data, attributes))
        origin = attributes.get(SOURCE_SUBSCRIPTION_ATTRIBUTE) or "its subscription"
        result = failed(
            event,
            error_type="DeadLettered",
            message=f"request dead-lettered after {attempt} delivery attempts on {origin}",
            retryable=True,
            attempt=attempt,
            source=self.source,
        )
        return self._answer(
            "dead-lettered",
            result,
            started,
            delivery,
            event,
            attempt,
            event.traceparent or http_traceparent,
            error=("DeadLettered", f"after {attempt} attempts"),
        )

    def unanswerable(
        self,
        exc: Unanswerable,
        started: float,
        delivery: Delivery | None,
        *,
        dump: tuple[bytes, dict[str, str]] | None = None,
    ) -> Response:
        """Log everything known about the message at ERROR and ack it (status 200)."""
        entry: dict[str, object] = {
            "severity": "ERROR",
            "message": f"{self.name}: dead-lettered message cannot be answered: {exc.reason}",
            "function": self.name,
            "outcome": "unanswerable",
            "message_id": exc.message_id or (delivery.message_id if delivery else None),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if dump is not None:
            entry["attributes"] = dump[1]
            entry["data_base64"] = base64.b64encode(dump[0][:_LOGGED_DATA_BYTES]).decode("ascii")
            entry["data_bytes"] = len(dump[0])
        emit(entry)
        return _response(200, "unanswerable", error=exc.reason)


def dead_letter_function(
    *,
    name: str = "dead_letter",
    source: str | None = None,
    publisher: ResultPublisher | None = None,
    publish_timeout: float = 30.0,
    push_audience: str | None = None,
    push_allowed_emails: Iterable[str] | None = None,
    push_certs_url: str | None = None,
) -> Callable[[Any], None]:
    """A ready CloudEvent function (target `name`) for the dead-letter topic.

    Use in a function's main.py: `dead_letter = dead_letter_function()` and deploy with
    `--entry-point dead_letter --trigger-topic <dead-letter topic>`.
    """
    runtime = DeadLetterRuntime(
        _unused_handler,
        name=name,
        source=source or default_source(name),
        registry=None,
        use_default_registry=False,
        blob_store=None,
        publisher=publisher,
        idempotency=None,
        publish_timeout=publish_timeout,
        auth=PushAuth.configure(push_audience, push_allowed_emails, push_certs_url),
    )
    return build_function(runtime, None)
