"""echo: returns its input (request type dev.relay.example.echo).

{"fail": "msg"} raises a non-retryable error (a failed result, retryable=false);
{"crash": n} raises a retryable error on delivery attempts 1..n (Pub/Sub redelivers; the attempt
is counted only on subscriptions with a dead-letter policy); {"sleep": s} answers after s seconds
(at most 300: a handler that outlives its access token, or a slow one).

Run locally:  functions-framework --source functions/echo/main.py --target echo --port 8080
Deploy:       relay deploy echo (docs/functions.md#deploying-relay-deploy)
"""

from __future__ import annotations

import time
from typing import Any

from relay.functions import NonRetryableError, Request, relay_function

_MAX_SLEEP = 300.0


class Crash(RuntimeError):
    """The retryable error {"crash": n} asks for."""


@relay_function
def echo(request: Request) -> Any:
    """Echo the request data; fail or crash on demand."""
    data = request.data
    if isinstance(data, dict):
        if "fail" in data:
            raise NonRetryableError(str(data["fail"]), error_type="EchoFailure")
        crash = data.get("crash")
        if isinstance(crash, int) and request.delivery_attempt <= crash:
            raise Crash(f"crash on delivery attempt {request.delivery_attempt} of {crash}")
        sleep = data.get("sleep")
        if isinstance(sleep, int | float) and not isinstance(sleep, bool):
            time.sleep(min(max(sleep, 0), _MAX_SLEEP))
    return data
