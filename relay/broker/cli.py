"""`relay broker`: run the local Pub/Sub-compatible broker in the foreground."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path

import click

__all__ = ["broker"]

# The broker's threads (event loop, SQLite writer, gRPC poller) hand work to each other for every
# Publish; with the default 5 ms GIL switch interval a woken thread can wait that long behind the
# busy event loop. 0.5 ms cut publish() -> done p50 by about a third at 1,000 Publish calls/s.
_SWITCH_INTERVAL_SECONDS = 0.0005
# Python's full (oldest-generation) collection scans every tracked object, and each unacked
# message lives in memory as a few of them: with a backlog of 0.5-1.5 M messages, full
# collections took a fifth of the broker's time and paused it for up to 0.45 s. They run every
# 10 minutes instead (Broker's garbage collection loop); young collections stay automatic.
_NO_AUTOMATIC_FULL_COLLECTION = 2**31 - 1


class _Formatter(logging.Formatter):
    """Info lines as bare messages (the ready line is parsed), others with level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=8085,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="gRPC (google.pubsub.v1) port; 0 picks a free one.",
)
@click.option(
    "--http-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="HTTP port for /healthz and /certs [default: port + 1; free if port is 0].",
)
@click.option(
    "--data-dir",
    default=".relay/broker",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the store lives.",
)
@click.option(
    "--push-concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Default cap of concurrent push requests per push subscription.",
)
@click.option(
    "--fsync/--no-fsync",
    default=False,
    show_default=True,
    help="Also survive an OS crash (slower): SQLite synchronous=FULL.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def broker(
    host: str,
    port: int,
    http_port: int | None,
    data_dir: Path,
    push_concurrency: int,
    fsync: bool,
    log_level: str,
) -> None:
    """Run the local Pub/Sub-compatible broker until SIGINT/SIGTERM.

    Point the google-cloud-pubsub clients at it with PUBSUB_EMULATOR_HOST=HOST:PORT.
    """
    from relay.broker._server import ServerOptions, run

    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("relay")
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    root.propagate = False
    options = ServerOptions(
        data_dir=data_dir.resolve(),
        host=host,
        port=port,
        http_port=http_port,
        push_concurrency=push_concurrency,
        fsync=fsync,
    )
    sys.setswitchinterval(_SWITCH_INTERVAL_SECONDS)
    gc.freeze()  # what start-up created (modules, classes) is never scanned again
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NO_AUTOMATIC_FULL_COLLECTION)
    try:
        asyncio.run(run(options))
    except OSError as exc:
        raise click.ClickException(f"cannot start the broker: {exc}") from exc
