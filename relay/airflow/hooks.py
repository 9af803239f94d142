"""RelayHook: credentials from an Airflow Google connection, Pub/Sub clients once per process.

Credentials come from GoogleBaseHook (ADC, key file, impersonation chain, or anonymous through the
connection extra `is_anonymous` for an emulator). The google-cloud-pubsub clients honour
PUBSUB_EMULATOR_HOST themselves. Clients are cached per process (and, for asyncio clients, per event
loop) by (connection id, impersonation chain, emulator host): thousands of tasks or triggers in one
process share one channel, and google-auth refreshes the cached credentials as they expire.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

from relay.airflow._identity import ImpersonationChain, client_key
from relay.airflow._lifetimes import DEFAULT_SUBSCRIPTION_RETENTION, DEFAULT_SUBSCRIPTION_TTL
from relay.airflow._names import (
    WAIT_ACK_DEADLINE_SECONDS,
    check_project_id,
    subscription_path,
    task_subscription,
    topic_path,
)
from relay.airflow.exceptions import RelayConfigError, RelayPublishError
from relay.protocol import Message, group_filter

# How far before its creation a new task subscription is sought (clock skew to Google included).
SEEK_MARGIN = timedelta(seconds=30)
_CLEANUP_SECONDS = 120.0
_T = TypeVar("_T")


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
    :param wait_project: project of the task subscriptions (default: the connection's extra
        `wait_project`, else `project_id`): keeps their grants apart (their admin quota goes to
        the credentials' project, or the connection's `quota_project_id`).
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
        wait_project: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, **kwargs)
        self._explicit_chain = impersonation_chain
        self._project_override = project_id
        self._wait_project = wait_project

    # -- identity ---------------------------------------------------------------------------------

    @property
    def key(self) -> tuple[Any, ...]:
        """The client-cache key of this hook."""
        return client_key(self.gcp_conn_id, self._explicit_chain)

    @property
    def is_anonymous(self) -> bool:
        """True when the connection asks for anonymous credentials (an emulator or local broker)."""
        return bool(self._get_field("is_anonymous", False))

    def get_client_options(self, api_endpoint_override: str | None = None) -> Any:
        """Pub/Sub client options: the connection's extra `api_endpoint` (host:port of a Pub/Sub
        API over TLS, e.g. `relay broker --require-auth`) unless one is passed; Google's default
        endpoint without either. Unlike PUBSUB_EMULATOR_HOST it keeps TLS and credentials."""
        endpoint = api_endpoint_override or self._get_field("api_endpoint", None) or None
        return super().get_client_options(api_endpoint_override=endpoint)

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
        deadline: float | None = None,
    ) -> list[str]:
        """Publish messages (batched), re-sending only the failed ones with jittered backoff, at
        most `attempts` times and not past `deadline` (epoch seconds).

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
            pause = min(backoff * 2 ** (attempt - 1), 10.0) * (0.5 + random.random())
            if attempt == attempts or (deadline is not None and time.time() + pause > deadline):
                break
            time.sleep(pause)
        raise RelayPublishError(f"could not publish to {path}: {_why(last, attempt)}")

    # -- completion subscriptions -----------------------------------------------------------------

    @property
    def wait_project_id(self) -> str:
        """The project of task subscriptions: the hook's `wait_project`, else the connection's
        extra `wait_project`, else the project for short names."""
        project = self._wait_project or self._get_field("wait_project", None)
        return check_project_id(project) if project else self.relay_project_id

    def create_task_subscription(
        self,
        completion_topic: str,
        group: str,
        *,
        deadline: float,
        ttl: timedelta | None = DEFAULT_SUBSCRIPTION_TTL,
        retention: timedelta = DEFAULT_SUBSCRIPTION_RETENTION,
    ) -> str:
        """Create (idempotently) the subscription that keeps the results of one correlation-id
        group, then Seek it back to before its creation.

        Must run before the requests are published: a subscription gets only the messages
        published after it exists, and Google promises nothing for the moment right after
        CreateSubscription returns; the Seek replays that window from the topic's message
        retention (`relay provision` turns it on for the completion topic). A subscription that
        existed already (a retried task instance) is not sought: it may hold results of the
        earlier try. Transient errors (quota included) are retried until `deadline`.
        """
        from google.api_core.exceptions import AlreadyExists, GoogleAPICallError

        topic = self.topic_path(completion_topic)
        path = task_subscription(self.wait_project_id, topic, group)
        request: dict[str, Any] = {
            "name": path,
            "topic": topic,
            "filter": group_filter(group),
            "ack_deadline_seconds": WAIT_ACK_DEADLINE_SECONDS,
            "expiration_policy": {} if ttl is None else {"ttl": ttl},
            "message_retention_duration": retention,
            "labels": {"relay": "task"},
        }
        subscriber = self.subscriber()
        started = time.time()
        try:
            self._retrying(
                f"create subscription {path}",
                lambda: subscriber.create_subscription(request=request, retry=None, timeout=30),
                deadline,
            )
        except AlreadyExists:
            self.log.info("completion subscription %s already exists (task retry?)", path)
            return path
        back_to = datetime.fromtimestamp(started, UTC) - SEEK_MARGIN
        try:
            self._retrying(
                f"seek {path}",
                lambda: subscriber.seek(
                    request={"subscription": path, "time": back_to}, retry=None, timeout=30
                ),
                deadline,
            )
        except GoogleAPICallError as exc:
            self.log.warning(
                "could not seek %s to its creation time (%r): a result published in the moment "
                "after creating it could be missed; does the completion topic retain messages?",
                path,
                exc,
            )
        return path

    def delete_subscriptions(self, paths: Sequence[str]) -> None:
        """Delete subscriptions (transient errors retried for a while), ignoring ones already
        gone; errors are logged, never raised (the expiration policy removes what is left)."""
        from google.api_core.exceptions import GoogleAPIError, NotFound

        subscriber = self.subscriber()
        give_up = time.time() + _CLEANUP_SECONDS
        for path in paths:
            try:
                self._retrying(
                    f"delete subscription {path}",
                    functools.partial(
                        subscriber.delete_subscription,
                        request={"subscription": path},
                        retry=None,
                        timeout=30,
                    ),
                    give_up,
                )
            except NotFound:
                pass
            except (GoogleAPIError, RelayPublishError) as exc:
                self.log.warning("could not delete subscription %s (it will expire): %s", path, exc)

    def _retrying(self, what: str, call: Callable[[], _T], deadline: float) -> _T:
        """`call()`, retried with jittered exponential backoff on RESOURCE_EXHAUSTED,
        UNAVAILABLE and DEADLINE_EXCEEDED until `deadline` (epoch seconds); RelayPublishError
        then, naming the quota when that was the refusal."""
        from google.api_core.exceptions import (
            DeadlineExceeded,
            ResourceExhausted,
            ServiceUnavailable,
        )

        pause = 0.25
        for attempt in itertools.count(1):
            try:
                return call()
            except (ResourceExhausted, ServiceUnavailable, DeadlineExceeded) as exc:
                wait = pause * (0.5 + random.random())
                if time.time() + wait > deadline:
                    raise RelayPublishError(f"could not {what}: {_why(exc, attempt)}") from exc
                self.log.warning("%s: %r (attempt %d); retrying", what, exc, attempt)
                time.sleep(wait)
                pause = min(pause * 2, 10.0)
        raise AssertionError("unreachable")

    # -- the direct HTTPS path: a function's URL, ID tokens ----------------------------------------

    def function_url(self, function: str, region: str | None = None) -> str:
        """The URL of a deployed Cloud Function (`service_config.uri` from GetFunction).

        `function` is a full `projects/P/locations/R/functions/F` name, or an id with `region`
        (the project is the hook's). Honours CLOUD_FUNCTIONS_EMULATOR_HOST (relay up).
        """
        from google.api_core import exceptions

        from relay.deploy import function_client
        from relay.protocol import function_path, parse_function_path

        if parse_function_path(function) is not None:
            name = function
        elif region:
            name = function_path(self.relay_project_id, region, function)
        else:
            raise RelayConfigError(
                f"function {function!r} needs a region (or a full projects/P/locations/R/"
                "functions/F name)"
            )
        credentials = None if self.is_anonymous else self.get_credentials()
        client = function_client(credentials)
        try:
            found = client.get_function(request={"name": name}, timeout=30)
        except exceptions.NotFound as exc:
            raise RelayConfigError(f"function {name} is not deployed: {exc.message}") from exc
        finally:
            client.transport.close()
        uri = str(found.service_config.uri)
        if not uri:
            raise RelayConfigError(f"function {name} has no URL yet (state {found.state.name})")
        return uri

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


def _why(error: BaseException | None, attempts: int) -> str:
    """Why a retried Pub/Sub call gave up; names the quota when Pub/Sub answered
    RESOURCE_EXHAUSTED."""
    from google.api_core.exceptions import ResourceExhausted

    text = f"{error!r} (after {attempts} attempt(s), at the task's deadline)"
    if isinstance(error, ResourceExhausted):
        text += (
            "; RESOURCE_EXHAUSTED is a quota: administrator operations (creating, seeking and "
            "deleting subscriptions) are capped at 6,000 per minute per project, charged to the "
            "caller's project, and publishing has a throughput quota (docs/airflow.md, "
            '"Quotas and costs"; the connection\'s quota_project_id charges them to another '
            "project, e.g. the wait_project)"
        )
    return text
