"""Wall time of the example CSV pipeline, split into Airflow, relay and the functions' work.

Run: `uv run --frozen python -m benchmarks.pipeline` (sizes 100 and 1,000; `--quick`: 20 only).
Brings the local stack up once (relay.up.stack_up on relay.yaml: relay broker + functions), migrates
one SQLite Airflow, then for each size generates that many CSV files (relay.demo.generate_csvs)
and runs, each in a child process with `dag.test()` (benchmarks/_pipeline_child.py):

- relay:    dags/relay_csv_pipeline.py (list_files -> RelayFanOutOperator, deferrable -> summarize);
- provider: benchmarks/_pipeline_provider_dag.py (list_files -> PubSubCreateSubscriptionOperator ->
            PubSubPublishMessageOperator -> deferrable PubSubPullSensor, repeated until all results
            are in -> summarize).

Split of the dag.test() wall time W:
- functions F: the union of the csv-profile function's busy intervals. Its JSON log lines carry
  duration_ms but no timestamp, so this process tails the log file and stamps each line on
  arrival: interval = [arrival - duration, arrival];
- relay / provider publish+wait R: the union of the spans (metadata-DB start_date..end_date) of the
  tasks that publish and wait (relay: `profile`; provider: create_subscription, publish, wait_*),
  minus the part covered by F (the waiting that is just the functions working);
- Airflow overhead A = W - |R u F|: everything else (DAG parse/serialise in dag.test, scheduling,
  the other tasks, gaps between tasks). The child process's start-up (imports) is shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.demo import _csv_topic, _run_logged, airflow_environment, generate_csvs
from relay.protocol import EXAMPLE_CSV_PROFILE
from relay.topology import load_topology
from relay.up import stack_up

_ROOT = Path(__file__).resolve().parent.parent
_RELAY_DAG = _ROOT / "dags" / "relay_csv_pipeline.py"
_PROVIDER_DAG = Path(__file__).resolve().parent / "_pipeline_provider_dag.py"
_FUNCTION = "csv-profile"


class _LogTail(threading.Thread):
    """Stamps each JSON line the function writes to its log with this process's clock."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self._path = path
        self._stop_flag = threading.Event()
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        with self._path.open("r", encoding="utf-8", errors="replace") as handle:
            handle.seek(0, os.SEEK_END)
            pending = ""
            while not self._stop_flag.is_set():
                chunk = handle.read()
                if not chunk:
                    time.sleep(0.005)
                    continue
                now = time.time()
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    if line.startswith("{"):
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue
                        with self._lock:
                            self.lines.append((now, entry))

    def take(self) -> list[tuple[float, dict[str, Any]]]:
        """The lines seen since the last call."""
        with self._lock:
            taken, self.lines = self.lines, []
        return taken

    def stop(self) -> None:
        """Stop tailing."""
        self._stop_flag.set()
        self.join(5)


def _union(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def _is_wait_task(variant: str, task: str) -> bool:
    if variant == "relay":
        return task == "profile"
    return task in ("create_subscription", "publish") or task.startswith("wait_")


def _run_variant(
    variant: str,
    size: int,
    csv_dir: Path,
    conf: dict[str, Any],
    env: dict[str, str],
    run_dir: Path,
    tail: _LogTail,
    expected_rows: int,
) -> dict[str, Any]:
    dag_id = "relay_csv_pipeline" if variant == "relay" else "relay_csv_pipeline_provider"
    dag_file = run_dir / "dags" / f"{dag_id}.py"
    tag = f"{variant}-{size}-{uuid.uuid4().hex[:6]}"
    report_file = run_dir / f"report-{tag}.json"
    argv = [sys.executable, "-m", "benchmarks._pipeline_child", str(dag_file), dag_id]
    argv += [json.dumps(conf), str(report_file)]
    tail.take()
    started = time.time()
    with (run_dir / "logs" / f"dag-test-{tag}.log").open("wb") as log:
        code = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=1800, check=False
        ).returncode
    ended = time.time()
    time.sleep(0.2)
    lines = [
        (at, e)
        for at, e in tail.take()
        if e.get("type") == EXAMPLE_CSV_PROFILE and e.get("duration_ms") is not None
    ]
    if not report_file.is_file():
        return {"variant": variant, "size": size, "error": f"no report (exit {code}), {log.name}"}
    report = json.loads(report_file.read_text())
    wall = report["test_end"] - report["test_start"]
    busy = _union([(at - e["duration_ms"] / 1000, at) for at, e in lines])
    spans = _union(
        [
            (t["start"], t["end"])
            for t in report["tasks"]
            if t["start"] and t["end"] and _is_wait_task(variant, t["task"])
        ]
    )
    functions = _length(busy)
    relay = _length(spans) - _overlap(spans, busy)
    summary = report.get("summary") or {}
    return {
        "variant": variant,
        "size": size,
        "ok": report["state"] == "success"
        and summary.get("files") == size
        and summary.get("rows") == expected_rows,
        "process": ended - started,
        "startup": report["test_start"] - started,
        "wall": wall,
        "functions": functions,
        "function_sum": sum(e["duration_ms"] for _, e in lines) / 1000,
        "handled": sum(1 for _, e in lines if e.get("outcome") == "succeeded"),
        "relay": relay,
        "airflow": wall - _length(_union([*spans, *busy])),
        "tasks": sum(1 for t in report["tasks"] if t["state"] == "success"),
        "files": summary.get("files"),
    }


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        "| size | variant | ok | runs | wall s (dag.test) | Airflow s | publish+wait s | "
        "functions s (busy) | fn sum s | start-up s | tasks run |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    keys = sorted({(r["size"], r["variant"]) for r in results})
    for size, variant in keys:
        runs = [r for r in results if r["size"] == size and r["variant"] == variant]
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append(f"| {size} | {variant} | error: {runs[0]['error']} |")
            continue

        def med(key: str, good: list[dict[str, Any]] = good) -> str:
            values = [r[key] for r in good]
            text = f"{statistics.median(values):.1f}"
            if len(values) > 1:
                text += " (" + ", ".join(f"{v:.1f}" for v in values) + ")"
            return text

        ok = all(r["ok"] for r in good)
        rows.append(
            f"| {size} | {variant} | {'yes' if ok else 'NO'} | {len(good)} | {med('wall')} | "
            f"{med('airflow')} | {med('relay')} | {med('functions')} | {med('function_sum')} | "
            f"{med('startup')} | {good[0]['tasks']} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated request counts")
    parser.add_argument("--quick", action="store_true", help="size 20 only, one run")
    parser.add_argument("--runs", type=int, default=1, help="runs per size and variant")
    parser.add_argument(
        "--variants", default="relay,provider", help="comma-separated: relay,provider"
    )
    parser.add_argument("--file", type=Path, default=_ROOT / "relay.yaml", help="topology")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the unrecorded warm-up run of each variant at size 10 (cold function, caches)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args(argv)
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    runs = 1 if args.quick else args.runs
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    topology = load_topology(args.file)
    run_dir = Path(tempfile.mkdtemp(prefix="relay-bench-pipeline-"))
    (run_dir / "logs").mkdir()
    results: list[dict[str, Any]] = []
    try:
        with stack_up(topology, data_dir=run_dir / "stack") as stack:
            dags = run_dir / "dags"  # both DAG files, copied: dag.test() needs them in the folder
            dags.mkdir()
            shutil.copy(_RELAY_DAG, dags / "relay_csv_pipeline.py")
            shutil.copy(_PROVIDER_DAG, dags / "relay_csv_pipeline_provider.py")
            env = airflow_environment(run_dir, dags, topology.project, stack.broker.host)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
            migrate = [sys.executable, "-m", "airflow", "db", "migrate"]
            if _run_logged(migrate, env, run_dir, "db-migrate") != 0:
                print(f"airflow db migrate failed: {run_dir / 'logs'}", file=sys.stderr)
                return 1
            tail = _LogTail(stack.functions[_FUNCTION].log)
            tail.start()
            try:
                plan = [(10, -1)] if args.warmup else []  # run -1: warm-up, not recorded
                plan += [(size, run) for size in sizes for run in range(runs)]
                for size, run in plan:
                    csv_dir = run_dir / f"csv-{size}"
                    expected = generate_csvs(csv_dir, size)
                    for variant in variants:
                        conf: dict[str, Any] = {
                            "csv_dir": str(csv_dir),
                            "request_topic": _csv_topic(topology),
                            "completion_topic": topology.completion_topic,
                        }
                        if variant == "provider":
                            conf |= {
                                "project": topology.project,
                                "subscription": f"bench-{uuid.uuid4().hex[:12]}",
                                "expected": size,
                            }
                        print(f"size {size} run {run + 1} {variant} ...", file=sys.stderr)
                        result = _run_variant(
                            variant, size, csv_dir, conf, env, run_dir, tail, expected.rows
                        )
                        print(json.dumps(result), file=sys.stderr)
                        if run >= 0:
                            results.append(result)
                        dead = stack.dead()
                        if dead:
                            print("\n".join(dead), file=sys.stderr)
                            return 1
            finally:
                tail.stop()
    finally:
        if args.keep:
            print(f"kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
