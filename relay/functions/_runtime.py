"""`Runtime`: what one relay function is configured with, and its entry points.

Every delivery becomes a `Call` that the runtime's pipeline serves (the handler pipeline of
@relay_function, or the dead-letter pipeline). Before any of that, an HTTP request is
authenticated from its headers alone and its body read only up to the size a push can have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from relay.functions._auth import PushAuth
from relay.functions._call import Call, Response, response
from relay.functions._envelope import Delivery, from_http
from relay.functions._errors import PushAuthError, Unanswerable
from relay.functions._idempotency import IdempotencyStore
from relay.functions._publisher import ResultPublisher, default_publisher
from relay.protocol import BlobStores, SchemaRegistry
from relay.protocol import default_registry as _default_registry

Pipeline = Callable[[Call], Response]

MAX_BODY_BYTES = 16 * 1024 * 1024  # a Pub/Sub message is at most 10 MB, base64 adds a third


class BodyError(Exception):
    """The request body could not be read whole (`status`: 408 too slow, 413 too large)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Runtime:
    """Everything one relay function needs at run time; built once by the decorator."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        name: str,
        source: str,
        registry: SchemaRegistry | None,
        use_default_registry: bool,
        blob_stores: BlobStores,
        reply_topics: tuple[str, ...],
        publisher: ResultPublisher | None,
        idempotency: IdempotencyStore | None,
        publish_timeout: float,
        auth: PushAuth | None,
        max_delivery_attempts: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.name = name
        self.source = source
        self._registry = registry
        self._use_default_registry = use_default_registry
        self.blob_stores = blob_stores
        self.reply_topics = reply_topics
        self._publisher = publisher
        self.idempotency = idempotency
        self.publish_timeout = publish_timeout
        self.auth = auth
        self.max_delivery_attempts = max_delivery_attempts

    @property
    def registry(self) -> SchemaRegistry | None:
        """The schema registry (relay's default one is loaded on first use, not at import)."""
        if self._registry is None and self._use_default_registry:
            self._registry = _default_registry()
        return self._registry

    @property
    def publisher(self) -> ResultPublisher:
        """The result publisher (the instance-wide PubSubPublisher unless one was given)."""
        if self._publisher is None:
            self._publisher = default_publisher()
        return self._publisher

    def handle_http(
        self, headers: Mapping[str, str], read_body: Callable[[int], bytes]
    ) -> Response:
        """Serve one HTTP request; `headers` case-insensitive or with lower-case keys.

        The push token is checked before the body is read; `read_body(limit)` returns the body
        (more than `limit` bytes means too large) or raises BodyError.
        """
        call = Call(self, None, time.perf_counter(), headers.get("traceparent"))
        if self.auth is not None:
            try:
                self.auth.verify(headers.get("authorization"))
            except PushAuthError as exc:
                outcome = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "unauthorized")
                call.log(outcome, error=("PushAuthError", exc.reason))
                return response(exc.status, outcome, error=exc.reason)
        try:
            declared = headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise BodyError(413, f"body of {declared} bytes exceeds {MAX_BODY_BYTES}")
            body = read_body(MAX_BODY_BYTES)
            if len(body) > MAX_BODY_BYTES:
                raise BodyError(413, f"body of over {MAX_BODY_BYTES} bytes")
        except BodyError as exc:
            call.log("unanswerable", error=("Unanswerable", exc.reason))
            return response(exc.status, "unanswerable", error=exc.reason)
        try:
            call.delivery = from_http(headers, body)
        except Unanswerable as exc:
            return call.unanswerable(exc)
        return self.pipeline(call)

    def handle_delivery(self, delivery: Delivery) -> Response:
        """Serve one already unwrapped delivery."""
        return self.pipeline(Call(self, delivery, time.perf_counter()))

    def unanswerable(self, exc: Unanswerable) -> Response:
        """Answer a request that could not even be unwrapped into a delivery."""
        return Call(self, None, time.perf_counter()).unanswerable(exc)
