"""Publishing results: one lazily created google-cloud-pubsub PublisherClient per instance.

The client is created on first use (so importing a function stays cheap), reused for every request,
and configured to send each message at once (max_messages=1): relay waits for the publish before
it answers Pub/Sub, so batching would only add latency.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from relay.functions._settings import PUBSUB_API_ENDPOINT_ENV
from relay.protocol import Message


class ResultPublisher(Protocol):
    """Publishes one message to a topic and returns its message id once the publish completed."""

    def publish(self, topic: str, message: Message, timeout: float) -> str: ...


class PubSubPublisher:
    """The production publisher: google.cloud.pubsub_v1.PublisherClient, created once, lazily.

    Honours PUBSUB_EMULATOR_HOST (relay broker) like every google-cloud-pubsub client, and
    RELAY_PUBSUB_API_ENDPOINT (an API endpoint host:port, e.g. `relay broker --require-auth`)
    as `client_options`: TLS and the instance's own credentials (ADC) stay as on Google.
    """

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The PublisherClient, created on first access (thread-safe)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from google.cloud import pubsub_v1

                    endpoint = os.environ.get(PUBSUB_API_ENDPOINT_ENV, "").strip()
                    self._client = pubsub_v1.PublisherClient(
                        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1),
                        client_options={"api_endpoint": endpoint} if endpoint else None,
                    )
        return self._client

    def publish(self, topic: str, message: Message, timeout: float) -> str:
        """Publish and wait (at most `timeout` seconds) until Pub/Sub confirmed it."""
        future = self.client.publish(topic, message.data, **message.attributes)
        return str(future.result(timeout=timeout))


_default: PubSubPublisher | None = None
_default_lock = threading.Lock()


def default_publisher() -> PubSubPublisher:
    """The instance-wide publisher shared by every relay function in this process."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PubSubPublisher()
    return _default
