"""Feed a pull-delivery function locally: pull its subscription, POST each message to the server.

In the cloud something of your own pulls a `delivery: pull` subscription (a worker, a job);
`relay up` stands in for it so the function still gets every request. Messages go as Google's push
JSON wrapper (with deliveryAttempt), acked on a 2xx answer and nacked otherwise (redelivered
with the subscription's retry policy).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)

_ACK_STATUSES = frozenset({102, 200, 201, 202, 204})


class PullForwarder:
    """Streaming-pulls one subscription and forwards each message to one URL; `client_kwargs`
    go to its SubscriberClient (credentials, client_options)."""

    def __init__(
        self,
        subscription: str,
        url: str,
        *,
        max_outstanding: int = 8,
        timeout: float = 540.0,
        client_kwargs: Mapping[str, Any] = MappingProxyType({}),
    ) -> None:
        self.subscription = subscription
        self.client_kwargs = client_kwargs
        self.url = url
        self.timeout = timeout
        self.max_outstanding = max_outstanding
        self._client: Any = None
        self._future: Any = None

    def start(self) -> None:
        """Open the streaming pull (returns at once; messages arrive on the client's threads)."""
        from google.cloud.pubsub_v1 import SubscriberClient
        from google.cloud.pubsub_v1.types import FlowControl

        self._client = SubscriberClient(**self.client_kwargs)
        self._future = self._client.subscribe(
            self.subscription,
            callback=self._forward,
            flow_control=FlowControl(max_messages=self.max_outstanding),
        )

    def stop(self) -> None:
        """Stop pulling (unacked messages go back to the subscription) and close the client."""
        if self._future is not None:
            self._future.cancel()
            with contextlib.suppress(Exception):  # cancelled or failed: stopped either way
                self._future.result(timeout=10)
            self._future = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _forward(self, message: Any) -> None:
        publish_time = message.publish_time
        if isinstance(publish_time, dt.datetime):
            stamp = publish_time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        else:
            stamp = str(publish_time)
        body: dict[str, Any] = {
            "message": {
                "data": base64.b64encode(message.data).decode("ascii"),
                "attributes": dict(message.attributes),
                "messageId": message.message_id,
                "publishTime": stamp,
            },
            "subscription": self.subscription,
        }
        if message.delivery_attempt:
            body["deliveryAttempt"] = message.delivery_attempt
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            logger.warning("forwarding %s to %s failed: %s", message.message_id, self.url, exc)
            message.nack()
            return
        if status in _ACK_STATUSES:
            message.ack()
        else:
            message.nack()
