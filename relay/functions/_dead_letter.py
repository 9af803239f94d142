"""The dead-letter function: answer every dead-lettered request with a failed result.

Subscribe it to the dead-letter topic of the function's subscription. A request lands there once
Pub/Sub spent the retry budget (max_delivery_attempts); without an answer the Airflow sensor
waiting for its correlation id would wait until its timeout. The result is
dev.relay.result.failed with error type "DeadLettered", retryable=true (the cause was retryable)
and the attempt count from the CloudPubSubDeadLetterSourceDeliveryCount attribute.

Nothing loops: a message that cannot be answered (no envelope, no replyto or correlationid, a
reply topic the function may not publish to) is logged at ERROR as undeliverable, with its ids,
attributes and first 4 KiB. On a subscription with a dead-letter policy (relay provision gives it
one, to a terminal topic) it is then nacked, so Pub/Sub moves it there after its last attempt;
without one it is acked, the log line being its record. A result publish that keeps failing
is retried until that last attempt, which logs it undeliverable too.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from relay.functions import _settings as settings
from relay.functions._auth import PushAuth
from relay.functions._call import Call, Response, response
from relay.functions._decorator import build_function, default_source
from relay.functions._errors import Unanswerable
from relay.functions._pipeline import salvage
from relay.functions._publisher import ResultPublisher
from relay.functions._runtime import Runtime
from relay.protocol import BlobStores, Event, ProtocolError, from_message

DELIVERY_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_SUBSCRIPTION_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"
_LOGGED_DATA_BYTES = 4096


class _Envelope(Exception):
    """Stops decoding at the envelope: a dead-lettered request's data is never read."""

    def __init__(self, event: Event) -> None:
        super().__init__("envelope")
        self.event = event


def _stop_at_envelope(event: Event) -> None:
    raise _Envelope(event)


def dead_letter_pipeline(call: Call) -> Response:
    """Publish a DeadLettered failed result for the request in `call`, or give it up."""
    assert call.delivery is not None
    data, attributes = call.delivery.message
    count = attributes.get(DELIVERY_COUNT_ATTRIBUTE, "")
    attempts = int(count) if count.isascii() and count.isdigit() else call.attempt
    event: Event | None = None
    try:
        from_message(data, attributes, check_envelope=_stop_at_envelope)
    except _Envelope as stopped:
        event = stopped.event
    except ProtocolError as exc:  # still answer: only the envelope matters here
        event = exc.event
    try:
        if event is None:
            event = salvage(attributes, call.delivery)
        if event is None:
            raise Unanswerable("dead-lettered message has no request envelope")
        call.answerable(event)
    except Unanswerable as exc:
        return _undeliverable(call, exc.reason)
    origin = attributes.get(SOURCE_SUBSCRIPTION_ATTRIBUTE) or "its subscription"
    result = call.failed(
        "DeadLettered",
        f"request dead-lettered after {attempts} delivery attempts on {origin}",
        retryable=True,
        attempt=attempts,
    )
    answered = call.answer("dead-lettered", result, ("DeadLettered", f"after {attempts} attempts"))
    if answered.status >= 300 and call.last_attempt:
        _undeliverable(call, "its failed result could not be published")
    return answered


def _undeliverable(call: Call, reason: str) -> Response:
    """Log the message as undeliverable (ids, attributes, first bytes); nack it where Pub/Sub
    counts attempts (it moves to the terminal topic after the last), else ack it."""
    assert call.delivery is not None
    data, attributes = call.delivery.message
    counted = call.delivery.delivery_attempt is not None
    if call.last_attempt:
        then = "last attempt: Pub/Sub moves it to the dead-letter topic now"
    elif counted:
        then = "nacked: Pub/Sub moves it to the dead-letter topic after its last attempt"
    else:
        then = "acked: this subscription has no dead-letter policy, this line is its only record"
    call.log(
        "undeliverable",
        error=("Undeliverable", f"{reason}; {then}"),
        attributes=attributes,
        data_base64=base64.b64encode(data[:_LOGGED_DATA_BYTES]).decode("ascii"),
        data_bytes=len(data),
    )
    return response(400 if counted else 200, "undeliverable", event=call.event, error=reason)


def dead_letter_function(
    *,
    name: str = "dead_letter",
    source: str | None = None,
    publisher: ResultPublisher | None = None,
    publish_timeout: float = 30.0,
    reply_topics: Iterable[str] | None = None,
    push_audience: str | None = None,
    push_allowed_emails: Iterable[str] | None = None,
    push_certs_url: str | None = None,
) -> Callable[[Any], None]:
    """A ready CloudEvent function (target `name`) for the dead-letter topic.

    Use in a function's main.py: `dead_letter = dead_letter_function()`. It publishes only to
    `reply_topics` (else RELAY_REPLY_TOPICS), like every relay function.
    """
    runtime = Runtime(
        dead_letter_pipeline,
        name=name,
        source=source or default_source(name),
        registry=None,
        use_default_registry=False,
        blob_stores=BlobStores(),
        reply_topics=settings.reply_topics(reply_topics),
        publisher=publisher,
        idempotency=None,
        publish_timeout=publish_timeout,
        auth=PushAuth.configure(push_audience, push_allowed_emails, push_certs_url),
        max_delivery_attempts=settings.max_delivery_attempts(),
    )
    return build_function(runtime, None)
