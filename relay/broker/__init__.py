"""relay broker: a persistent, Pub/Sub-API-compatible broker for local runs and tests.

Run it with `relay broker` (see `relay.broker.cli`) and point the google-cloud-pubsub clients at
it with PUBSUB_EMULATOR_HOST, or with `--require-auth` at its API endpoint over TLS with real
credentials from its metadata servers (docs/broker.md). In-process use:
`BrokerServer(ServerOptions(data_dir=...))`; `ServerOptions(behaviour=Behaviour.google(seed=1))`
behaves in every way Google is allowed to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Behaviour", "BrokerServer", "ServerOptions"]

if TYPE_CHECKING:
    from relay.broker._behaviour import Behaviour
    from relay.broker._server import BrokerServer, ServerOptions


def __getattr__(name: str) -> Any:
    # Lazy: importing relay.broker must not pull grpc/aiohttp in (the CLI stays fast).
    if name == "Behaviour":
        from relay.broker import _behaviour

        return _behaviour.Behaviour
    if name in __all__:
        from relay.broker import _server

        return getattr(_server, name)
    raise AttributeError(name)
