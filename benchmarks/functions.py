"""Benchmark of the function side: relay wrapper overhead per request, and cold-start imports.

`uv run --frozen python -m benchmarks.functions [--requests N] [--rounds R]`

1. Per request: the same echo work served through functions-framework's test client as a bare
   CloudEvent function and as a relay function (a Pub/Sub push body; the result publish goes to
   a recording stub in both, so Pub/Sub itself is excluded). Interleaved rounds, medians.
   Target: relay p50 <= 1.5x bare p50.
2. Cold start: `python -X importtime` of functions/echo/main.py after functions_framework is
   imported (as its CLI does): the cumulative import time of relay's modules and of what they
   pull in. Target: <= 150 ms, and no Airflow module loaded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ROOT / "benchmarks" / "_functions_targets.py"
ECHO = ROOT / "functions" / "echo" / "main.py"


def _push_body() -> bytes:
    from relay.protocol import new_request, to_binary

    request = new_request(
        "dev.relay.example.echo",
        {"text": "hello", "n": 42, "tags": ["a", "b"]},
        source="/benchmarks",
        reply_to="projects/relay-bench/topics/results",
    )
    message = to_binary(request)
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": message.attributes,
                "messageId": "1",
                "publishTime": "2026-01-01T00:00:00Z",
            },
            "subscription": "projects/relay-bench/subscriptions/echo",
            "deliveryAttempt": 1,
        }
    ).encode()


def _client(target: str) -> Any:
    import functions_framework

    return functions_framework.create_app(target, str(TARGETS), "cloudevent").test_client()


def _time_requests(client: Any, body: bytes, count: int) -> list[float]:
    headers = {"Content-Type": "application/json"}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post("/", data=body, headers=headers)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.data[:300]!r}")
    return samples


def per_request(requests: int, rounds: int) -> dict[str, float]:
    """Median and p90 (ms) per request for bare and relay, and the p50 ratio."""
    body = _push_body()
    bare, relayed = _client("bare"), _client("relayed")
    samples: dict[str, list[float]] = {"bare": [], "relay": []}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        _time_requests(bare, body, 200)  # warm-up: lazy imports, schema compile
        _time_requests(relayed, body, 200)
        for _ in range(rounds):
            samples["bare"] += _time_requests(bare, body, requests // rounds)
            samples["relay"] += _time_requests(relayed, body, requests // rounds)
    figures: dict[str, float] = {}
    for name, values in samples.items():
        values.sort()
        figures[f"{name}_p50_ms"] = statistics.median(values) * 1000
        figures[f"{name}_p90_ms"] = values[int(len(values) * 0.9)] * 1000
    figures["ratio_p50"] = figures["relay_p50_ms"] / figures["bare_p50_ms"]
    return figures


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
_PROBE = """
import functions_framework, sys, time
started = time.perf_counter()
functions_framework.create_app("echo", {echo!r}, "cloudevent")
print("LOAD_MS", (time.perf_counter() - started) * 1000, file=sys.stderr)
airflow = [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
print("AIRFLOW", airflow, file=sys.stderr)
"""


def cold_start(runs: int = 5) -> dict[str, Any]:
    """Medians over `runs` fresh processes of `_cold_start_once`."""
    samples = [_cold_start_once() for _ in range(runs)]
    return {
        "relay_import_ms": statistics.median(s["relay_import_ms"] for s in samples),
        "module_load_ms": statistics.median(s["module_load_ms"] for s in samples),
        "airflow_modules": samples[-1]["airflow_modules"],
        "runs": runs,
    }


def _cold_start_once() -> dict[str, Any]:
    """relay's share of the import time of a function module (ms), from -X importtime."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _PROBE.format(echo=str(ECHO))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    relay_us = 0
    load_ms = 0.0
    airflow: str = "?"
    for line in proc.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            cumulative, indent, name = int(match.group(2)), len(match.group(3)), match.group(4)
            # Top-level relay imports: their cumulative time includes what they pull in.
            if name.split(".")[0] == "relay" and indent <= 1:
                relay_us += cumulative
        elif line.startswith("LOAD_MS"):
            load_ms = float(line.split()[1])
        elif line.startswith("AIRFLOW"):
            airflow = line.split(" ", 1)[1]
    return {
        "relay_import_ms": relay_us / 1000,
        "module_load_ms": load_ms,
        "airflow_modules": airflow,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per variant")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    args = parser.parse_args(argv)
    figures = per_request(args.requests, args.rounds)
    print(f"per request ({args.requests} each, {args.rounds} interleaved rounds, test client):")
    print(f"  bare  p50 {figures['bare_p50_ms']:.3f} ms   p90 {figures['bare_p90_ms']:.3f} ms")
    print(f"  relay p50 {figures['relay_p50_ms']:.3f} ms   p90 {figures['relay_p90_ms']:.3f} ms")
    verdict = "ok" if figures["ratio_p50"] <= 1.5 else "OVER TARGET"
    print(f"  ratio p50 {figures['ratio_p50']:.2f}x (target <= 1.5x: {verdict})")
    cold = cold_start()
    verdict = "ok" if cold["relay_import_ms"] <= 150 else "OVER TARGET"
    print(
        f"cold start (python -X importtime, after functions_framework; median of {cold['runs']}):"
    )
    print(f"  relay imports {cold['relay_import_ms']:.1f} ms (target <= 150 ms: {verdict})")
    print(f"  create_app(echo) total {cold['module_load_ms']:.1f} ms")
    print(f"  airflow modules loaded: {cold['airflow_modules']}")


if __name__ == "__main__":
    main()
