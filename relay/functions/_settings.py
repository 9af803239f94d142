"""What a relay function may touch, from its arguments or else its environment.

`relay up` (and a deploy) set the environment from the topology: the completion topics a
function may publish results to and the blob stores it may read datarefs from. Nothing
configured means nothing allowed: a function copied elsewhere refuses rather than obeys requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from relay.protocol import BlobStore, BlobStores, check_topic_pattern

REPLY_TOPICS_ENV = "RELAY_REPLY_TOPICS"
"""Comma-separated topic paths (or `projects/<p>/topics/*`) results may be published to."""
BLOB_STORES_ENV = "RELAY_BLOB_STORES"
"""Comma-separated `gs://bucket/prefix` or local folders datarefs may be read from."""
MAX_DELIVERY_ATTEMPTS_ENV = "RELAY_MAX_DELIVERY_ATTEMPTS"
"""The subscription's max_delivery_attempts, so the last attempt can say it is the last."""
PUBSUB_API_ENDPOINT_ENV = "RELAY_PUBSUB_API_ENDPOINT"
"""host:port of the Pub/Sub API results are published to, over TLS with the function's own
credentials (`relay up --require-auth` gives its broker's); unset: Google's."""
PUSH_AUDIENCE_ENV = "RELAY_PUSH_AUDIENCE"
PUSH_ALLOWED_EMAILS_ENV = "RELAY_PUSH_ALLOWED_EMAILS"
PUSH_CERTS_URL_ENV = "RELAY_PUSH_CERTS_URL"


def _listed(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def reply_topics(
    given: Iterable[str] | None, environ: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """The validated reply-topic patterns: `given`, else RELAY_REPLY_TOPICS (ValueError if bad)."""
    patterns = list(given) if given is not None else _listed(environ.get(REPLY_TOPICS_ENV, ""))
    try:
        return tuple(check_topic_pattern(pattern) for pattern in patterns)
    except ValueError as exc:
        source = "reply_topics" if given is not None else REPLY_TOPICS_ENV
        raise ValueError(f"{source}: {exc}") from None


def blob_stores(
    given: Iterable[BlobStore] | None, environ: Mapping[str, str] = os.environ
) -> BlobStores:
    """The blob stores: `given`, else parsed from RELAY_BLOB_STORES (ValueError if bad)."""
    if given is not None:
        return BlobStores(given)
    try:
        return BlobStores.parse(environ.get(BLOB_STORES_ENV, ""))
    except ValueError as exc:
        raise ValueError(f"{BLOB_STORES_ENV}: {exc}") from None


def max_delivery_attempts(environ: Mapping[str, str] = os.environ) -> int | None:
    """RELAY_MAX_DELIVERY_ATTEMPTS as a number, None when unset (ValueError if not one)."""
    value = environ.get(MAX_DELIVERY_ATTEMPTS_ENV, "").strip()
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_DELIVERY_ATTEMPTS_ENV}={value!r} is not a positive number")
    return int(value)
