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

from relay.broker._admin import DEFAULT_ADMIN_OPS_PER_MINUTE, AdminQuota
from relay.broker._behaviour import Behaviour
from relay.broker._config import is_loopback
from relay.broker._control import Control
from relay.broker._core import Broker
from relay.broker._grpc import handlers
from relay.broker._http import start_http
from relay.broker._oidc import TokenSigner
from relay.broker._push_tokens import PushTokens
from relay.broker._pusher import PushManager

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
    any; `_push_tokens`). `reset_store`: start with an empty store, the old one moved aside.
    `insecure_listen`: allow a `host` other than loopback (there is no authentication).
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
    reset_store: bool = False
    insecure_listen: bool = False


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

    @property
    def ready_line(self) -> str:
        """The line logged once the broker serves."""
        host = self.options.host
        return (
            f"relay broker ready grpc={host}:{self.grpc_port} "
            f"http=http://{host}:{self.http_port} data={self.options.data_dir}"
        )

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
            push_tokens=PushTokens(options.push_service_accounts, options.push_audiences),
        )
        self.broker = broker
        control = Control(broker, AdminQuota(options.admin_ops_per_minute))
        self.control = control
        broker.load()
        signer = TokenSigner.load_or_create(options.data_dir)
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
        try:
            self.grpc_port = self._server.add_insecure_port(f"{options.host}:{options.port}")
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
        # No session-wide connection cap: each push subscription has its own concurrency cap.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._pushers = PushManager(broker, self._session, signer)
        if not is_loopback(options.host):
            _LOG.warning("%s", self._exposed())

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
        if broker is not None:
            await broker.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _check_listen(options: ServerOptions) -> None:
    if is_loopback(options.host) or options.insecure_listen:
        return
    raise ListenRefused(
        f"--host {options.host!r} is not a loopback address, and the broker has no "
        "authentication yet: anyone who reaches it could read, publish and delete every "
        "message and have push tokens signed. Listen on 127.0.0.1 (the default), or add "
        "--insecure-listen to accept that."
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
