"""Test targets: relay functions with particular behaviour (async, idempotent, bad results...)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from relay.functions import MemoryIdempotencyStore, NonRetryableError, Request, relay_function
from relay.protocol import LocalBlobStore

RUNS: list[str] = []


@relay_function
async def async_echo(request: Request) -> Any:
    """An async handler: awaits, then echoes."""
    await asyncio.sleep(0.001)
    if request.data.get("fail"):
        raise NonRetryableError("async says no")
    return {"async": True, "data": request.data}


@relay_function(idempotency=MemoryIdempotencyStore())
def idempotent(request: Request) -> Any:
    """Returns a fresh value per run, so a rerun would be visible."""
    RUNS.append(request.id)
    if request.data.get("crash") and len(RUNS) == 1:
        raise RuntimeError("first run crashes")
    return {"run": str(uuid.uuid4()), "runs": len(RUNS)}


@relay_function
def view(request: Request) -> Any:
    """Reports what the handler sees."""
    return {
        "type": request.type,
        "id": request.id,
        "correlation_id": request.correlation_id,
        "reply_to": request.reply_to,
        "attempt": request.delivery_attempt,
        "message_id": request.message_id,
        "subscription": request.subscription,
        "deadline": request.deadline.isoformat() if request.deadline else None,
        "attributes": sorted(request.attributes),
        "data": request.data,
    }


@relay_function
def unserialisable(request: Request) -> Any:
    """Returns something JSON cannot carry."""
    return {"set": {1, 2}}


@relay_function
def huge(request: Request) -> Any:
    """Returns 2 MB: more than a result may carry without a blob store."""
    return "x" * 2_000_000


@relay_function(
    blob_stores=[LocalBlobStore(os.environ.get("TEST_BLOB_DIR", "/tmp/relay-test-blobs"))]
)
def offloading(request: Request) -> Any:
    """Returns 2 MB with a blob store: the result travels as a dataref."""
    return "y" * 2_000_000


@relay_function(
    blob_stores=[LocalBlobStore(os.environ.get("TEST_BLOB_DIR", "/tmp/relay-test-blobs"))]
)
def blob_echo(request: Request) -> Any:
    """Echoes its data, which may come as a dataref into the TEST_BLOB_DIR store."""
    return {"data": request.data}
