"""Push delivery: one HTTP POST per message, in the formats Google's push subscriptions use.

Formats, chosen per subscription:
- wrapper (default): Google's push JSON
  `{"message": {...}, "subscription": ..., "deliveryAttempt": n}` (the attempt only when known).
- no_wrapper: the raw message data as the body; with write_metadata the message metadata goes
  into `x-goog-pubsub-*` headers and each attribute into a header of its own name.
- cloudevent (push_attributes["x-relay-push-format"] == "cloudevent"): what Eventarc sends a
  2nd-gen function: a binary-mode CloudEvent of type google.cloud.pubsub.topic.v1.messagePublished
  whose body is MessagePublishedData `{"message": {...}, "subscription": ...}`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp

__all__ = [
    "ACK_STATUSES",
    "CLOUDEVENT_TYPE",
    "PUSH_FORMAT_ATTRIBUTE",
    "PushRequest",
    "push",
    "render",
]

logger = logging.getLogger(__name__)

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
PUSH_FORMAT_ATTRIBUTE = "x-relay-push-format"
CLOUDEVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_EMPTY: Mapping[str, str] = MappingProxyType({})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Attributes never written as headers in no_wrapper/write_metadata mode: they would break the
# HTTP request or impersonate the broker's own headers.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "host",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "trailer",
        "expect",
    }
)


@dataclass(frozen=True, kw_only=True)
class PushRequest:
    """One delivery attempt of one message to one push endpoint.

    subscription and topic are full paths ("projects/P/subscriptions/S", "projects/P/topics/T").
    publish_time should be timezone-aware (naive is taken as UTC). delivery_attempt is set only
    when the subscription has a dead-letter policy (as Google does). token is the OIDC ID token
    to send as `Authorization: Bearer`, or None.
    """

    endpoint: str
    subscription: str
    topic: str
    data: bytes
    message_id: str
    publish_time: dt.datetime
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ordering_key: str = ""
    delivery_attempt: int | None = None
    no_wrapper: bool = False
    write_metadata: bool = False
    push_attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    token: str | None = None

    @property
    def push_format(self) -> str:
        """ "cloudevent", "no_wrapper" or "wrapper": how this request is rendered."""
        if self.push_attributes.get(PUSH_FORMAT_ATTRIBUTE) == "cloudevent":
            return "cloudevent"
        return "no_wrapper" if self.no_wrapper else "wrapper"


def _rfc3339(moment: dt.datetime) -> str:
    """Google's JSON timestamp form: UTC, "Z", 0, 3 or 6 fractional digits."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"


def _message_json(request: PushRequest) -> dict[str, Any]:
    publish_time = _rfc3339(request.publish_time)
    message: dict[str, Any] = {
        # Always present, even when empty: functions-framework needs message.data.
        "data": base64.b64encode(request.data).decode("ascii"),
        "attributes": dict(request.attributes),
        "messageId": request.message_id,
        "message_id": request.message_id,
        "publishTime": publish_time,
        "publish_time": publish_time,
    }
    if request.ordering_key:
        message["orderingKey"] = request.ordering_key
    return message


def _valid_header(name: str, value: str) -> bool:
    if not _TOKEN.match(name) or name.lower() in _RESERVED_HEADERS:
        return False
    if name.lower().startswith("x-goog-pubsub-"):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return "\r" not in value and "\n" not in value


def render(request: PushRequest) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and body that deliver `request` (used by `push`; pure, for tests)."""
    headers: dict[str, str] = {}
    push_format = request.push_format
    if push_format == "no_wrapper":
        body = request.data
        headers["Content-Type"] = "application/octet-stream"
        if request.write_metadata:
            headers["x-goog-pubsub-subscription-name"] = request.subscription
            headers["x-goog-pubsub-message-id"] = request.message_id
            headers["x-goog-pubsub-publish-time"] = _rfc3339(request.publish_time)
            if request.ordering_key:
                headers["x-goog-pubsub-ordering-key"] = request.ordering_key
            if request.delivery_attempt is not None:
                headers["x-goog-pubsub-delivery-attempt"] = str(request.delivery_attempt)
            for name, value in request.attributes.items():
                if _valid_header(name, value):
                    headers[name] = value
                else:
                    logger.warning(
                        "push to %s: attribute %r cannot be sent as an HTTP header; skipped",
                        request.endpoint,
                        name,
                    )
    elif push_format == "cloudevent":
        envelope = {"message": _message_json(request), "subscription": request.subscription}
        body = json.dumps(envelope, separators=(",", ":")).encode("utf-8")
        headers.update(
            {
                "Content-Type": "application/json",
                "ce-id": request.message_id,
                "ce-source": f"//pubsub.googleapis.com/{request.topic}",
                "ce-type": CLOUDEVENT_TYPE,
                "ce-specversion": "1.0",
                "ce-time": _rfc3339(request.publish_time),
            }
        )
    else:
        wrapper: dict[str, Any] = {
            "message": _message_json(request),
            "subscription": request.subscription,
        }
        if request.delivery_attempt is not None:
            wrapper["deliveryAttempt"] = request.delivery_attempt
        body = json.dumps(wrapper, separators=(",", ":")).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if request.token:
        headers["Authorization"] = f"Bearer {request.token}"
    return headers, body


async def push(
    session: aiohttp.ClientSession,
    request: PushRequest,
    timeout: float,  # noqa: ASYNC109 - the per-request HTTP timeout, handed to aiohttp
) -> bool:
    """POST one message to its endpoint; True = acknowledged (102/200/201/202/204).

    Any other status, a timeout, a refused or reset connection or a bad URL returns False: the
    message is redelivered later. Never raises for network errors (cancellation propagates).
    """
    headers, body = render(request)
    try:
        async with session.post(
            request.endpoint,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            await response.read()
            acked = response.status in ACK_STATUSES
            if not acked:
                logger.debug(
                    "push %s to %s: HTTP %d", request.message_id, request.endpoint, response.status
                )
            return acked
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        logger.debug(
            "push %s to %s failed: %s: %s",
            request.message_id,
            request.endpoint,
            type(exc).__name__,
            exc,
        )
        return False
