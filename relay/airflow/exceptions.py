"""Errors raised by relay's Airflow operators, sensors and triggers; each names what went wrong."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException


class RelayAirflowError(Exception):
    """Base class of every error relay.airflow raises."""


class RelayConfigError(RelayAirflowError, ValueError):
    """An operator or trigger argument is invalid (bad topic, correlation id, policy...)."""


class RelayPublishError(RelayAirflowError):
    """A request could not be published after all retries."""


class RelayResultError(RelayAirflowError):
    """The function answered with dev.relay.result.failed.

    Carries the function's error type and message, whether it was retryable and the attempt number.
    """

    def __init__(
        self,
        correlation_id: str,
        error_type: str,
        message: str,
        *,
        retryable: bool = False,
        attempt: int = 1,
    ) -> None:
        self.correlation_id = correlation_id
        self.error_type = error_type
        self.error_message = message
        self.retryable = retryable
        self.attempt = attempt
        super().__init__(
            f"function failed for correlation id {correlation_id}: {error_type}: {message} "
            f"(retryable={retryable}, attempt={attempt})"
        )


class RelayNonRetryableResultError(RelayResultError, AirflowFailException):
    """A RelayResultError whose failure the function marked non-retryable (retryable=False).

    Also an AirflowFailException, so Airflow fails the task without using its retries: a retry
    re-sends the same request (same ce-id) and would only get the same answer. Catch it as
    RelayResultError like any other function failure.
    """

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """Airflow's exception serialization: the constructor's own arguments."""
        cls = type(self)
        return (
            f"{cls.__module__}.{cls.__name__}",
            (self.correlation_id, self.error_type, self.error_message),
            {"retryable": self.retryable, "attempt": self.attempt},
        )


def result_error(
    correlation_id: str, error_type: str, message: str, *, retryable: bool, attempt: int
) -> RelayResultError:
    """The error for a failed result: RelayNonRetryableResultError when not retryable."""
    cls = RelayResultError if retryable else RelayNonRetryableResultError
    return cls(correlation_id, error_type, message, retryable=retryable, attempt=attempt)


class RelayTimeoutError(RelayAirflowError, TimeoutError):
    """No result arrived before the wait's deadline; names the correlation ids still pending."""

    def __init__(self, pending: Sequence[str], timeout: float) -> None:
        self.pending = list(pending)
        self.timeout = timeout
        shown = ", ".join(self.pending[:10]) + (" ..." if len(self.pending) > 10 else "")
        super().__init__(
            f"no result within {timeout:g} s for {len(self.pending)} correlation id(s): {shown}"
        )


class RelayPartialFailureError(RelayAirflowError):
    """Some requests of a fan-out failed or timed out (policy collect_all); names each of them.

    `outcomes` holds every request's outcome in item order (also pushed to XCom key "outcomes").
    """

    def __init__(self, failed: Mapping[str, str], outcomes: Sequence[Mapping[str, Any]]) -> None:
        self.failed = dict(failed)
        self.outcomes = list(outcomes)
        lines = "; ".join(f"{cid}: {why}" for cid, why in list(self.failed.items())[:10])
        more = " ..." if len(self.failed) > 10 else ""
        super().__init__(
            f"{len(self.failed)} of {len(self.outcomes)} requests did not succeed: {lines}{more}"
        )


class RelayNonRetryablePartialFailureError(RelayPartialFailureError, AirflowFailException):
    """A RelayPartialFailureError where every request that did not succeed failed non-retryably
    (no timeouts, no retryable failures): Airflow fails the task without retrying it, since a retry
    re-sends the same requests and would get the same answers. Catch it as RelayPartialFailureError.
    """

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """Airflow's exception serialization: the constructor's own arguments."""
        cls = type(self)
        return f"{cls.__module__}.{cls.__name__}", (self.failed, self.outcomes), {}


class RelayResultLostError(RelayAirflowError):
    """A completion subscription vanished (deleted or expired) or lost the result it reported."""


class RelayHttpError(RelayAirflowError):
    """A direct HTTPS invocation kept failing (non-2xx or connection error) after all retries."""

    def __init__(self, url: str, attempts: int, status: int | None, detail: str) -> None:
        self.url = url
        self.attempts = attempts
        self.status = status
        super().__init__(f"POST {url} failed after {attempts} attempt(s): {detail}")
