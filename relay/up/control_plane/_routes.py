"""Stable function URLs: one listening port per function, forwarded to its serving revision.

A Cloud Run service keeps its URL while revisions come and go; push subscriptions and Airflow
point at that URL. Here each function's port forwards TCP connections to the process of its
current revision, so a deploy starts the new revision beside the old one, switches new connections
to it once it answers, and only then stops the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

from relay._pipe import pipe


class Routes:
    """Listening ports forwarded to backends, served by one asyncio loop on its own thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._backends: dict[str, int] = {}
        self._ports: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay-routes")
        self._thread.daemon = True
        self._thread.start()

    def open(self, name: str) -> int:
        """The public port of `name` (opened on first use, on a free port)."""
        if name not in self._ports:
            future = asyncio.run_coroutine_threadsafe(self._listen(name), self._loop)
            self._ports[name] = future.result(timeout=10)
        return self._ports[name]

    def url(self, name: str) -> str:
        """`http://HOST:PORT`, the stable URL of `name` (like a Cloud Run service URL: no path)."""
        return f"http://{self.host}:{self.open(name)}"

    def point(self, name: str, backend_port: int | None) -> None:
        """Send `name`'s new connections to `backend_port` (None: refuse them)."""
        if backend_port is None:
            self._backends.pop(name, None)
        else:
            self._backends[name] = backend_port

    def close(self) -> None:
        """Stop listening and end the loop."""

        async def stop() -> None:
            for server in self._servers:
                server.close()
            # Connections still open (keep-alive pushes) end with the loop.
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _listen(self, name: str) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        server = await asyncio.start_server(
            lambda reader, writer: self._forward(name, reader, writer), sock=sock
        )
        self._servers.append(server)
        return int(sock.getsockname()[1])

    async def _forward(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        backend = self._backends.get(name)
        try:
            if backend is None:
                raise ConnectionRefusedError(name)
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, backend)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )
        for end in (upstream_writer, writer):
            with contextlib.suppress(OSError):
                end.close()
