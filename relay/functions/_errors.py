"""Errors a function author raises, and the ones relay uses to decide what to answer Pub/Sub."""

from __future__ import annotations


class NonRetryableError(Exception):
    """Raise from a handler when trying again cannot help (bad input, a business rule said no).

    relay publishes a dev.relay.result.failed result with retryable=false and acks the message.
    `error_type` names the error in that result (default: the exception class name).
    Any other exception is retryable: relay answers 5xx and Pub/Sub redelivers with backoff.
    """

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__


class Unanswerable(Exception):
    """A delivery relay cannot answer: no request envelope, or no replyto / correlation id.

    Answered with a non-2xx status: Pub/Sub keeps the message and it ends in the dead-letter topic.
    `message_id` is the Pub/Sub message id when known, for the log line.
    """

    def __init__(self, reason: str, *, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id


class PushAuthError(Exception):
    """A push request failed authentication (status 401) or authorization (status 403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
