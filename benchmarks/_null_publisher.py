"""A do-nothing Pub/Sub Publish server: the ceiling a Python gRPC broker can reach on this machine.

It parses each PublishRequest (as any server must) and answers with fresh message ids, storing
nothing. `python -m benchmarks._null_publisher [--sync]` prints `ready PORT` on stdout and serves
until killed. Default is grpc.aio (the broker's stack); `--sync` uses the thread-pool server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from concurrent import futures
from typing import Any

import grpc
from google.pubsub_v1.types import PublishRequest, PublishResponse

_METHOD = "Publish"
_SERVICE = "google.pubsub.v1.Publisher"
_REQUEST = PublishRequest.pb()
_RESPONSE = PublishResponse.pb()


def _answer(request: Any, counter: itertools.count[int]) -> Any:
    start = next(counter)
    count = len(request.messages)
    # Reserve a block of ids: one counter step per request, ids unique within the run.
    return _RESPONSE(message_ids=[f"{start}-{i}" for i in range(count)])


def _handler(behavior: Any) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=_REQUEST.FromString,
        response_serializer=_RESPONSE.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: method})


async def _serve_aio(host: str) -> None:
    counter = itertools.count()

    async def publish(request: Any, context: Any) -> Any:
        return _answer(request, counter)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handler(publish),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(f"ready {port}", flush=True)
    await server.wait_for_termination()


def _serve_sync(host: str) -> None:
    counter = itertools.count()

    def publish(request: Any, context: Any) -> Any:
        return _answer(request, counter)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((_handler(publish),))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    print(f"ready {port}", flush=True)
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sync", action="store_true", help="thread-pool server instead of aio")
    args = parser.parse_args(argv)
    if args.sync:
        _serve_sync(args.host)
    else:
        asyncio.run(_serve_aio(args.host))


if __name__ == "__main__":
    main(sys.argv[1:])
