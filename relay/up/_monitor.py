"""Watch the completion topic through a subscription of its own: every result, as it arrives."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

from relay.protocol import (
    CORRELATION_ID_ATTRIBUTE,
    TYPE_ATTRIBUTE,
    Event,
    ProtocolError,
    from_message,
)

_TIMEOUT = 30.0


@dataclass(frozen=True)
class Observed:
    """One message seen on the completion topic, decoded when it is a valid CloudEvent."""

    received: dt.datetime
    message_id: str
    attributes: dict[str, str]
    event: Event | None
    error: str | None = None

    @property
    def type(self) -> str:
        """The CloudEvents type (`ce-type` when the event could not be decoded)."""
        return self.event.type if self.event else self.attributes.get(TYPE_ATTRIBUTE, "?")

    @property
    def correlation_id(self) -> str | None:
        """The result's correlation id (ce-correlationid)."""
        if self.event is not None:
            return self.event.correlationid
        return self.attributes.get(CORRELATION_ID_ATTRIBUTE)


class CompletionMonitor:
    """A subscription on the completion topic, pulled in the background; deleted on exit.

    Sees only what is published after it starts (Pub/Sub semantics). `on_event` runs on the
    client's callback thread; events also queue up for `wait_for`. `client_kwargs` go to its
    SubscriberClient (credentials, client_options: `Stack.client_kwargs`).
    """

    def __init__(
        self,
        project: str,
        topic: str,
        *,
        subscription: str = "relay-up-monitor",
        on_event: Callable[[Observed], None] | None = None,
        client_kwargs: Mapping[str, Any] = MappingProxyType({}),
    ) -> None:
        self.topic = f"projects/{project}/topics/{topic}"
        self.client_kwargs = client_kwargs
        self.subscription = f"projects/{project}/subscriptions/{subscription}"
        self.on_event = on_event
        self.events: queue.Queue[Observed] = queue.Queue()
        self.seen: list[Observed] = []
        self._lock = threading.Lock()
        self._client: Any = None
        self._future: Any = None

    def __enter__(self) -> CompletionMonitor:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud.pubsub_v1 import SubscriberClient

        self._client = SubscriberClient(**self.client_kwargs)
        # AlreadyExists: left over from a run that was killed; reuse it.
        with contextlib.suppress(AlreadyExists):
            self._client.create_subscription(
                request={
                    "name": self.subscription,
                    "topic": self.topic,
                    "ack_deadline_seconds": 30,
                },
                timeout=_TIMEOUT,
            )
        self._future = self._client.subscribe(self.subscription, callback=self._receive)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop pulling, delete the subscription (best effort) and close the client."""
        from google.api_core.exceptions import GoogleAPIError

        if self._client is None:
            return
        if self._future is not None:
            self._future.cancel()
            # Cancelled or already failed: both mean stopped.
            with contextlib.suppress(Exception):
                self._future.result(timeout=10)
        # The broker may already be gone; a leftover is reused next time.
        with contextlib.suppress(GoogleAPIError):
            self._client.delete_subscription(
                request={"subscription": self.subscription}, timeout=10
            )
        self._client.close()
        self._client = None

    def _receive(self, message: Any) -> None:
        attributes = dict(message.attributes)
        try:
            event: Event | None = from_message(message.data, attributes)
            error = None
        except ProtocolError as exc:
            event, error = None, f"{type(exc).__name__}: {exc}"
        observed = Observed(dt.datetime.now(dt.UTC), message.message_id, attributes, event, error)
        with self._lock:
            self.seen.append(observed)
        self.events.put(observed)
        message.ack()
        if self.on_event is not None:
            self.on_event(observed)

    def wait_for(self, predicate: Callable[[Observed], bool], timeout: float) -> Observed:
        """The first queued event matching `predicate`; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event on {self.topic} within {timeout:g}s")
            try:
                observed = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(observed):
                return observed
