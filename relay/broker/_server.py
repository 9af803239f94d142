"""Run the broker: gRPC (google.pubsub.v1) + the HTTP side, until asked to stop."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import grpc

from relay.broker._access import Access, identity_project
from relay.broker._admin import DEFAULT_ADMIN_OPS_PER_MINUTE, AdminQuota
from relay.broker._auth import Auth
from relay.broker._behaviour import Behaviour
from relay.broker._config import is_loopback
from relay.broker._connect import ConnectProxy
from relay.broker._control import Control
from relay.broker._core import Broker
from relay.broker._grants import Grants
from relay.broker._grpc import handlers
from relay.broker._http import start_http
from relay.broker._iam_credentials import HOST as IAM_CREDENTIALS_HOST
from relay.broker._iam_credentials import IamCredentials, start_iam_credentials
from relay.broker._metadata import Identity, start_metadata
from relay.broker._oidc import TokenSigner
from relay.broker._push_tokens import PushTokens
from relay.broker._pusher import PushManager
from relay.broker._tls import ServerTls
from relay.broker._tokens import DEFAULT_TOKEN_LIFETIME, TokenIssuer

__all__ = ["BrokerServer", "ListenRefused", "ServerOptions", "run"]

_LOG = logging.getLogger("relay.broker")
_MAX_GRPC_MESSAGE = 64 * 1024 * 1024
_SHUTDOWN_GRACE = 5.0
_MAX_PENDING_CALLS = 100_000


@dataclass(frozen=True)
class ServerOptions:
    """Where the broker listens and keeps its data, and how much like Google it behaves.

    `behaviour`: what Google is allowed to do, shown on demand (`Behaviour.google(seed)` for all
    of it). `admin_ops_per_minute`: the per-project administrator-operation quota (always on).
    `control`: serve POST /control (change behaviour, inject faults, advance the clock).
    `push_service_accounts`, `push_audiences`: the only values push tokens are signed for (None:
    any; `_push_tokens`); `id_token_audiences`: more audiences of the ID tokens its metadata
    servers sign. `reset_store`: start with an empty store, the old one moved aside.
    `insecure_listen`: allow a `host` other than loopback.
    `require_auth`: gRPC over TLS, a bearer token from the broker's token service and the IAM
    permission Google requires on every call (`_auth`); `token_lifetime` (seconds) of its access
    and ID tokens; `identities`: service accounts that get a metadata server each; `grants`: the
    --grants file (`_grants`). It also serves the IAM Credentials API that impersonation chains
    call, behind a CONNECT proxy (`_iam_credentials`, `_connect`).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8085
    http_port: int | None = None  # None: port + 1 (or a free port when port is 0)
    push_concurrency: int = 32
    fsync: bool = False
    behaviour: Behaviour = field(default_factory=Behaviour)
    admin_ops_per_minute: int = DEFAULT_ADMIN_OPS_PER_MINUTE
    control: bool = False
    push_service_accounts: frozenset[str] | None = None
    push_audiences: frozenset[str] | None = None
    id_token_audiences: frozenset[str] = frozenset()
    reset_store: bool = False
    insecure_listen: bool = False
    require_auth: bool = False
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    identities: tuple[str, ...] = ()
    grants: Path | None = None


class ListenRefused(Exception):
    """`host` is not loopback and `insecure_listen` was not given: the broker does not start."""


class BrokerServer:
    """A started broker; `stop()` shuts it down cleanly (in-flight publishes finish first)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.broker: Broker | None = None
        self.control: Control | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._server: Any = None
        self._runner: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._pushers: PushManager | None = None
        self._lock: IO[bytes] | None = None
        self.tls: ServerTls | None = None
        self.metadata: dict[str, int] = {}  # identity email -> its metadata server's port
        self._metadata_runners: list[Any] = []
        self.iam_proxy_port = 0  # the CONNECT proxy to the IAM Credentials API (--require-auth)
        self._iam_proxy: ConnectProxy | None = None
        self._iam_runner: Any = None

    @property
    def ready_line(self) -> str:
        """The line logged once the broker serves (with --require-auth: the CA file clients
        trust, `metadata:EMAIL=HOST:PORT` for each identity's metadata server and the proxy
        `https_proxy` takes for the IAM Credentials API)."""
        host = self.options.host
        line = (
            f"relay broker ready grpc={host}:{self.grpc_port} "
            f"http=http://{host}:{self.http_port} data={self.options.data_dir}"
        )
        if self.tls is not None:
            line += f" ca={self.tls.ca_file}"
            line += "".join(
                f" metadata:{email}={host}:{port}" for email, port in self.metadata.items()
            )
            proxy_host = f"[{host}]" if ":" in host else host
            line += f" iam-proxy=http://{proxy_host}:{self.iam_proxy_port}"
        return line

    async def start(self) -> None:
        """Load the store, bind both ports and start serving."""
        options = self.options
        _check_listen(options)
        options.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = _lock_data_dir(options.data_dir)
        broker = Broker(
            options.data_dir,
            push_concurrency=options.push_concurrency,
            fsync=options.fsync,
            behaviour=options.behaviour,
            reset_store=options.reset_store,
            push_tokens=PushTokens(
                options.push_service_accounts, options.push_audiences, options.id_token_audiences
            ),
        )
        self.broker = broker
        broker.load()
        signer = TokenSigner.load_or_create(options.data_dir)
        auth = self._auth(broker) if options.require_auth else None
        control = Control(broker, AdminQuota(options.admin_ops_per_minute), auth)
        self.control = control
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_GRPC_MESSAGE),
                ("grpc.max_send_message_length", _MAX_GRPC_MESSAGE),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", 100_000),
                # Core queues calls that arrive before the event loop has asked for them and, past
                # 1,000 queued (the default), cancels new ones at random: a burst of StreamingPull
                # streams (subscribers reconnecting) on a busy broker would lose streams.
                ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_CALLS),
            ]
        )
        self._server.add_generic_rpc_handlers(handlers(broker, control))
        address = f"{options.host}:{options.port}"
        try:
            if options.require_auth:
                self.tls = ServerTls.load_or_create(options.data_dir, options.host)
                credentials = grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)])
                self.grpc_port = self._server.add_secure_port(address, credentials)
            else:
                self.grpc_port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {options.host}:{options.port} (gRPC): the port is in use or "
                "the address is not local"
            ) from exc
        await self._server.start()
        http_port = options.http_port
        if http_port is None:
            http_port = options.port + 1 if options.port else 0
        try:
            self._runner, self.http_port = await start_http(
                options.host, http_port, signer, control, control_enabled=options.control
            )
        except OSError as exc:
            raise OSError(f"cannot listen on {options.host}:{http_port} (HTTP): {exc}") from exc
        if auth is not None:
            await self._serve_metadata(auth.issuer, signer)
            await self._serve_iam_credentials(auth, signer)
        # No session-wide connection cap: each push subscription has its own concurrency cap.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        lifetime = options.token_lifetime if options.require_auth else DEFAULT_TOKEN_LIFETIME
        self._pushers = PushManager(broker, self._session, signer, lifetime)
        if not is_loopback(options.host):
            _LOG.warning("%s", self._exposed())

    def _auth(self, broker: Broker) -> Auth:
        """The token service (on the broker's clock) and the access checks of --require-auth."""
        options = self.options
        clock = broker.clock
        issuer = TokenIssuer.load_or_create(
            options.data_dir, lambda: clock.wall_ns() / 1e9, options.token_lifetime
        )
        grants = Grants.load(options.grants) if options.grants is not None else Grants()
        return Auth(issuer, Access(grants, broker.iam), broker)

    async def _serve_metadata(self, issuer: TokenIssuer, signer: TokenSigner) -> None:
        """One metadata server per identity, each on a free port of the broker's host."""
        assert self.broker is not None
        for email in self.options.identities:
            project = identity_project(email)
            if project is None:
                raise ValueError(f"identity {email!r} is not NAME@PROJECT.iam.gserviceaccount.com")
            identity = Identity(email, project, issuer, signer, self.broker.push_tokens)
            try:
                runner, port = await start_metadata(self.options.host, 0, identity)
            except OSError as exc:
                raise OSError(f"cannot serve the metadata server of {email}: {exc}") from exc
            self._metadata_runners.append(runner)
            self.metadata[email] = port

    async def _serve_iam_credentials(self, auth: Auth, signer: TokenSigner) -> None:
        """The IAM Credentials API over TLS on a free port, reached through a CONNECT proxy on
        another (google-auth's URL names iamcredentials.googleapis.com; `_iam_credentials`)."""
        assert self.broker is not None
        service = IamCredentials(auth, signer, self.broker.push_tokens)
        host = self.options.host
        self._iam_runner, port = await start_iam_credentials(host, self.options.data_dir, service)
        self._iam_proxy = ConnectProxy({f"{IAM_CREDENTIALS_HOST}:443": (host, port)})
        try:
            self.iam_proxy_port = await self._iam_proxy.start(host, 0)
        except OSError as exc:
            raise OSError(f"cannot serve the IAM Credentials proxy: {exc}") from exc

    def _exposed(self) -> str:
        """The warning of a broker listening beyond loopback: what anyone who reaches it can do."""
        options = self.options
        accounts = options.push_service_accounts
        signed = "any service account" if accounts is None else f"{len(accounts)} account(s)"
        control = (
            ", change its behaviour, inject faults and advance its clock (POST /control)"
            if options.control
            else ""
        )
        if options.require_auth:
            ports = ", ".join(str(port) for port in self.metadata.values()) or "none"
            return (
                f"relay broker listens on {options.host} (--insecure-listen, --require-auth): "
                f"whoever reaches the metadata servers of its identities (ports {ports}) gets "
                "their tokens and acts as them, as every process on a VM can with its metadata "
                f"server; HTTP port {self.http_port} has no authentication{control}."
            )
        return (
            f"relay broker listens on {options.host} WITHOUT AUTHENTICATION (--insecure-listen): "
            f"whoever reaches gRPC port {self.grpc_port} or HTTP port {self.http_port} can read, "
            "publish and delete every topic, subscription and message, and create push "
            "subscriptions, which make this broker POST to any https:// URL and to http:// on "
            f"this machine's loopback, with push tokens signed for {signed}{control}."
        )

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish, end streams, close the store."""
        broker = self.broker
        if broker is not None:
            broker.closing = True
            for sub in broker.subs.values():
                for consumer in list(sub.consumers) + list(sub.waiters):
                    consumer.wake()
        if self._server is not None:
            await self._server.stop(_SHUTDOWN_GRACE)
        if self._pushers is not None:
            await self._pushers.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._iam_proxy is not None:
            await self._iam_proxy.close()
            self._iam_proxy = None
        if self._iam_runner is not None:
            await self._iam_runner.cleanup()
            self._iam_runner = None
        for runner in self._metadata_runners:
            await runner.cleanup()
        self._metadata_runners.clear()
        if broker is not None:
            await broker.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _check_listen(options: ServerOptions) -> None:
    if is_loopback(options.host) or options.insecure_listen:
        return
    if options.require_auth:
        exposed = "its identities' metadata servers give their tokens to anyone who reaches them"
    else:
        exposed = (
            "the broker has no authentication without --require-auth: anyone who reaches it "
            "could read, publish and delete every message and have push tokens signed"
        )
    raise ListenRefused(
        f"--host {options.host!r} is not a loopback address, and {exposed}. Listen on "
        "127.0.0.1 (the default), or add --insecure-listen to accept that."
    )


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the data dir: two brokers on one store would diverge."""
    handle = (data_dir / "broker.lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise OSError(f"the data dir {data_dir} is in use by another relay broker") from exc
    return handle


async def run(options: ServerOptions) -> None:
    """Serve until SIGINT/SIGTERM, logging the ready line once both ports are bound."""
    server = BrokerServer(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        _LOG.info("%s", server.ready_line)
        await stop.wait()
        _LOG.info("relay broker stopping")
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
