"""Wall time of the example CSV pipeline on a real Airflow deployment, relay vs the Google provider.

Run: `uv run --frozen python -m benchmarks.pipeline` (sizes 100 and 1,000; `--quick`: 20 only).
The deployment is the end-to-end tests' (tests/e2e, docs/e2e.md): API server, scheduler, DAG
processor and triggerer as separate processes on PostgreSQL with the LocalExecutor, driven through
the REST API; the relay side is `relay.up.stack_up` on relay.yaml. For each size and run it
triggers, one after the other:

- relay:    dags/relay_csv_pipeline.py (list_files -> RelayFanOutOperator, deferrable -> summarize);
- relay_defer_after: the same DAG with conf defer_after (`--defer-after`, 30 s): `profile` waits on
            its worker first and defers only if the results are not all in by then;
- relay_trigger: relay_csv_pipeline_trigger of the same DAG file, the same pipeline with `profile`
            started in the triggerer (start_in_triggerer=True: no worker process for it);
- provider: benchmarks/_pipeline_provider_dag.py (list_files -> PubSubCreateSubscriptionOperator ->
            PubSubPublishMessageOperator -> deferrable PubSubPullSensor, repeated until all results
            are in -> summarize);
- floor:    benchmarks/_pipeline_floor_dag.py (list_files -> EmptyOperator -> summarize): what
            Airflow itself costs for the three tasks.

The wall time (run queued -> run end) is split by benchmarks/_pipeline_split.py; the function's
busy intervals come from tailing its log (each JSON line has duration_ms, stamped on arrival).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _pipeline_split
from relay.demo import _csv_topic, generate_csvs, with_csv_inputs
from relay.protocol import EXAMPLE_CSV_PROFILE
from relay.topology import load_topology
from relay.up import stack_up

_ROOT = Path(__file__).resolve().parent.parent
# The deployment harness is the e2e tests' own, imported as pytest imports it: top-level modules
# from tests/e2e and tests/ (its _auth_client): the benchmark runs the very deployment the tests
# check.
sys.path[:0] = [str(_ROOT / "tests" / "e2e"), str(_ROOT / "tests")]
from _e2e_airflow import AirflowApi, AirflowDeployment, airflow_deployment  # noqa: E402
from _e2e_postgres import create_database, drop_database, server_user  # noqa: E402
from _e2e_procs import E2EError, wait_until  # noqa: E402
from _e2e_relay import airflow_pubsub_env  # noqa: E402

_RELAY_DAG = ("relay_csv_pipeline", _ROOT / "dags" / "relay_csv_pipeline.py")
_DAGS = {  # variant: (DAG id, DAG file), in the table's order
    "relay": _RELAY_DAG,
    "relay_defer_after": _RELAY_DAG,  # run with conf defer_after
    "relay_trigger": ("relay_csv_pipeline_trigger", _RELAY_DAG[1]),
    "provider": (
        "relay_csv_pipeline_provider",
        Path(__file__).with_name("_pipeline_provider_dag.py"),
    ),
    "floor": ("relay_csv_pipeline_floor", Path(__file__).with_name("_pipeline_floor_dag.py")),
}
# The variants whose `profile` defers from a worker, so relay's settle delay applies.
_SETTLES = ("relay", "relay_defer_after")
_FUNCTION = "csv-profile"
# The e2e deployment narrows [workers] min_heartbeat_interval to 1 s (the window of Airflow's
# resume-after-defer race); users run the default, which also sets relay's settle delay (5 + 3 s).
_AIRFLOW_DEFAULTS = {"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5"}
_RUN_TIMEOUT = 600.0
_FIRED = "Trigger fired event"


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


def _log_entries(
    deployment: AirflowDeployment, dag_id: str, run_id: str, task_id: str, number: int
) -> list[tuple[float, str]]:
    """A try's log lines (task process and triggers) as (epoch, event), by time. Read from the
    log folder: the REST log endpoint answered 404 for an earlier try once. A trigger's "fired"
    line can be missing there (seen with relay's 1,000-result event): it is in the triggerer's
    own log then."""
    folder = (
        deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    )
    entries = []
    for path in folder.glob(f"attempt={number}.log*"):
        for line in path.read_text(errors="replace").splitlines():
            entry = json.loads(line)
            if entry.get("timestamp") and isinstance(entry.get("event"), str):
                entries.append((_pipeline_split.epoch(entry["timestamp"]), entry["event"]))
    starts = sum(1 for _, e in entries if e.startswith("trigger ") and e.endswith(" starting"))
    if starts > sum(1 for _, e in entries if e == _FIRED):
        name = f"name='{dag_id}/{run_id}/{task_id}/-1/{number} (ID "
        entries += [
            (_pipeline_split.epoch(line.split(" ", 1)[0]), _FIRED)
            for line in deployment.procs["triggerer"].text(since_start=False).splitlines()
            if _FIRED in line and name in line
        ]
    return sorted(entries)


def _record(deployment: AirflowDeployment, dag_id: str, run_id: str) -> dict[str, Any]:
    """What the split needs: run and task instance times (REST), each try's log lines."""
    api = deployment.api
    run = api.run(dag_id, run_id)
    tis = []
    for ti in api.task_instances(dag_id, run_id):
        if not ti["start_date"] or ti["state"] == "skipped":
            continue
        tries = [
            _log_entries(deployment, dag_id, run_id, ti["task_id"], n)
            for n in range(1, ti["try_number"] + 1)
        ]
        end = _pipeline_split.epoch(ti["end_date"]) if ti["end_date"] else None
        tis.append(
            {
                "task_id": ti["task_id"],
                "state": ti["state"],
                "try_number": ti["try_number"],
                "end_date": end,
                "tries": tries,
            }
        )
    return {
        "run_id": run_id,
        "state": run["state"],
        "queued_at": _pipeline_split.epoch(run["queued_at"]),
        "end_date": _pipeline_split.epoch(run["end_date"]),
        "tis": tis,
    }


def _summary(api: AirflowApi, variant: str, dag_id: str, record: dict[str, Any]) -> Any:
    """summarize's return value; provider: XCom "summary" of the gate that ended it."""
    if variant != "provider":
        return api.xcom(dag_id, record["run_id"], "summarize", "return_value")
    gates = [t["task_id"] for t in record["tis"] if t["task_id"].startswith("summarize_")]
    if not gates:
        return None
    last = max(gates, key=lambda task: int(task.rsplit("_", 1)[1]))
    return api.xcom(dag_id, record["run_id"], last, "summary")


def _delete_subscription(project: str, subscription: str) -> None:
    """The provider run's subscription: it never acks, and would collect every later result."""
    from google.api_core.exceptions import NotFound
    from google.cloud.pubsub_v1 import SubscriberClient

    client = SubscriberClient()  # PUBSUB_EMULATOR_HOST: set by stack_up
    try:
        path = client.subscription_path(project, subscription)
        with contextlib.suppress(NotFound):  # the run failed before creating it
            client.delete_subscription(request={"subscription": path}, timeout=30)
    finally:
        client.close()


def _is_wait_task(variant: str, task: str) -> bool:
    """Whether a task publishes or waits (its time is "publish+wait", not "other tasks")."""
    if variant != "provider":
        return task == "profile"
    return task in ("create_subscription", "publish") or task.startswith("wait_")


def _run_variant(
    variant: str,
    size: int,
    conf: dict[str, Any],
    deployment: AirflowDeployment,
    tail: _LogTail,
    expected_rows: int,
    out: Path,
) -> dict[str, Any]:
    """Trigger one run over REST, wait for it, split its wall time; the raw record goes to
    `out` (record-<variant>-<size>-*.json)."""
    dag_id = _DAGS[variant][0]
    api = deployment.api
    tail.take()
    run_id = api.trigger(dag_id, conf)
    try:
        state = api.wait_for_run(dag_id, run_id, _RUN_TIMEOUT, deployment)
    except E2EError as exc:
        return {"variant": variant, "size": size, "error": str(exc).splitlines()[0]}
    finally:
        if variant == "provider":
            _delete_subscription(conf["project"], conf["subscription"])
    time.sleep(0.2)  # the last log lines of the function
    lines = [
        (at, e)
        for at, e in tail.take()
        if e.get("type") == EXAMPLE_CSV_PROFILE and e.get("duration_ms") is not None
    ]
    record = _record(deployment, dag_id, run_id)
    busy = _pipeline_split.union((at - e["duration_ms"] / 1000, at) for at, e in lines)
    (out / f"record-{variant}-{size}-{uuid.uuid4().hex[:6]}.json").write_text(
        json.dumps({"record": record, "busy": busy}, indent=1)
    )
    summary = _summary(api, variant, dag_id, record) if state == "success" else None
    result = _pipeline_split.split(
        record,
        busy,
        (t["task_id"] for t in record["tis"] if _is_wait_task(variant, t["task_id"])),
        settles=variant in _SETTLES,
    )
    result.update(
        {
            "variant": variant,
            "size": size,
            "state": state,
            "ok": state == "success"
            and (summary or {}).get("files") == size
            and (variant == "floor" or (summary or {}).get("rows") == expected_rows),
            "function_sum": sum(e["duration_ms"] for _, e in lines) / 1000,
            "tasks_run": len(record["tis"]),
        }
    )
    return result


def _wait_parsed(deployment: AirflowDeployment) -> None:
    """Until the DAG processor has put every DAG in the database (a trigger 404s before)."""
    api = deployment.api
    wait_until(
        "DAGs parsed",
        lambda: all(api.dag_exists(dag_id) for dag_id, _ in set(_DAGS.values())),
        180,
        procs=list(deployment.procs.values()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated request counts")
    parser.add_argument("--quick", action="store_true", help="size 20 only, one run")
    parser.add_argument("--runs", type=int, default=1, help="runs per size and variant")
    parser.add_argument(
        "--variants",
        default=",".join(_DAGS),
        help=f"comma-separated: {','.join(_DAGS)}",
    )
    parser.add_argument(
        "--defer-after", type=float, default=30.0, help="defer_after of relay_defer_after (s)"
    )
    parser.add_argument("--file", type=Path, default=_ROOT / "relay.yaml", help="topology")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the unrecorded warm-up run of each variant at size 10",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument(
        "--broker-args",
        default="",
        help="more `relay broker` options, e.g. '--push-concurrency 2' or '--profile google'",
    )
    args = parser.parse_args(argv)
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    runs = 1 if args.quick else args.runs
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    topology = load_topology(args.file)
    run_dir = Path(tempfile.mkdtemp(prefix="relay-bench-pipeline-"))
    results: list[dict[str, Any]] = []
    db_url = create_database(server_user())
    try:
        broker_args = shlex.split(args.broker_args)
        inputs = run_dir / "inputs"
        served = with_csv_inputs(topology, inputs)
        with stack_up(served, data_dir=run_dir / "stack", broker_args=broker_args) as stack:
            dags = run_dir / "dags"
            dags.mkdir()
            for source in {source for _, source in _DAGS.values()}:
                shutil.copy(source, dags / source.name)
            env = airflow_pubsub_env(stack.broker.host, topology)
            started = time.monotonic()
            with airflow_deployment(
                run_dir / "airflow", dags, db_url, env, _AIRFLOW_DEFAULTS
            ) as deployment:
                _wait_parsed(deployment)
                print(f"Airflow up in {time.monotonic() - started:.0f}s", file=sys.stderr)
                tail = _LogTail(stack.functions[_FUNCTION].log)
                tail.start()
                try:
                    plan = [(10, -1)] if args.warmup else []  # run -1: warm-up, not recorded
                    plan += [(size, run) for run in range(runs) for size in sizes]
                    expected = {
                        size: generate_csvs(inputs / f"csv-{size}", size)
                        for size in {size for size, _ in plan}
                    }
                    for size, run in plan:
                        for variant in variants:
                            conf: dict[str, Any] = {
                                "csv_dir": str(inputs / f"csv-{size}"),
                                "request_topic": _csv_topic(topology),
                                "completion_topic": topology.completion_topic,
                            }
                            if variant == "relay_defer_after":
                                conf["defer_after"] = args.defer_after
                            if variant == "provider":
                                conf |= {
                                    "project": topology.project,
                                    "subscription": f"bench-{uuid.uuid4().hex[:12]}",
                                    "expected": size,
                                }
                            print(f"size {size} run {run + 1} {variant} ...", file=sys.stderr)
                            result = _run_variant(
                                variant, size, conf, deployment, tail, expected[size].rows, run_dir
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
        drop_database(db_url)
        if args.keep:
            print(f"kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(_pipeline_split.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
