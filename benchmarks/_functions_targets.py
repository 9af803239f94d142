"""Targets of benchmarks/functions.py: the same echo work as a bare functions-framework CloudEvent
function and as a relay function (whose result publish goes to a recording stub)."""

from __future__ import annotations

import base64
import json
from typing import Any

import functions_framework

from relay.functions import Request, relay_function
from relay.functions.testing import RecordingPublisher
from relay.protocol import Message

PUBLISHER = RecordingPublisher()


@functions_framework.cloud_event
def bare(cloud_event: Any) -> None:
    """Decode the Pub/Sub message, echo its JSON data, encode the reply: no protocol, no checks."""
    message = cloud_event.get_data()["message"]
    data = json.loads(base64.b64decode(message["data"]))
    reply = json.dumps(data, separators=(",", ":")).encode()
    PUBLISHER.published.clear()
    PUBLISHER.published.append((message["attributes"].get("ce-replyto", ""), Message(reply, {})))


@relay_function(publisher=PUBLISHER, reply_topics=["projects/relay-bench/topics/results"])
def relayed(request: Request) -> Any:
    """The same echo, with relay doing the protocol."""
    PUBLISHER.published.clear()
    return request.data
