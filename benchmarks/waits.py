"""Administrator operations and wall time of a fan-out's publish and cleanup phases: relay's one
subscription per task beside relay 0.1's one subscription per request, side by side in one run.

Run: `uv run --frozen python -m benchmarks.waits` (sizes 100, 1,000 and 10,000, admin latency 0
and 200 ms, 3 runs; `--quick`: 100 and 1,000 at 200 ms, 1 run).

For each admin latency a fresh `relay broker` (`--admin-latency`, `--control`) and, per size and
run, one fan-out. The broker's quota is raised to 1,000,000 administrator operations a minute: with
Google's 6,000, 0.1's third 1,000-request fan-out within a minute fails with RESOURCE_EXHAUSTED
(seen in the first run of this benchmark), which is the point, but leaves nothing to time.

- publish phase: what the worker does before it can defer. relay: `publish_requests` (create the
  task subscription, Seek it, publish N requests). 0.1: one filtered subscription per request,
  created 8 at a time (as 0.1's `publish_requests` did), then the same publish.
- then N results are published by a stand-in function (not timed);
- cleanup phase: what the worker does on resume. relay: `take_results` (pull, ack in batches) and
  one delete. 0.1: per request, pull its subscription until its result is there and ack it, then
  delete every subscription, one at a time (as 0.1's `fetch_event` and `delete_subscriptions`).

Administrator operations are counted at the broker (GET /stats). 0.1 at 10,000 requests is not
run: its 20,000 administrator operations are more than Google's quota gives a project in three
minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT / "tests"))
from conftest import BrokerProcess  # noqa: E402

PROJECT = "relay-bench"
_OLD_LIMIT = 1_000


def _env(broker: BrokerProcess) -> None:
    import os

    os.environ["PUBSUB_EMULATOR_HOST"] = broker.host
    os.environ["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = (
        '{"conn_type": "google_cloud_platform", "extra": {"is_anonymous": true, '
        f'"project": "{PROJECT}"}}}}'
    )


def _admin_ops(broker: BrokerProcess) -> int:
    return int(sum(broker.stats()["admin_ops"].values()))


class Fanout:
    """One fan-out's topics and requests on `broker`."""

    def __init__(self, broker: BrokerProcess, size: int) -> None:
        from relay.airflow._publish import build_requests, correlation_ids_for
        from relay.airflow.hooks import RelayHook
        from relay.protocol import EXAMPLE_ECHO

        self.broker = broker
        self.hook = RelayHook()
        self.publisher = broker.publisher()
        suffix = uuid.uuid4().hex[:8]
        self.requests_topic = f"projects/{PROJECT}/topics/requests-{suffix}"
        self.results_topic = f"projects/{PROJECT}/topics/results-{suffix}"
        self.publisher.create_topic(name=self.requests_topic)
        self.publisher.create_topic(
            request={"name": self.results_topic, "message_retention_duration": {"seconds": 600}}
        )
        self.group = f"t{suffix}"
        self.events = build_requests(
            EXAMPLE_ECHO,
            [{"i": i} for i in range(size)],
            source="/bench",
            reply_to=self.results_topic,
            correlation_ids=correlation_ids_for(self.group, size, None),
        )

    def answer_all(self) -> dict[str, str]:
        """Publish every request's result (the function's part); {correlation id: message id}."""
        from relay.protocol import succeeded, to_binary

        futures = {}
        for event in self.events:
            message = to_binary(succeeded(event, {"ok": True}, source="/bench"))
            futures[str(event.correlationid)] = self.publisher.publish(
                self.results_topic, message.data, **message.attributes
            )
        return {cid: str(future.result(60)) for cid, future in futures.items()}


def run_relay(fanout: Fanout) -> tuple[float, float]:
    """relay: (publish phase seconds, cleanup phase seconds)."""
    from relay.airflow._publish import publish_requests
    from relay.airflow._results import take_results
    from relay.airflow._wait import ResultWait

    started = time.perf_counter()
    published = publish_requests(
        fanout.hook,
        topic=fanout.requests_topic,
        reply_topic=fanout.results_topic,
        events=fanout.events,
        deadline=time.time() + 600,
    )
    publish_s = time.perf_counter() - started
    found = fanout.answer_all()
    wait = ResultWait(
        completion_topic=fanout.results_topic,
        subscription=str(published.subscription),
        correlation_ids=published.correlation_ids,
        deadline=time.time() + 600,
    )
    started = time.perf_counter()
    taken = take_results(fanout.hook, wait, found)
    fanout.hook.delete_subscriptions([str(published.subscription)])
    cleanup_s = time.perf_counter() - started
    assert len(taken) == len(fanout.events)
    return publish_s, cleanup_s


def run_old(fanout: Fanout) -> tuple[float, float]:
    """relay 0.1's design, as it was: (publish phase seconds, cleanup phase seconds)."""
    import hashlib

    from relay.protocol import to_binary

    subscriber = fanout.broker.subscriber()
    cids = [str(e.correlationid) for e in fanout.events]

    def create(cid: str) -> str:
        digest = hashlib.sha256(f"{fanout.results_topic}\0{cid}".encode()).hexdigest()[:40]
        path = f"projects/{PROJECT}/subscriptions/relay-wait-{digest}"
        subscriber.create_subscription(
            request={
                "name": path,
                "topic": fanout.results_topic,
                "filter": f'attributes.ce-correlationid = "{cid}"',
                "ack_deadline_seconds": 10,
                "expiration_policy": {"ttl": {"seconds": 86400}},
                "message_retention_duration": {"seconds": 86400},
            }
        )
        return path

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        subscriptions = list(pool.map(create, cids))
    fanout.hook.publish(fanout.requests_topic, [to_binary(e) for e in fanout.events])
    publish_s = time.perf_counter() - started
    found = fanout.answer_all()
    started = time.perf_counter()
    for cid, path in zip(cids, subscriptions, strict=True):
        while True:
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 100}, timeout=30
            )
            ids = [r.ack_id for r in response.received_messages]
            if ids:
                subscriber.acknowledge(request={"subscription": path, "ack_ids": ids})
            if any(r.message.message_id == found[cid] for r in response.received_messages):
                break
    for path in subscriptions:
        subscriber.delete_subscription(request={"subscription": path}, timeout=30)
    cleanup_s = time.perf_counter() - started
    return publish_s, cleanup_s


def measure(broker: BrokerProcess, design: str, size: int) -> dict[str, float]:
    fanout = Fanout(broker, size)
    before = _admin_ops(broker)
    publish_s, cleanup_s = (run_relay if design == "relay" else run_old)(fanout)
    return {
        "admin_ops": _admin_ops(broker) - before,
        "publish_s": publish_s,
        "cleanup_s": cleanup_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--latencies", default="0,0.2", help="admin latency, seconds")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.latencies, args.runs = "100,1000", "0.2", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    latencies = [float(s) for s in args.latencies.split(",")]
    import os

    print(f"\nrelay waits: administrator operations and phase times ({os.cpu_count()} cores)\n")
    print("| admin latency | requests | design | admin ops | publish phase s | cleanup phase s |"
          " publish+cleanup s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="relay-bench-waits-") as tmp:
        for latency in latencies:
            broker = BrokerProcess(
                Path(tmp) / f"broker-{latency}",
                args=[
                    "--control",
                    "--admin-latency",
                    str(latency) if latency else "off",
                    "--admin-ops-per-minute",
                    "1000000",
                ],
            )
            try:
                _env(broker)
                for size in sizes:
                    designs = ["relay"] + (["0.1"] if size <= _OLD_LIMIT else [])
                    runs: dict[str, list[dict[str, float]]] = {d: [] for d in designs}
                    for _ in range(args.runs):
                        for design in designs:  # interleaved, side by side
                            runs[design].append(measure(broker, design, size))
                    for design in designs:
                        _row(latency, size, design, runs[design])
            finally:
                broker.stop()


def _row(latency: float, size: int, design: str, runs: list[dict[str, float]]) -> None:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def each(key: str) -> str:
        return " / ".join(f"{r[key]:.2f}" for r in runs)

    total = [r["publish_s"] + r["cleanup_s"] for r in runs]
    print(
        f"| {latency * 1000:.0f} ms | {size:,} | {design} | {median('admin_ops'):.0f} | "
        f"{median('publish_s'):.2f} ({each('publish_s')}) | "
        f"{median('cleanup_s'):.2f} ({each('cleanup_s')}) | "
        f"**{statistics.median(total):.2f}** |",
        flush=True,
    )


if __name__ == "__main__":
    main()
