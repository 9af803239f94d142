"""An HTTP CONNECT proxy that tunnels only the Google API hosts the broker serves (--require-auth).

A process with `https_proxy=http://HOST:PORT` (and `no_proxy` for the broker's own addresses)
sends every HTTPS request through it, as through a corporate proxy: `CONNECT
iamcredentials.googleapis.com:443` is joined to the broker's IAM Credentials server, which
presents a certificate for that name from the broker's CA; any other target is refused (403), so
nothing leaves the machine. The proxy sees only TLS bytes, never a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from relay._pipe import pipe

__all__ = ["ConnectProxy"]

_MAX_HEAD = 16 * 1024
_HEAD_TIMEOUT = 30.0


class ConnectProxy:
    """Tunnels `CONNECT host:port` to `routes[host:port]` (a local (host, port)); refuses others."""

    def __init__(self, routes: Mapping[str, tuple[str, int]]) -> None:
        self.routes = {target.lower(): address for target, address in routes.items()}
        self.tunnels = 0
        """Tunnels opened."""
        self.refused = 0
        """CONNECTs refused (a target not routed, or not a CONNECT)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); the bound port."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=_MAX_HEAD)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end every open tunnel."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # `close` ends the tunnel; asyncio would log a cancelled connection callback
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.partition(" ")[0].lower()
        address = self.routes.get(target) if method == "CONNECT" else None
        if address is None:
            self.refused += 1
            reason = (
                f"the relay broker's proxy tunnels only to {', '.join(sorted(self.routes))}, "
                f"not {method} {target[:200]}\n"
            ).encode()
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(reason)}\r\n\r\n".encode()
                + reason
            )
            await writer.drain()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*address)
        self.tunnels += 1
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()
