"""relay broker: a persistent, Pub/Sub-API-compatible broker for local runs and tests.

Run it with `relay broker` (see `relay.broker.cli`) and point the google-cloud-pubsub clients at
it with PUBSUB_EMULATOR_HOST. In-process use: `BrokerServer(ServerOptions(data_dir=...))`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BrokerServer", "ServerOptions"]

if TYPE_CHECKING:
    from relay.broker._server import BrokerServer, ServerOptions


def __getattr__(name: str) -> Any:
    # Lazy: importing relay.broker must not pull grpc/aiohttp in (the CLI stays fast).
    if name in __all__:
        from relay.broker import _server

        return getattr(_server, name)
    raise AttributeError(name)
