"""A do-nothing Pub/Sub server: the ceiling a Python gRPC broker can reach on this machine.

It parses each PublishRequest (as any server must) and answers with fresh message ids, storing
nothing. The aio server also hands every published message at once to each open StreamingPull
stream (any subscription name; a stream sends what is queued for it, nothing held back) and
answers Acknowledge and ModifyAckDeadline with Empty: the delivery path of an ideal broker, for
subscribe() latency. `python -m benchmarks._null_publisher [--sync]` prints `ready PORT` on
stdout and serves until killed. Default is grpc.aio (the broker's stack); `--sync` uses the
thread-pool server (Publish only).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import (
    AcknowledgeRequest,
    ModifyAckDeadlineRequest,
    PublishRequest,
    PublishResponse,
    ReceivedMessage,
    StreamingPullRequest,
    StreamingPullResponse,
)

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


def _subscriber_handler(streams: set[asyncio.Queue[Any]]) -> grpc.GenericRpcHandler:
    """StreamingPull from `streams` (one queue per open stream); acks and modacks do nothing."""
    response_class = StreamingPullResponse.pb()

    async def streaming_pull(requests: Any, context: Any) -> Any:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        streams.add(queue)

        async def read() -> None:
            async for _ in requests:
                pass

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                response = response_class()
                response.received_messages.append(await queue.get())
                while not queue.empty():
                    response.received_messages.append(queue.get_nowait())
                yield response
        finally:
            streams.discard(queue)
            reader.cancel()

    async def nothing(request: Any, context: Any) -> Any:
        return empty_pb2.Empty()

    def unary(request_class: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            nothing,
            request_deserializer=request_class.pb().FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        )

    methods = {
        "StreamingPull": grpc.stream_stream_rpc_method_handler(
            streaming_pull,
            request_deserializer=StreamingPullRequest.pb().FromString,
            response_serializer=response_class.SerializeToString,
        ),
        "Acknowledge": unary(AcknowledgeRequest),
        "ModifyAckDeadline": unary(ModifyAckDeadlineRequest),
    }
    return grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", methods)


def _fan_out(request: Any, response: Any, streams: set[asyncio.Queue[Any]]) -> None:
    """Queue each published message, with its id, for every open stream."""
    received_class = ReceivedMessage.pb()
    for message, message_id in zip(request.messages, response.message_ids, strict=True):
        received = received_class(ack_id=message_id)
        received.message.CopyFrom(message)
        received.message.message_id = message_id
        for queue in streams:
            queue.put_nowait(received)


async def _serve_aio(host: str) -> None:
    counter = itertools.count()
    streams: set[asyncio.Queue[Any]] = set()

    async def publish(request: Any, context: Any) -> Any:
        response = _answer(request, counter)
        if streams:
            _fan_out(request, response, streams)
        return response

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handler(publish), _subscriber_handler(streams)))
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
