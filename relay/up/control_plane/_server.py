"""Compose the control plane: gRPC (FunctionService, Operations), the HTTP side, routes and
revisions; start on free ports (or the gRPC port asked for), stop everything on close."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from relay.up._process import Child
from relay.up.control_plane._http import HttpSide, Uploads
from relay.up.control_plane._revisions import Revisions
from relay.up.control_plane._routes import Routes
from relay.up.control_plane._service import FunctionService

_HOST = "127.0.0.1"


class ControlPlane:
    """A running local Cloud Functions API; `host` is what CLOUD_FUNCTIONS_EMULATOR_HOST takes."""

    def __init__(
        self,
        root: Path,
        *,
        pubsub_host: str,
        certs_url: str,
        invokers: Callable[[str], tuple[str, ...]] = lambda _: (),
        port: int = 0,
        base_env: Mapping[str, str] | None = None,
        routes: Routes | None = None,
        identities: Mapping[str, Mapping[str, str]] | None = None,
        pubsub_client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """`routes`: the functions' stable URLs, when they had to be known before (relay up gives
        them to the broker's push allow lists); the control plane closes them. `identities`
        (--require-auth): the environment of a process running as each service account, what
        a revision runs as (`Revisions`). `pubsub_client_kwargs`: what its own Pub/Sub clients
        (Eventarc's trigger subscriptions) take, e.g. the operator's credentials and the API
        endpoint of a --require-auth broker; default an insecure channel to `pubsub_host`."""
        self.root = root
        self._pubsub_host = pubsub_host
        self._pubsub_client_kwargs = pubsub_client_kwargs
        self._clients: dict[str, Any] = {}
        self.routes = routes or Routes(_HOST)
        self.revisions = Revisions(
            self.routes,
            pubsub_host=pubsub_host,
            certs_url=certs_url,
            invokers=invokers,
            base_env=os.environ if base_env is None else base_env,
            identities=identities,
        )
        uploads = Uploads()
        self.http = HttpSide(uploads, root / "logs", _HOST)
        self.service = FunctionService(
            root=root,
            uploads=uploads,
            upload_url=self.http.url,
            logs_url=f"{self.http.url}/logs",
            revisions=self.revisions,
            subscriptions=lambda: self._client("subscriber"),
            publisher=lambda: self._client("publisher"),
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        for handler in self.service.handlers():
            self._server.add_generic_rpc_handlers((handler,))
        bound = self._server.add_insecure_port(f"{_HOST}:{port}")
        if bound == 0:
            self.routes.close()
            self.http.close()
            raise OSError(f"cannot listen on {_HOST}:{port}")
        self._server.start()
        self.host = f"{_HOST}:{bound}"

    def url(self, function: str) -> str:
        """The stable URL of a function (by resource name), deployed or not yet."""
        return self.revisions.url(function)

    def adopt(self, function: str, child: Child, port: int) -> None:
        """Serve `function` from relay up's own process on `port` until a deploy replaces it."""
        self.revisions.adopt(function, child, port)

    def dead(self) -> list[str]:
        """Serving processes that exited."""
        return self.revisions.dead()

    def close(self) -> None:
        """Stop serving RPCs, every function process, the routes and the HTTP side."""
        self._server.stop(grace=2).wait(5)
        self.revisions.close()
        self.routes.close()
        self.http.close()
        for client in self._clients.values():
            client.transport.close()

    def _client(self, kind: str) -> Any:
        """A Pub/Sub admin client for the broker (trigger subscriptions)."""
        if kind not in self._clients:
            from google.pubsub_v1 import PublisherClient, SubscriberClient
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            kwargs: dict[str, Any]
            if self._pubsub_client_kwargs is not None:
                kwargs = dict(self._pubsub_client_kwargs)
            else:
                channel = grpc.insecure_channel(self._pubsub_host)
                transport = (
                    SubscriberGrpcTransport if kind == "subscriber" else PublisherGrpcTransport
                )
                kwargs = {"transport": transport(channel=channel)}
            client = SubscriberClient if kind == "subscriber" else PublisherClient
            self._clients[kind] = client(**kwargs)
        return self._clients[kind]
