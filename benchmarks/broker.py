"""Benchmarks of `relay broker`: publish throughput, delivery latency and rate, idle streams.

Run: `uv run --frozen python -m benchmarks.broker` (about 8 minutes; `--quick` for a smoke run).
Prints a Markdown table. Every figure is the median of several runs; each publish figure sits next
to the same load against a do-nothing Publish server (benchmarks/_null_publisher.py) on the same
machine, which is the ceiling for a Python gRPC server here. The broker and the do-nothing server
run as their own processes; the load generators run in this one.

What is measured (targets in brackets):
1. saturating publish: pre-built 1,000-message PublishRequests (1 KiB messages) sent back to back
   from 2 threads over raw gRPC channels; messages/s, durably stored [>= 50,000 msg/s];
2. stock client: `PublisherClient.publish()` per message (default batching); broker rate against
   the do-nothing server's [>= 0.9];
3. delivery latency: publish() -> subscribe() callback at 1,000 msg/s [p50 <= 5 ms, p99 <= 50 ms],
   with the stock PublisherClient at each --batch-latency; beside it the same against the
   do-nothing server, which hands each published message straight to the open streams (an ideal
   broker: what the two client libraries cost on this machine); runs interleaved. 3c: no client
   library on either side;
4. delivered rate: a backlog drained through subscribe() with acks (messages/s);
5. 2,000 idle StreamingPull streams: broker RSS and CPU over 10 s [< 5 % of a core].
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.pubsub_v1.types import (
    PublishRequest,
    PublishResponse,
    PubsubMessage,
    StreamingPullRequest,
    StreamingPullResponse,
)

PROJECT = "relay-bench"
MESSAGE = b"x" * 1024
BATCH = 1000
_READY = re.compile(r"relay broker ready grpc=(\S+) http=(\S+) data=(.+)$")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- processes under test ------------------------------------------------------------------


@dataclass
class Server:
    """A gRPC server process under test: its address and /proc readings."""

    name: str
    process: subprocess.Popen[str]
    target: str
    data_dir: Path | None = None
    log: list[str] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _drain(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        del sink[:-200]


def start_broker(data_dir: Path) -> Server:
    """Start `relay broker` on free ports and wait for its ready line."""
    # RELAY_BENCH_BROKER=/path/script.py benchmarks a variant (a script that runs the relay CLI).
    variant = os.environ.get("RELAY_BENCH_BROKER")
    launcher = [variant] if variant else ["-c", "from relay.cli import main; main()"]
    command = [
        sys.executable,
        *launcher,
        "broker",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert process.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        log.append(line.rstrip("\n"))
        match = _READY.search(line)
        if match:
            threading.Thread(target=_drain, args=(process.stderr, log), daemon=True).start()
            return Server("relay broker", process, match.group(1), data_dir, log)
    process.kill()
    raise RuntimeError("relay broker did not become ready:\n" + "\n".join(log[-30:]))


def start_null(*, sync: bool = False) -> Server:
    """Start the do-nothing Publish server and wait for its port."""
    command = [sys.executable, "-m", "benchmarks._null_publisher"] + (["--sync"] if sync else [])
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=_ROOT
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("ready "):
        process.kill()
        raise RuntimeError(f"do-nothing server failed: {line!r}")
    name = "do-nothing (sync grpc)" if sync else "do-nothing (grpc.aio)"
    return Server(name, process, f"127.0.0.1:{int(line.split()[1])}")


_ROOT = str(Path(__file__).resolve().parent.parent)


@contextlib.contextmanager
def emulator(target: str) -> Iterator[None]:
    """Point the google-cloud-pubsub clients created inside at `target`."""
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = target
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous


def create_topic(target: str, name: str, subscriptions: int = 1) -> tuple[str, list[str]]:
    """Create topic `name` with `subscriptions` pull subscriptions; return their paths."""
    from google.cloud import pubsub_v1

    with emulator(target):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(PROJECT, name)
        publisher.create_topic(name=topic)
        subs = []
        for index in range(subscriptions):
            sub = subscriber.subscription_path(PROJECT, f"{name}-sub-{index}")
            subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
            subs.append(sub)
        subscriber.close()
        publisher.transport.close()
    return topic, subs


# ---- 1. saturating publish -----------------------------------------------------------------


def saturating_publish(target: str, topic: str, seconds: float, threads: int = 2) -> float:
    """Messages/s from `threads` threads sending a pre-built 1,000-message request back to back."""
    request = PublishRequest(
        topic=topic, messages=[PubsubMessage(data=MESSAGE) for _ in range(BATCH)]
    )
    payload = PublishRequest.serialize(request)
    parse = PublishResponse.pb().FromString
    counts = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(target, options=options) as channel:
            call = channel.unary_unary(
                "/google.pubsub.v1.Publisher/Publish",
                request_serializer=None,
                response_deserializer=parse,
            )
            response = call(payload, timeout=60)  # connect + warm up outside the clock
            assert len(response.message_ids) == BATCH
            barrier.wait()
            try:
                while time.perf_counter() < stop_at[0]:
                    response = call(payload, timeout=60)
                    if len(response.message_ids) != BATCH:
                        raise RuntimeError("short PublishResponse")
                    counts[index] += BATCH
            except BaseException as exc:  # reported below, never swallowed
                errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for each in workers:
        each.start()
    stop_at[0] = time.perf_counter() + 3600
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for each in workers:
        each.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"saturating publish failed: {errors[0]!r}")
    return sum(counts) / elapsed


def publish_rpc_latency(target: str, topic: str, rate: int, seconds: float) -> tuple[float, float]:
    """Round trip of a 1-message Publish RPC sent at `rate`/s, one at a time: (p50, p99) ms."""
    request = PublishRequest(topic=topic, messages=[PubsubMessage(data=MESSAGE)])
    payload = PublishRequest.serialize(request)
    options = [("grpc.use_local_subchannel_pool", 1)]
    samples: list[int] = []
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary("/google.pubsub.v1.Publisher/Publish", request_serializer=None)
        call(payload, timeout=30)
        interval = 1.0 / rate
        started = time.perf_counter()
        for index in range(int(rate * seconds)):
            pause = started + index * interval - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            before = time.perf_counter_ns()
            call(payload, timeout=30)
            samples.append(time.perf_counter_ns() - before)
    samples.sort()
    return samples[len(samples) // 2] / 1e6, samples[int(len(samples) * 0.99)] / 1e6


# ---- 2. stock PublisherClient --------------------------------------------------------------


def stock_publish(target: str, topic: str, count: int) -> float:
    """Messages/s of `count` per-message `PublisherClient.publish()` calls (default batching)."""
    from google.cloud import pubsub_v1

    with emulator(target):
        client = pubsub_v1.PublisherClient()
    try:
        client.publish(topic, MESSAGE).result(timeout=60)  # connect outside the clock
        started = time.perf_counter()
        futures = [client.publish(topic, MESSAGE) for _ in range(count)]
        for future in futures:
            future.result(timeout=120)
        return count / (time.perf_counter() - started)
    finally:
        client.stop()
        client.transport.close()


# ---- 3 + 4. delivery through subscribe() ---------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """One latency run: publish -> callback percentiles, publish -> commit percentiles (ms)."""

    p50: float
    p99: float
    commit_p50: float
    commit_p99: float
    achieved: float


def paced_publish(target: str, topic: str, rate: int, seconds: float, max_latency: str) -> Any:
    """Run benchmarks/_paced_publisher (`max_latency` in seconds); its JSON report."""
    import json

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks._paced_publisher",
            target,
            topic,
            str(rate),
            str(int(rate * seconds)),
            max_latency,
        ],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        timeout=seconds + 180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"paced publisher failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def delivery_latency(
    target: str, topic: str, subscription: str, rate: int, seconds: float, max_latency: str
) -> Latency:
    """Publish at `rate` msg/s from another process; time publish() -> subscribe() callback."""
    from google.cloud import pubsub_v1

    total = int(rate * seconds)
    latencies: list[int] = []
    done = threading.Event()
    lock = threading.Lock()
    warm = threading.Event()

    def callback(message: Any) -> None:
        arrived = time.monotonic_ns()
        message.ack()
        if message.attributes.get("warm"):
            warm.set()
            return
        with lock:
            latencies.append(arrived - int(message.attributes["t"]))
            if len(latencies) >= total:
                done.set()

    with emulator(target):
        warmer = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    stream = subscriber.subscribe(subscription, callback)
    try:
        deadline = time.monotonic() + 30
        while not warm.is_set() and time.monotonic() < deadline:
            warmer.publish(topic, b"warm", warm="1").result(timeout=30)
            warm.wait(1.0)
        warmer.stop()
        if not warm.is_set():
            raise RuntimeError("subscriber never received the warm-up message")
        report = paced_publish(target, topic, rate, seconds, max_latency)
        if not done.wait(60):
            raise RuntimeError(f"only {len(latencies)} of {total} messages delivered")
    finally:
        stream.cancel()
        with contextlib.suppress(Exception):
            stream.result(timeout=10)
        subscriber.close()
    ordered = sorted(latencies)
    return Latency(
        p50=ordered[len(ordered) // 2] / 1e6,
        p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6,
        commit_p50=report["commit_p50_ms"],
        commit_p99=report["commit_p99_ms"],
        achieved=report["achieved"],
    )


async def _raw_delivery_latency(
    target: str, topic: str, subscription: str, rate: int, seconds: float
) -> tuple[float, float]:
    total = int(rate * seconds)
    options = [("grpc.use_local_subchannel_pool", 1)]
    latencies: list[int] = []
    finished = asyncio.Event()
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        publish = channel.unary_unary(
            "/google.pubsub.v1.Publisher/Publish", request_serializer=None
        )
        pull = channel.stream_stream(
            "/google.pubsub.v1.Subscriber/StreamingPull",
            request_serializer=StreamingPullRequest.pb().SerializeToString,
            response_deserializer=StreamingPullResponse.pb().FromString,
        )
        stream = pull()
        first = StreamingPullRequest(subscription=subscription, stream_ack_deadline_seconds=60)
        await stream.write(StreamingPullRequest.pb(first))
        ack_request = StreamingPullRequest.pb()

        async def receive() -> None:
            async for response in stream:
                arrived = time.monotonic_ns()
                for received in response.received_messages:
                    latencies.append(arrived - int(received.message.attributes["t"]))
                await stream.write(
                    ack_request(ack_ids=[r.ack_id for r in response.received_messages])
                )
                if len(latencies) >= total:
                    finished.set()
                    return

        reader = asyncio.create_task(receive())
        await asyncio.sleep(0.5)
        interval = 1.0 / rate
        started = time.perf_counter()
        for index in range(total):
            pause = started + index * interval - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            message = PubsubMessage(data=MESSAGE, attributes={"t": str(time.monotonic_ns())})
            await publish(PublishRequest.serialize(PublishRequest(topic=topic, messages=[message])))
        await asyncio.wait_for(finished.wait(), 60)
        reader.cancel()
        stream.cancel()
    latencies.sort()
    return latencies[len(latencies) // 2] / 1e6, latencies[int(len(latencies) * 0.99)] / 1e6


def raw_delivery_latency(
    target: str, topic: str, subscription: str, rate: int, seconds: float, runs: int
) -> list[tuple[float, float]]:
    """Raw gRPC publish (1 message per RPC, paced) -> raw StreamingPull receipt: (p50, p99) ms.

    No client library on either side: what the broker itself adds to delivery latency.
    """

    async def rounds() -> list[tuple[float, float]]:
        return [
            await _raw_delivery_latency(target, topic, subscription, rate, seconds)
            for _ in range(runs)
        ]

    return asyncio.run(rounds())


def delivered_rate(target: str, topic: str, subscription: str, count: int) -> tuple[float, int]:
    """Drain a backlog of `count` messages through subscribe() acking each; (msg/s, duplicates)."""
    from google.cloud import pubsub_v1

    with emulator(target):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    futures = [publisher.publish(topic, MESSAGE, i=str(i)) for i in range(count)]
    for future in futures:
        future.result(timeout=120)
    publisher.stop()
    seen: set[str] = set()
    duplicates = 0
    lock = threading.Lock()
    done = threading.Event()
    first: list[float] = []

    def callback(message: Any) -> None:
        nonlocal duplicates
        message.ack()
        with lock:
            if not first:
                first.append(time.perf_counter())
            key = message.attributes["i"]
            if key in seen:
                duplicates += 1
            seen.add(key)
            if len(seen) >= count:
                done.set()

    stream = subscriber.subscribe(subscription, callback)
    try:
        if not done.wait(300):
            raise RuntimeError(f"only {len(seen)} of {count} messages delivered")
        last = time.perf_counter()
    finally:
        stream.cancel()
        with contextlib.suppress(Exception):
            stream.result(timeout=10)
        subscriber.close()
    return count / (last - first[0]), duplicates


# ---- 5. idle streams -----------------------------------------------------------------------


async def _idle_streams(
    server: Server, subscriptions: list[str], streams: int, seconds: float
) -> tuple[float, float, float, int]:
    """Open `streams` StreamingPull calls; return (RSS before, RSS after MiB, CPU %, open)."""
    rss_before = server.rss_mib()
    channels = [
        grpc.aio.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, streams // 100))
    ]
    calls = []
    try:
        for index in range(streams):
            channel = channels[index % len(channels)]
            method = channel.stream_stream(
                "/google.pubsub.v1.Subscriber/StreamingPull",
                request_serializer=StreamingPullRequest.pb().SerializeToString,
                response_deserializer=StreamingPullResponse.pb().FromString,
            )
            call = method()
            request = StreamingPullRequest(
                subscription=subscriptions[index % len(subscriptions)],
                stream_ack_deadline_seconds=60,
                client_id=str(uuid.uuid4()),
                max_outstanding_messages=1000,
            )
            await call.write(StreamingPullRequest.pb(request))
            calls.append(call)
        await asyncio.sleep(5)  # let the broker settle after accepting the streams
        cpu_before = server.cpu_seconds()
        wall_before = time.monotonic()
        await asyncio.sleep(seconds)
        cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before) * 100
        rss_after = server.rss_mib()
        still_open = sum(1 for call in calls if not call.done())
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    return rss_before, rss_after, cpu, still_open


def idle_streams(
    server: Server, subscriptions: list[str], streams: int, seconds: float, runs: int
) -> list[tuple[float, float, float, int]]:
    """`runs` rounds of `_idle_streams` in one event loop (grpc.aio binds to its first loop)."""

    async def rounds() -> list[tuple[float, float, float, int]]:
        return [await _idle_streams(server, subscriptions, streams, seconds) for _ in range(runs)]

    return asyncio.run(rounds())


# ---- driver ---------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    broker: str
    baseline: str
    target: str
    verdict: str


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float], unit: str = "", digits: int = 0) -> str:
    return " / ".join(f"{value:,.{digits}f}{unit}" for value in values)


def _repeat(runs: int, measure: Callable[[int], float], label: str) -> list[float]:
    values = []
    for run in range(runs):
        value = measure(run)
        print(f"  {label} run {run + 1}/{runs}: {value:,.1f}", file=sys.stderr, flush=True)
        values.append(value)
    return values


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        if {"publish", "stock"} & args.only:
            rows += _publish_phase(args, work)
        if {"latency", "drain"} & args.only:
            rows += _delivery_phase(args, work)
        if "idle" in args.only:
            rows += _idle_phase(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _publish_phase(args: argparse.Namespace, work: Path) -> list[Row]:
    """Rows 1 and 2, on a fresh broker next to the do-nothing server."""
    rows: list[Row] = []
    runs = args.runs
    broker = start_broker(work / "publish")
    null = start_null(sync=args.sync_null)
    print(
        f"broker {broker.target} (pid {broker.process.pid}), {null.name} {null.target}",
        file=sys.stderr,
    )
    try:
        if "publish" in args.only:
            # 1. saturating publish
            sat_topic, _ = create_topic(broker.target, "saturate")
            null_topic = f"projects/{PROJECT}/topics/saturate"
            broker_cpu_before = broker.cpu_seconds()
            sat_broker = _repeat(
                runs,
                lambda _: saturating_publish(broker.target, sat_topic, args.seconds),
                "sat broker",
            )
            broker_cpu = broker.cpu_seconds() - broker_cpu_before
            stored_rss = broker.rss_mib()
            sat_null = _repeat(
                runs,
                lambda _: saturating_publish(null.target, null_topic, args.seconds),
                "sat null",
            )
            median = _median(sat_broker)
            rows.append(
                Row(
                    "1. saturating publish, 2 threads x 1,000-msg requests, 1 KiB (msg/s)",
                    f"**{median:,.0f}** ({_spread(sat_broker)}); broker CPU "
                    f"{broker_cpu / (runs * args.seconds) * 100:.0f} % of a core; RSS with "
                    f"the unacked backlog {stored_rss:,.0f} MiB",
                    f"{_median(sat_null):,.0f} ({_spread(sat_null)})",
                    ">= 50,000 durable",
                    _verdict(median >= 50_000, f"{median / 50_000:.2f}x of target"),
                )
            )

        if "publish" in args.only:
            # 1b. Publish round trip at a steady 1,000/s: the broker's commit path vs the floor
            rtt_topic, _ = create_topic(broker.target, "roundtrip")
            rtt_broker: list[tuple[float, float]] = []
            rtt_null: list[tuple[float, float]] = []
            for _ in range(runs):  # interleaved: both see the same background load
                rtt_broker.append(
                    publish_rpc_latency(broker.target, rtt_topic, args.rate, args.latency_seconds)
                )
                rtt_null.append(
                    publish_rpc_latency(null.target, rtt_topic, args.rate, args.latency_seconds)
                )
                print(
                    f"  publish round trip: broker p50 {rtt_broker[-1][0]:.2f} p99 "
                    f"{rtt_broker[-1][1]:.2f} ms; null p50 {rtt_null[-1][0]:.2f} p99 "
                    f"{rtt_null[-1][1]:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(
                Row(
                    f"1b. Publish RPC round trip, 1 message of 1 KiB, one at a time at "
                    f"{args.rate:,}/s (raw gRPC; the broker answers after the commit)",
                    f"p50 {_median([r[0] for r in rtt_broker]):.2f} ms, p99 "
                    f"{_median([r[1] for r in rtt_broker]):.2f} ms (p99 "
                    f"{_spread([r[1] for r in rtt_broker], digits=1)})",
                    f"p50 {_median([r[0] for r in rtt_null]):.2f} ms, p99 "
                    f"{_median([r[1] for r in rtt_null]):.2f} ms (p99 "
                    f"{_spread([r[1] for r in rtt_null], digits=1)})",
                    "(context for 3)",
                    "",
                )
            )

        if "stock" in args.only:
            # 2. stock PublisherClient
            stock_topic, _ = create_topic(broker.target, "stock")
            stock_null_topic = f"projects/{PROJECT}/topics/stock"
            stock_broker: list[float] = []
            stock_null: list[float] = []
            for run_index in range(runs):  # interleaved: both see the same background load
                stock_broker.append(stock_publish(broker.target, stock_topic, args.stock_count))
                stock_null.append(stock_publish(null.target, stock_null_topic, args.stock_count))
                print(
                    f"  stock run {run_index + 1}/{runs}: broker {stock_broker[-1]:,.0f} "
                    f"null {stock_null[-1]:,.0f}",
                    file=sys.stderr,
                    flush=True,
                )
            ratios = [b / n for b, n in zip(stock_broker, stock_null, strict=True)]
            ratio = _median(ratios)
            rows.append(
                Row(
                    "2. stock PublisherClient.publish() per message, 1 KiB (msg/s)",
                    f"**{_median(stock_broker):,.0f}** ({_spread(stock_broker)}); "
                    f"ratio {ratio:.2f} ({_spread(ratios, digits=2)})",
                    f"{_median(stock_null):,.0f} ({_spread(stock_null)})",
                    ">= 0.9 x do-nothing",
                    _verdict(ratio >= 0.9, f"ratio {ratio:.2f}"),
                )
            )
    finally:
        null.stop()
        broker.stop()
    return rows


def _delivery_phase(args: argparse.Namespace, work: Path) -> list[Row]:
    """Rows 3 and 4, on a fresh broker."""
    rows: list[Row] = []
    runs = args.runs
    broker = start_broker(work / "deliver")
    try:
        if "latency" in args.only:
            rows.extend(_latency_rows(args, broker))

        if "drain" in args.only:
            # 4. delivered rate
            rates = []
            dupes = []
            for run_index in range(runs):
                topic, (sub,) = create_topic(broker.target, f"drain-{run_index}")
                rate, duplicates = delivered_rate(broker.target, topic, sub, args.drain_count)
                print(
                    f"  drain run {run_index + 1}/{runs}: {rate:,.0f}/s, {duplicates} duplicates",
                    file=sys.stderr,
                    flush=True,
                )
                rates.append(rate)
                dupes.append(duplicates)
            rows.append(
                Row(
                    f"4. delivered rate: {args.drain_count:,}-message backlog through subscribe() "
                    "with acks (msg/s)",
                    f"**{_median(rates):,.0f}** ({_spread(rates)}); redeliveries {sum(dupes)}",
                    "",
                    "(report)",
                    "",
                )
            )

    finally:
        broker.stop()
    return rows


def _latency_rows(args: argparse.Namespace, broker: Server) -> list[Row]:
    """Row 3: publish() -> subscribe() callback at each max_latency, on the broker and on the
    do-nothing server (an ideal in-memory broker), runs interleaved; 3c: no client library."""
    publishers = [f"{value:g}" for value in args.batch_latency]
    topics = {p: create_topic(broker.target, f"latency-{i}") for i, p in enumerate(publishers)}
    results: dict[tuple[str, str], list[Latency]] = {}
    null = start_null()
    null_topic = f"projects/{PROJECT}/topics/null-latency"
    null_sub = f"projects/{PROJECT}/subscriptions/null-latency"
    try:
        for run_index in range(args.runs):
            for publisher in publishers:
                topic, (sub,) = topics[publisher]
                for server, target in (
                    ("broker", (broker.target, topic, sub)),
                    ("null", (null.target, null_topic, null_sub)),
                ):
                    result = delivery_latency(*target, args.rate, args.latency_seconds, publisher)
                    results.setdefault((server, publisher), []).append(result)
                    print(
                        f"  latency run {run_index + 1} ({server}, max_latency {publisher} s): "
                        f"p50 {result.p50:.2f} ms p99 {result.p99:.2f} ms; publish done p50 "
                        f"{result.commit_p50:.2f} ms; at {result.achieved:,.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        null.stop()

    def cell(runs: list[Latency]) -> tuple[str, float, float]:
        p50s, p99s = [r.p50 for r in runs], [r.p99 for r in runs]
        p50, p99 = _median(p50s), _median(p99s)
        text = (
            f"**p50 {p50:.1f} ms, p99 {p99:.1f} ms** (p50 {_spread(p50s, digits=1)}; p99 "
            f"{_spread(p99s, digits=1)}); publish() -> future done: p50 "
            f"{_median([r.commit_p50 for r in runs]):.1f} ms"
        )
        return text, p50, p99

    rows = []
    for publisher in publishers:
        text, p50, p99 = cell(results[("broker", publisher)])
        rows.append(
            Row(
                f"3. publish() -> subscribe() callback at {args.rate:,} msg/s; PublisherClient "
                f"in its own process, BatchSettings.max_latency {float(publisher) * 1000:g} ms",
                text,
                cell(results[("null", publisher)])[0],
                "p50 <= 5 ms, p99 <= 50 ms",
                _verdict(p50 <= 5 and p99 <= 50, f"p50 {p50 / 5:.2f}x, p99 {p99 / 50:.2f}x"),
            )
        )
    raw_topic, (raw_sub,) = create_topic(broker.target, "latency-raw")
    raw = raw_delivery_latency(
        broker.target, raw_topic, raw_sub, args.rate, args.latency_seconds, args.runs
    )
    rows.append(
        Row(
            f"3c. no client library on either side: raw gRPC Publish (1 message per RPC) -> raw "
            f"StreamingPull receipt at {args.rate:,} msg/s",
            f"p50 {_median([r[0] for r in raw]):.2f} ms, p99 {_median([r[1] for r in raw]):.2f}"
            f" ms (p50 {_spread([r[0] for r in raw], digits=1)}; p99 "
            f"{_spread([r[1] for r in raw], digits=1)})",
            "",
            "(context for 3)",
            "",
        )
    )
    return rows


def _idle_phase(args: argparse.Namespace, work: Path) -> list[Row]:
    """Row 5, on a fresh broker (so RSS is the streams', not a backlog's)."""
    rows: list[Row] = []
    runs = args.runs
    broker = start_broker(work / "idle")
    try:
        # 5. idle streams
        _, subs = create_topic(broker.target, "idle", subscriptions=args.idle_subscriptions)
        idle = idle_streams(broker, subs, args.streams, args.idle_seconds, runs)
        for before, after, cpu, still_open in idle:
            print(
                f"  idle: RSS {before:.0f} -> {after:.0f} MiB, CPU {cpu:.1f} %, open {still_open}",
                file=sys.stderr,
                flush=True,
            )
        cpu = _median([r[2] for r in idle])
        rows.append(
            Row(
                f"5. {args.streams:,} idle StreamingPull streams "
                f"({args.idle_subscriptions} subscriptions): broker RSS, idle CPU "
                f"over {args.idle_seconds:g} s",
                f"**RSS {_median([r[1] for r in idle]):.0f} MiB** (fresh broker before the "
                f"streams {idle[0][0]:.0f} MiB); **CPU {cpu:.1f} %** of a core "
                f"({_spread([r[2] for r in idle], digits=1)}); streams open "
                f"{min(r[3] for r in idle)}",
                "",
                "CPU < 5 % of a core",
                _verdict(cpu < 5, f"{cpu / 5:.2f}x of target"),
            )
        )
    finally:
        broker.stop()
    return rows


def _verdict(ok: bool, detail: str) -> str:
    return f"met ({detail})" if ok else f"**missed** ({detail})"


def render(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}; "
        f"load average at end {os.getloadavg()[0]:.2f}. Medians of {args.runs} runs "
        "(individual runs in brackets).",
        "",
        "| measurement | relay broker | do-nothing server | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.what} | {row.broker} | {row.baseline} | {row.target} | {row.verdict} |"
        )
    return "\n".join(lines)


_PARTS = ("publish", "stock", "latency", "drain", "idle")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="saturating run length")
    parser.add_argument("--stock-count", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument(
        "--batch-latency",
        type=float,
        nargs="+",
        default=[0.001, 0.01],
        help="publisher BatchSettings.max_latency values (s) for the latency runs",
    )
    parser.add_argument("--drain-count", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=2_000)
    parser.add_argument("--idle-subscriptions", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--sync-null", action="store_true", help="sync-grpc do-nothing server")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (1 run, short)")
    parser.add_argument(
        "--only",
        default=",".join(_PARTS),
        help=f"comma-separated subset of {','.join(_PARTS)}",
    )
    args = parser.parse_args(argv)
    args.only = set(args.only.split(","))
    if not args.only <= set(_PARTS):
        parser.error(f"--only takes {','.join(_PARTS)}")
    if args.quick:
        args.runs, args.seconds, args.stock_count, args.latency_seconds = 1, 1.0, 2_000, 2.0
        args.drain_count, args.streams, args.idle_subscriptions = 2_000, 200, 20
        args.idle_seconds, args.batch_latency = 2.0, [0.001]
    print(render(run(args), args))


if __name__ == "__main__":
    main()
