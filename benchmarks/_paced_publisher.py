"""Publish at a steady rate with the stock PublisherClient, in a process of its own.

`python -m benchmarks._paced_publisher TARGET TOPIC RATE COUNT MAX_LATENCY` publishes COUNT 1 KiB
messages at RATE msg/s, each with attribute `t` = time.monotonic_ns() taken just before publish()
(CLOCK_MONOTONIC is system-wide on Linux, so the subscriber process can subtract it). Prints one
JSON line: the achieved rate and the publish() -> future-done (commit) latency percentiles in ms.
Kept out of the subscriber's process so the two clients do not share one GIL.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def main(argv: list[str]) -> None:
    target, topic, rate, count, max_latency = argv
    os.environ["PUBSUB_EMULATOR_HOST"] = target
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_latency=float(max_latency))
    )
    total = int(count)
    interval = 1.0 / float(rate)
    data = b"x" * 1024
    sent = [0] * total
    done = [0] * total
    finished = threading.Event()
    remaining = [total]
    lock = threading.Lock()

    def on_done(index: int) -> None:
        done[index] = time.monotonic_ns()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                finished.set()

    started = time.perf_counter()
    for index in range(total):
        pause = started + index * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        stamp = time.monotonic_ns()
        sent[index] = stamp
        future = publisher.publish(topic, data, t=str(stamp))
        future.add_done_callback(lambda _, index=index: on_done(index))
    achieved = total / (time.perf_counter() - started)
    if not finished.wait(120):
        raise SystemExit("publishes did not complete")
    commit = sorted(d - s for s, d in zip(sent, done, strict=True))
    print(
        json.dumps(
            {
                "achieved": achieved,
                "commit_p50_ms": commit[len(commit) // 2] / 1e6,
                "commit_p99_ms": commit[min(len(commit) - 1, int(len(commit) * 0.99))] / 1e6,
            }
        ),
        flush=True,
    )
    publisher.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
