"""Copy one direction of a TCP connection: what the broker's CONNECT proxy and relay up's routes
both do with the two halves of each connection they forward."""

from __future__ import annotations

import asyncio

__all__ = ["pipe"]

_CHUNK = 64 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until end of stream, then half-close `writer` (close it when
    the connection breaks)."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
