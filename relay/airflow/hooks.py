"""RelayHook: credentials from an Airflow Google connection, Pub/Sub clients once per process.

Credentials come from GoogleBaseHook (ADC, key file, impersonation chain, or anonymous through the
connection extra `is_anonymous` for an emulator). The google-cloud-pubsub clients honour
PUBSUB_EMULATOR_HOST themselves. Clients are cached per process (and, for asyncio clients, per event
loop) by (connection id, impersonation chain, emulator host): thousands of tasks or triggers in one
process share one channel, and google-auth refreshes the cached credentials as they expire.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

from relay.airflow._identity import ImpersonationChain, client_key
from relay.airflow._names import (
    WAIT_ACK_DEADLINE_SECONDS,
    subscription_path,
    topic_path,
    wait_filter,
    wait_subscription,
)
from relay.airflow.exceptions import RelayConfigError, RelayPublishError
from relay.protocol import Message

# Real Pub/Sub refuses expiration TTLs under one day and retention under ten minutes.
DEFAULT_SUBSCRIPTION_TTL = timedelta(days=1)
_MIN_RETENTION = timedelta(minutes=10)

# relay's reads of a completion subscription are peeks that must not block: they use Pull with
# return_immediately, which Pub/Sub and relay broker honour although the client calls it deprecated.
warnings.filterwarnings(
    "ignore", message="The return_immediately flag is deprecated", category=DeprecationWarning
)

_LOCK = threading.Lock()
_SYNC_CLIENTS: dict[tuple[Any, ...], Any] = {}
_ASYNC_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)
_ID_TOKEN_CREDENTIALS: dict[tuple[Any, ...], Any] = {}


class RelayHook(GoogleBaseHook):
    """Pub/Sub and ID-token access for relay, on the Google provider's credential handling.

    :param gcp_conn_id: Airflow connection of type google_cloud_platform.
    :param impersonation_chain: service account (or chain) to impersonate (short-term credentials).
    :param project_id: project for short topic/subscription names; defaults to the connection's.
    """

    conn_name_attr = "gcp_conn_id"
    default_conn_name = "google_cloud_default"
    conn_type = "google_cloud_platform"
    hook_name = "relay (Google Cloud)"

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        project_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, **kwargs)
        self._explicit_chain = impersonation_chain
        self._project_override = project_id

    # -- identity ---------------------------------------------------------------------------------

    @property
    def key(self) -> tuple[Any, ...]:
        """The client-cache key of this hook."""
        return client_key(self.gcp_conn_id, self._explicit_chain)

    @property
    def is_anonymous(self) -> bool:
        """True when the connection asks for anonymous credentials (an emulator or local broker)."""
        return bool(self._get_field("is_anonymous", False))

    @property
    def relay_project_id(self) -> str:
        """The project for short names: explicit, else the connection's `project`, else ADC's."""
        project = self._project_override or self.project_id
        if not project:
            raise RelayConfigError(
                f"no project: pass project_id or set the extra 'project' on connection "
                f"{self.gcp_conn_id!r}"
            )
        return str(project)

    def topic_path(self, topic: str) -> str:
        """Full path of a topic given by short name or full path."""
        return topic_path(self.relay_project_id, topic)

    def subscription_path(self, subscription: str) -> str:
        """Full path of a subscription given by short name or full path."""
        return subscription_path(self.relay_project_id, subscription)

    # -- clients (one per process) ----------------------------------------------------------------

    def _cached(self, kind: str, build: Any) -> Any:
        key = (kind, *self.key)
        with _LOCK:
            client = _SYNC_CLIENTS.get(key)
            if client is None:
                client = _SYNC_CLIENTS[key] = build()
            return client

    def publisher(self) -> Any:
        """The process-wide google.cloud.pubsub_v1.PublisherClient for this identity."""
        from google.cloud.pubsub_v1 import PublisherClient
        from google.cloud.pubsub_v1.types import BatchSettings

        return self._cached(
            "publisher",
            lambda: PublisherClient(
                credentials=self.get_credentials(),
                client_options=self.get_client_options(),
                batch_settings=BatchSettings(max_latency=0.005),
            ),
        )

    def subscriber(self) -> Any:
        """The process-wide sync google.cloud.pubsub_v1.SubscriberClient (admin, unary pull)."""
        from google.cloud.pubsub_v1 import SubscriberClient

        return self._cached(
            "subscriber",
            lambda: SubscriberClient(
                credentials=self.get_credentials(), client_options=self.get_client_options()
            ),
        )

    def async_subscriber(self) -> Any:
        """The google.pubsub_v1.SubscriberAsyncClient of the running event loop for this identity.

        gRPC asyncio channels belong to one loop, so the cache is per loop (and dies with it).
        """
        from google.pubsub_v1 import SubscriberAsyncClient

        loop = asyncio.get_running_loop()
        with _LOCK:
            per_loop = _ASYNC_CLIENTS.setdefault(loop, {})
            client = per_loop.get(self.key)
            if client is None:
                client = per_loop[self.key] = SubscriberAsyncClient(
                    credentials=self.get_credentials(), client_options=self.get_client_options()
                )
            return client

    @staticmethod
    async def close_async_clients() -> None:
        """Close the running loop's asyncio clients (before a worker's asyncio.run ends)."""
        with _LOCK:
            clients = list(_ASYNC_CLIENTS.pop(asyncio.get_running_loop(), {}).values())
        for client in clients:
            await client.transport.close()

    # -- publishing -------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        messages: Sequence[Message],
        *,
        attempts: int = 5,
        timeout: float = 30.0,
        backoff: float = 0.5,
    ) -> list[str]:
        """Publish messages (batched), re-sending only the failed ones with backoff.

        A retry sends the same bytes and attributes, so a request keeps its ce-id and consumers can
        de-duplicate a message that was delivered although its publish looked failed. Returns the
        Pub/Sub message ids in order; RelayPublishError names the topic and the last error.
        """
        from google.api_core.exceptions import GoogleAPIError

        path = self.topic_path(topic)
        publisher = self.publisher()
        ids: list[str | None] = [None] * len(messages)
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            todo = [i for i, mid in enumerate(ids) if mid is None]
            futures = {}
            for i in todo:
                try:
                    futures[i] = publisher.publish(path, messages[i].data, **messages[i].attributes)
                except (GoogleAPIError, OSError, RuntimeError) as exc:
                    last = exc
            for i, future in futures.items():
                try:
                    ids[i] = str(future.result(timeout=timeout))
                except (GoogleAPIError, TimeoutError, OSError) as exc:
                    last = exc
            failed = sum(mid is None for mid in ids)
            if not failed:
                return [str(mid) for mid in ids]
            self.log.warning(
                "publish to %s: %d message(s) failed (attempt %d/%d): %r",
                path,
                failed,
                attempt,
                attempts,
                last,
            )
            if attempt < attempts:
                time.sleep(min(backoff * 2 ** (attempt - 1), 10.0) * (0.5 + random.random()))
        raise RelayPublishError(
            f"could not publish to {path} after {attempts} attempt(s): {last!r}"
        )

    # -- completion subscriptions -----------------------------------------------------------------

    def create_wait_subscription(
        self,
        completion_topic: str,
        correlation_id: str,
        *,
        ttl: timedelta = DEFAULT_SUBSCRIPTION_TTL,
    ) -> str:
        """Create (idempotently) the filtered subscription keeping the result of one correlation id.

        Must run before the request is published: Pub/Sub only retains messages for subscriptions
        that exist when they are published. The expiration policy removes abandoned ones.
        """
        from google.api_core.exceptions import AlreadyExists

        topic = self.topic_path(completion_topic)
        path = wait_subscription(self.relay_project_id, topic, correlation_id)
        request = {
            "name": path,
            "topic": topic,
            "filter": wait_filter(correlation_id),
            "ack_deadline_seconds": WAIT_ACK_DEADLINE_SECONDS,
            "expiration_policy": {"ttl": ttl},
            "message_retention_duration": max(ttl, _MIN_RETENTION),
            "labels": {"relay": "wait"},
        }
        try:
            self.subscriber().create_subscription(request=request)
        except AlreadyExists:
            self.log.info("completion subscription %s already exists (task retry?)", path)
        return path

    def delete_subscriptions(self, paths: Sequence[str]) -> None:
        """Delete subscriptions, ignoring ones already gone; errors are logged, never raised."""
        from google.api_core.exceptions import GoogleAPIError, NotFound

        for path in paths:
            try:
                self.subscriber().delete_subscription(request={"subscription": path}, timeout=30)
            except NotFound:
                pass
            except GoogleAPIError as exc:
                self.log.warning("could not delete subscription %s (it will expire): %s", path, exc)

    # -- ID tokens for the direct HTTPS path ------------------------------------------------------

    def id_token_credentials(self, audience: str) -> Any | None:
        """Credentials minting OIDC ID tokens for `audience` as the connection's identity.

        None for an anonymous connection (local functions without auth). Impersonation uses the IAM
        credentials API; a metadata-server identity uses its identity endpoint; a service-account
        connection signs its own; anything else goes through google.oauth2.id_token. Cached per
        process and audience; the caller refreshes when `not credentials.valid`.
        """
        if self.is_anonymous:
            return None
        key = ("id_token", audience, *self.key)
        with _LOCK:
            cached = _ID_TOKEN_CREDENTIALS.get(key)
        if cached is not None:
            return cached
        credentials = self._build_id_token_credentials(audience)
        with _LOCK:
            return _ID_TOKEN_CREDENTIALS.setdefault(key, credentials)

    def _build_id_token_credentials(self, audience: str) -> Any:
        import google.auth.transport.requests
        from google.auth import compute_engine, impersonated_credentials
        from google.oauth2 import id_token, service_account

        base = self.get_credentials()
        request = google.auth.transport.requests.Request()
        if isinstance(base, impersonated_credentials.Credentials):
            return impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
                base, target_audience=audience, include_email=True
            )
        if isinstance(base, compute_engine.Credentials):
            return compute_engine.IDTokenCredentials(  # type: ignore[no-untyped-call]
                request, audience, use_metadata_identity_endpoint=True
            )
        if isinstance(base, service_account.Credentials):
            return service_account.IDTokenCredentials(  # type: ignore[no-untyped-call]
                base.signer,
                base.service_account_email,
                base._token_uri,  # no public accessor; the same token endpoint as the key's
                target_audience=audience,
            )
        return id_token.fetch_id_token_credentials(audience, request=request)  # type: ignore[no-untyped-call]

    def fetch_id_token(self, audience: str) -> str | None:
        """A valid ID token for `audience` (google-auth refreshes it when expired), or None."""
        import google.auth.transport.requests

        credentials = self.id_token_credentials(audience)
        if credentials is None:
            return None
        with _LOCK:
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            return str(credentials.token)
