"""Benchmarks of relay's Airflow waits against `relay broker`, next to the Google provider's sensor.

Run: `uv run --frozen python -m benchmarks.airflow` (about 10 minutes; `--quick` for a smoke run).
Prints a Markdown table. A triggerer is stood in for by this process's asyncio loop running the
triggers' run() generators (what the triggerer does); the broker is its own process.

What is measured (targets in brackets):
1. wake latency: result publish() call -> the trigger's TriggerEvent, `--samples` waits in flight
   `--concurrency` at a time; RelayResultTrigger [p50 <= 100 ms, p99 <= 500 ms] side by side with
   the provider's PubsubPullTrigger (deferrable PubSubPullSensor) at its default poke_interval
   (10 s) and at 1 s, each on its own filtered subscription;
2. 10,000 concurrent RelayResultTrigger waits in one process (`--waits`; the waits a triggerer
   holds for tasks started there are the same, RelayRequestTrigger waits with RelayResultTrigger's
   wake hub): idle CPU of this process over `--idle-seconds` (30 s: a stream heartbeat included)
   [< 5 % of one core], RSS [< 1 GB], and the time from the last result's publish to the last
   wait's event [all within 15 s of their results being published].

The broker's administrator quota is raised (`--admin-ops-per-minute`): 10,000 task subscriptions
created at Google's 6,000 a minute take the benchmark's set-up minutes and are not what it measures
(benchmarks/waits.py measures the administrator operations).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROJECT = "relay-bench"
_READY = re.compile(r"relay broker ready grpc=(\S+) http=(\S+) data=(.+)$")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _start_broker(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.broker",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            "0",
            "--data-dir",
            str(data_dir),
            "--admin-ops-per-minute",
            "1000000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = _READY.search(line.strip())
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # drain
            return process, match.group(1)
    process.kill()
    raise RuntimeError("relay broker did not start")


def _setup_environment(broker_host: str) -> None:
    """Before anything imports airflow: a throwaway AIRFLOW_HOME and an anonymous connection."""
    home = tempfile.mkdtemp(prefix="relay-bench-airflow-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "PUBSUB_EMULATOR_HOST": broker_host,
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
                {
                    "conn_type": "google_cloud_platform",
                    "extra": {"is_anonymous": True, "project": PROJECT},
                }
            ),
        }
    )
    logging.disable(logging.WARNING)


class Bench:
    """Topics, request events and result publishing against the broker."""

    def __init__(self) -> None:
        from google.cloud.pubsub_v1 import PublisherClient
        from google.cloud.pubsub_v1.types import BatchSettings

        from relay.airflow.hooks import RelayHook

        self.hook = RelayHook()
        # The function's side: its own publisher; 1 ms batching so the client's batching delay
        # (10 ms by default) does not dominate what is measured. Same for both triggers.
        self.publisher = PublisherClient(batch_settings=BatchSettings(max_latency=0.001))
        self.topic = self.new_topic()
        self.pool = ThreadPoolExecutor(8)

    def new_topic(self) -> str:
        """A fresh completion topic."""
        topic = f"projects/{PROJECT}/topics/results-{uuid.uuid4().hex[:8]}"
        self.publisher.create_topic(name=topic)
        return topic

    def requests(self, count: int, topics: Sequence[str] = ()) -> list[tuple[Any, str]]:
        """`count` single-request tasks: each request event and its task's completion
        subscription (created in parallel), spread over `topics` (default: `self.topic`)."""
        from relay.airflow._publish import build_requests
        from relay.protocol import EXAMPLE_ECHO, correlation_group

        topics = list(topics) or [self.topic]
        events = [
            event
            for n, topic in enumerate(topics)
            for event in build_requests(
                EXAMPLE_ECHO,
                [{"i": i} for i in range(n, count, len(topics))],
                source="/bench",
                reply_to=topic,
                correlation_ids=[
                    f"b{uuid.uuid4().hex[:16]}.0" for _ in range(n, count, len(topics))
                ],
            )
        ]
        deadline = time.time() + 600
        subs = list(
            self.pool.map(
                lambda e: self.hook.create_task_subscription(
                    str(e.replyto), correlation_group(str(e.correlationid)), deadline=deadline
                ),
                events,
            )
        )
        return list(zip(events, subs, strict=True))

    def answer(self, event: Any) -> float:
        """Publish the result of `event`; returns the perf_counter time of the publish() call."""
        from relay.protocol import succeeded, to_binary

        message = to_binary(succeeded(event, {"ok": True}, source="/bench"))
        started = time.perf_counter()
        self.publisher.publish(str(event.replyto), message.data, **message.attributes)
        return started

    def cleanup(self, subscriptions: Sequence[str]) -> None:
        list(self.pool.map(lambda s: self.hook.delete_subscriptions([s]), subscriptions))


async def _latencies(
    bench: Bench,
    make_trigger: Callable[[Any, str], Any],
    samples: int,
    concurrency: int,
    period: float,
) -> list[float]:
    """Run waits `concurrency` at a time; publish each result at a random moment 0.2 s to
    0.2 s + `period` after its wait started (uniform over a poll period for a polling trigger)."""
    pairs = await asyncio.to_thread(bench.requests, samples)
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(event: Any, subscription: str) -> None:
        async with semaphore:
            trigger = make_trigger(event, subscription)
            run = trigger.run()
            waiting = asyncio.ensure_future(anext(run))
            await asyncio.sleep(0.2 + random.uniform(0, period))
            published = await loop.run_in_executor(bench.pool, bench.answer, event)
            await asyncio.wait_for(waiting, 60)
            latencies.append(time.perf_counter() - published)
            await run.aclose()

    await asyncio.gather(*(one(e, s) for e, s in pairs))
    await asyncio.to_thread(bench.cleanup, [s for _, s in pairs])
    return latencies


async def latency_relay(bench: Bench, samples: int, concurrency: int) -> list[float]:
    from relay.airflow.triggers import RelayResultTrigger

    def make(event: Any, subscription: str) -> Any:
        return RelayResultTrigger(
            wait=_wait(bench, event, subscription, 120),
            # Wake latency, not the settle delay a deferring operator adds (default 8 s, see
            # docs/airflow.md): these results come within that window, so not_before is past.
            not_before=0.0,
        )

    return await _latencies(bench, make, samples, concurrency, period=1.0)


async def latency_provider(
    bench: Bench, samples: int, concurrency: int, poke_interval: float
) -> list[float]:
    import warnings

    from airflow.providers.google.cloud.triggers.pubsub import PubsubPullTrigger

    warnings.simplefilter("ignore")

    def make(event: Any, subscription: str) -> Any:
        return PubsubPullTrigger(
            project_id=PROJECT,
            subscription=subscription.rsplit("/", 1)[1],
            max_messages=1,
            ack_messages=True,
            gcp_conn_id="google_cloud_default",
            poke_interval=poke_interval,
            return_immediately=True,
        )

    return await _latencies(bench, make, samples, concurrency, period=poke_interval)


async def scale(bench: Bench, waits: int, idle_seconds: float) -> dict[str, float]:
    """`waits` concurrent RelayResultTrigger waits: idle CPU and RSS, then all results at once."""
    from relay.airflow import _result_trigger, _wakehub
    from relay.airflow.triggers import RelayResultTrigger

    # Google's limit: 10,000 subscriptions per topic, a triggerer's wake subscription included, so
    # 10,000 waiting tasks need two completion topics (docs/airflow.md)
    topics = [bench.new_topic() for _ in range(-(-(waits + 1) // 10_000))]
    pairs = await asyncio.to_thread(bench.requests, waits, topics)
    pid = os.getpid()
    done: dict[str, float] = {}
    rss_before = _rss_mib(pid)

    async def one(event: Any, subscription: str) -> None:
        trigger = RelayResultTrigger(
            wait=_wait(bench, event, subscription, 1800),  # 10,000 start-up reads: minutes
            not_before=0.0,  # measure the wake-up, not an operator's settle delay (see above)
        )
        event_out = await anext(trigger.run())
        assert event_out.payload["status"] == "done", event_out.payload["message"]
        done[str(event.correlationid)] = time.perf_counter()

    tasks = [asyncio.create_task(one(e, s)) for e, s in pairs]
    started = time.perf_counter()
    # Let every wait register and read its subscription once, and the one early re-read (12-24 s
    # after its start) pass (each read 1.5 s, 64 at a time: minutes for 10,000 waits), until the
    # read slots are no longer all taken for 5 s (the safety-net re-reads of 10 waits a second go
    # on for good: they are part of the idle load), then measure the idle loop.
    await asyncio.sleep(25)
    calm = 0
    while calm < 5:
        await asyncio.sleep(1)
        calm = calm + 1 if _result_trigger.reads_pending() < 32 else 0
    settle = time.perf_counter() - started
    assert not done, "a result arrived before any was published"
    cpu_start, wall_start = _cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(idle_seconds)
    idle_cpu = (_cpu_seconds(pid) - cpu_start) / (time.perf_counter() - wall_start)
    rss = _rss_mib(pid)
    hubs = _wakehub.hubs()
    loop = asyncio.get_running_loop()

    def publish_all() -> dict[str, float]:
        return {str(e.correlationid): bench.answer(e) for e, _ in pairs}

    published = await loop.run_in_executor(None, publish_all)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    first_publish = min(published.values())
    last_publish = max(published.values())
    latencies = [done[cid] - published[cid] for cid in published]
    await asyncio.to_thread(bench.cleanup, [s for _, s in pairs])
    return {
        "waits": waits,
        "reads_settled_s": settle,
        "idle_cpu_pct": idle_cpu * 100,
        "rss_mib": rss,
        "rss_before_waits_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hubs": len(hubs),
        "streams": sum(h.streams_opened for h in hubs),
        "publish_span_s": last_publish - first_publish,
        "all_done_after_first_publish_s": max(done.values()) - first_publish,
        "all_done_after_last_publish_s": max(done.values()) - last_publish,
        "latency_p50_ms": _percentile(latencies, 50) * 1000,
        "latency_p99_ms": _percentile(latencies, 99) * 1000,
        "latency_max_ms": max(latencies) * 1000,
    }


def _wait(bench: Bench, event: Any, subscription: str, timeout: float) -> Any:
    from relay.airflow._wait import ResultWait

    return ResultWait(
        completion_topic=str(event.replyto),
        subscription=subscription,
        correlation_ids=(str(event.correlationid),),
        deadline=time.time() + timeout,
    )


def _row(name: str, values: Sequence[float], target: str = "") -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {_percentile(ms, 99):.1f} | "
        f"{max(ms):.1f} | {target} |"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench()
    results: dict[str, Any] = {}
    relay = await latency_relay(bench, args.samples, args.concurrency)
    results["relay"] = relay
    provider_10 = await latency_provider(bench, args.provider_samples, args.provider_samples, 10.0)
    results["provider_10s"] = provider_10
    provider_1 = await latency_provider(bench, args.provider_samples, args.provider_samples, 1.0)
    results["provider_1s"] = provider_1
    from relay.airflow import _wakehub

    await _wakehub.close_all()
    results["scale"] = await scale(bench, args.waits, args.idle_seconds)
    await _wakehub.close_all()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--provider-samples", type=int, default=40)
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: small numbers")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.provider_samples, args.waits, args.idle_seconds = 40, 10, 200, 3.0

    with tempfile.TemporaryDirectory(prefix="relay-bench-broker-") as data_dir:
        broker, host = _start_broker(Path(data_dir))
        try:
            _setup_environment(host)
            results = asyncio.run(run(args))
            broker_cpu = _cpu_seconds(broker.pid)
        finally:
            broker.terminate()
            broker.wait(20)

    relay, p10, p1, big = (
        results["relay"],
        results["provider_10s"],
        results["provider_1s"],
        results["scale"],
    )
    print(f"\nrelay Airflow benchmark ({os.cpu_count()} cores, Python {sys.version.split()[0]})\n")
    print("| wake latency (publish -> TriggerEvent) | n | p50 ms | p99 ms | max ms | target |")
    print("|---|---|---|---|---|---|")
    print(_row("RelayResultTrigger (shared hub)", relay, "p50 <= 100, p99 <= 500"))
    print(_row("PubsubPullTrigger, poke_interval 10 s (default)", p10))
    print(_row("PubsubPullTrigger, poke_interval 1 s", p1))
    ratio = statistics.median(p10) / statistics.median(relay)
    print(
        f"\nmedian ratio provider(10 s) / relay: {ratio:.0f}x; "
        f"provider(1 s) / relay: {statistics.median(p1) / statistics.median(relay):.0f}x\n"
    )
    print(f"| {big['waits']:,} concurrent waits, one process | value | target |")
    print("|---|---|---|")
    print(f"| idle CPU of the process | {big['idle_cpu_pct']:.2f} % of a core | < 5 % |")
    print(
        f"| RSS with all waits registered | {big['rss_mib']:.0f} MiB "
        f"(before the waits: {big['rss_before_waits_mib']:.0f}) | < 1 GB |"
    )
    print(f"| every wait registered and read (start-up) | {big['reads_settled_s']:.0f} s | |")
    streams = f"{big['hubs']} / {big['streams']}"
    print(f"| shared hubs / StreamingPull streams | {streams} | one per completion topic |")
    print(f"| publishing all results took | {big['publish_span_s']:.2f} s | |")
    print(
        f"| last event after the first result's publish | "
        f"{big['all_done_after_first_publish_s']:.2f} s | |"
    )
    print(
        f"| last event after the last result's publish | "
        f"{big['all_done_after_last_publish_s']:.2f} s | <= 15 s |"
    )
    print(
        f"| per-wait latency p50 / p99 / max | {big['latency_p50_ms']:.0f} / "
        f"{big['latency_p99_ms']:.0f} / {big['latency_max_ms']:.0f} ms | |"
    )
    print(f"\nbroker process CPU over the whole run: {broker_cpu:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
