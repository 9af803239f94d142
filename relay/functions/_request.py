"""`Request`: what a handler gets: the decoded, validated request and how it was delivered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.protocol import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One request as a handler sees it. Immutable.

    data: the decoded data (a `dataref` already resolved, validated against the type's schema).
    attributes: the Pub/Sub message attributes as delivered (read-only; for a direct HTTP
    CloudEvent, the equivalent `ce-*` attributes). delivery_attempt: 1 on the first delivery;
    Pub/Sub only counts attempts on subscriptions with a dead-letter policy, otherwise it is 1.
    deadline: the request's `expirytime` (aware datetime) or None. event: the full CloudEvent.
    """

    data: Any
    type: str
    id: str
    correlation_id: str
    reply_to: str
    attributes: Mapping[str, str]
    delivery_attempt: int
    deadline: datetime | None
    event: Event
    message_id: str | None = None
    subscription: str | None = None

    @property
    def source(self) -> str:
        """The CloudEvents source of the request (who asked)."""
        return self.event.source

    @property
    def traceparent(self) -> str | None:
        """W3C traceparent of the request, for handlers that propagate traces."""
        return self.event.traceparent

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until the deadline (negative once past), or None without a deadline."""
        if self.deadline is None:
            return None
        return (self.deadline - (now or datetime.now(UTC))).total_seconds()
