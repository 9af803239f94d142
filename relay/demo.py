"""`python -m relay.demo` (what `make demo` runs): the example pipeline end to end, locally.

1. brings the local stack up from relay.yaml (`relay broker`, provisioning, every function);
2. writes a set of CSV files into a fresh run folder;
3. runs the example DAG through real Airflow (SQLite metadata DB in the run folder,
   `airflow db migrate`, then `dag.test()`): one csv-profile request per file in one deferred
   fan-out, then a summary task;
4. shows results arriving on the completion topic as they come, checks the summary against what
   it generated, and prints the outcome and where the logs and results are.

Airflow runs in a child process (this module again, with `--run-dag`), so its configuration comes
from the environment set here and its logging stays out of this terminal.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import json
import os
import random
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from relay.protocol import EXAMPLE_CSV_PROFILE, RESULT_SUCCEEDED
from relay.topology import Topology, TopologyError, load_topology
from relay.up import CompletionMonitor, Observed, Stack, StackError, airflow_connection, stack_up
from relay.up.cli import render_stack

DAG_ID = "relay_csv_pipeline"
DEFAULT_FILES = 120
_COLUMNS = ("id", "name", "city", "amount", "note")
_CITIES = ("Lisbon", "Oslo", "Tunis", "Quito", "Osaka", "Perth", "")


@dataclass(frozen=True)
class Expected:
    """What the generated files hold, to check the pipeline's summary against."""

    files: int
    rows: int
    empty_cells: dict[str, int]


def generate_csvs(folder: Path, count: int, *, seed: int = 6) -> Expected:
    """Write `count` small CSV files (header + 5..60 rows, some empty cells) into `folder`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows_total = 0
    empty = dict.fromkeys(_COLUMNS, 0)
    for index in range(count):
        rows = rng.randint(5, 60)
        with (folder / f"orders-{index:04d}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_COLUMNS)
            for row in range(rows):
                values = [
                    f"{index}-{row}",
                    rng.choice(("ada", "grace", "alan", "edsger", "")),
                    rng.choice(_CITIES),
                    f"{rng.uniform(1, 500):.2f}" if rng.random() > 0.05 else "",
                    "" if rng.random() > 0.2 else "rush",
                ]
                for column, value in zip(_COLUMNS, values, strict=True):
                    if not value:
                        empty[column] += 1
                writer.writerow(values)
        rows_total += rows
    return Expected(count, rows_total, empty)


def airflow_environment(
    run_dir: Path, dags_folder: Path, topology: Topology, host: str
) -> dict[str, str]:
    """Environment for a throw-away Airflow: SQLite under the run folder, anonymous Pub/Sub
    (the topology's project, its waits in their wait project)."""
    home = run_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": airflow_connection(topology),
            "PUBSUB_EMULATOR_HOST": host,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_dag(dag_file: Path, dag_id: str, conf: dict[str, Any], report: Path) -> int:
    """The child process: `dag.test()` the DAG, then write states and the summary to `report`."""
    spec = importlib.util.spec_from_file_location(f"_relay_demo_{dag_id}", dag_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {dag_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    dags = [v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id]
    if not dags:
        raise SystemExit(f"no DAG {dag_id!r} in {dag_file}")
    started = time.monotonic()
    run = dags[0].test(run_conf=conf)
    seconds = time.monotonic() - started
    states = {
        f"{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
        for ti in run.get_task_instances()
    }
    summary = _xcom(run, "summarize")
    report.write_text(
        json.dumps(
            {
                "dag_id": dag_id,
                "run_id": run.run_id,
                "state": str(run.state),
                "seconds": round(seconds, 1),
                "tasks": states,
                "summary": summary,
            },
            indent=2,
        )
    )
    return 0 if str(run.state) == "success" else 1


def _xcom(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value")
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (or, with --run-dag, the Airflow child process)."""
    parser = argparse.ArgumentParser(
        prog="python -m relay.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--file", type=Path, default=Path("relay.yaml"), help="topology file")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".relay/demo"), help="run folders go here"
    )
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="CSV files to generate")
    parser.add_argument(
        "--dags-folder", type=Path, default=None, help="default: dags/ by relay.yaml"
    )
    parser.add_argument("--dag-id", default=DAG_ID)
    parser.add_argument(
        "--broker-args",
        default="",
        help="more `relay broker` options, e.g. '--profile google --admin-latency 0.2'",
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="relay deploy every function to relay up's control plane first: the pipeline then "
        "runs against the deployed archives",
    )
    parser.add_argument(
        "--run-dag", nargs=3, metavar=("DAG_FILE", "CONF_JSON", "REPORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.run_dag:
        dag_file, conf, report = args.run_dag
        return run_dag(Path(dag_file), args.dag_id, json.loads(conf), Path(report))
    return _demo(args)


class _Counter:
    """Counts csv-profile results seen on the completion topic (called on the client's thread)."""

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, observed: Observed) -> None:
        if observed.event is None or observed.event.subject != EXAMPLE_CSV_PROFILE:
            return
        with self._lock:
            if observed.type == RESULT_SUCCEEDED:
                self.succeeded += 1
            else:
                self.failed += 1

    @property
    def total(self) -> int:
        with self._lock:
            return self.succeeded + self.failed


def _demo(args: argparse.Namespace) -> int:
    console = Console()
    try:
        topology = load_topology(args.file)
    except TopologyError as exc:
        console.print(str(exc), markup=False)
        return 2
    dags_folder = (args.dags_folder or args.file.resolve().parent / "dags").resolve()
    dag_file = dags_folder / f"{args.dag_id}.py"
    if not dag_file.is_file():
        console.print(f"[red]no DAG file {dag_file}[/]")
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (args.data_dir / f"run-{stamp}").resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    expected = generate_csvs(run_dir / "csv", args.files)
    (run_dir / "expected.json").write_text(json.dumps(asdict(expected), indent=2))
    console.print(
        f"generated {expected.files} CSV files ({expected.rows} rows) in {run_dir / 'csv'}",
        highlight=False,
    )
    counter = _Counter()
    started = time.monotonic()
    local = with_csv_inputs(topology, run_dir / "csv")
    try:
        with ExitStack() as resources:
            with console.status("bringing the stack up") as status:
                stack = resources.enter_context(
                    stack_up(
                        local,
                        data_dir=run_dir / "stack",
                        broker_args=shlex.split(args.broker_args),
                        status=status.update,
                    )
                )
            render_stack(console, stack)
            if args.deploy:
                _deploy_locally(console, local)
            env = airflow_environment(run_dir, dags_folder, topology, stack.broker.host)
            with console.status("airflow db migrate (SQLite)"):
                migrated = _run_logged(
                    [sys.executable, "-m", "airflow", "db", "migrate"], env, run_dir, "db-migrate"
                )
            if migrated != 0:
                log = run_dir / "logs" / "airflow-db-migrate.log"
                console.print(f"[red]airflow db migrate failed[/]: see {log}", highlight=False)
                return 1
            resources.enter_context(
                CompletionMonitor(
                    topology.project,
                    topology.completion_topic,
                    subscription=f"relay-demo-{stamp}",
                    on_event=counter,
                )
            )
            conf = {
                "csv_dir": str(run_dir / "csv"),
                "request_topic": _csv_topic(topology),
                "completion_topic": topology.completion_topic,
            }
            _run_dag_watched(
                console, stack, args.dag_id, dag_file, conf, env, run_dir, expected, counter
            )
    except StackError as exc:
        console.print(f"[red]the stack failed[/]\n{exc}", highlight=False)
        return 1
    return _report(console, run_dir, expected, counter, time.monotonic() - started)


def _deploy_locally(console: Console, topology: Topology) -> None:
    """`relay deploy` to the stack's control plane (CLOUD_FUNCTIONS_EMULATOR_HOST)."""
    from relay.deploy import deploy
    from relay.deploy.cli import render_deploy_plan

    with console.status("relay deploy") as status:
        plan, deployed = deploy(
            topology, progress=lambda name, text: status.update(f"relay deploy: {name}: {text}")
        )
    render_deploy_plan(console, plan, dry_run=False)
    for item in deployed:
        console.print(
            f"  {item.change.desired.function_id}: {item.state} at {item.uri} (deployed)",
            highlight=False,
        )


def _csv_topic(topology: Topology) -> str:
    for function in topology.functions.values():
        if function.source.name == "csv_profile":
            return function.topic
    return "relay-csv-profile-requests"


CSV_SOURCES_ENV = "CSV_PROFILE_SOURCES"
"""Where functions/csv_profile may read CSV files (its main.py reads this variable)."""


def with_csv_inputs(topology: Topology, folder: Path) -> Topology:
    """`topology` with the csv_profile function allowed to read under `folder` and nowhere else."""
    functions = {
        name: replace(
            function,
            environment=MappingProxyType(
                {**function.environment, CSV_SOURCES_ENV: str(folder.resolve())}
            ),
        )
        if function.source.name == "csv_profile"
        else function
        for name, function in topology.functions.items()
    }
    return replace(topology, functions=MappingProxyType(functions))


def _run_dag_watched(
    console: Console,
    stack: Stack,
    dag_id: str,
    dag_file: Path,
    conf: dict[str, Any],
    env: dict[str, str],
    run_dir: Path,
    expected: Expected,
    counter: _Counter,
) -> None:
    """Run the DAG in a child process, with a progress bar of results seen meanwhile."""
    argv = [sys.executable, "-m", "relay.demo", "--dag-id", dag_id, "--run-dag"]
    argv += [str(dag_file), json.dumps(conf), str(run_dir / "report.json")]
    with (run_dir / "logs" / "airflow-dag-test.log").open("wb") as log:
        child = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(TextColumn("[bold]{task.description}"), *columns, console=console) as bar:
            task = bar.add_task(f"Airflow {dag_id}: results", total=expected.files)
            while child.poll() is None:
                bar.update(task, completed=counter.total)
                dead = stack.dead()
                if dead:
                    raise StackError("\n".join(dead))
                time.sleep(0.3)
            bar.update(task, completed=counter.total)
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(30)


def _run_logged(argv: list[str], env: dict[str, str], run_dir: Path, name: str) -> int:
    with (run_dir / "logs" / f"airflow-{name}.log").open("wb") as handle:
        return subprocess.run(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=600, check=False
        ).returncode


def _report(
    console: Console, run_dir: Path, expected: Expected, counter: _Counter, elapsed: float
) -> int:
    logs = run_dir / "logs"
    report_file = run_dir / "report.json"
    if not report_file.is_file():
        log = logs / "airflow-dag-test.log"
        console.print(f"[red]the Airflow run did not finish[/]: see {log}", highlight=False)
        return 1
    report = json.loads(report_file.read_text())
    summary = report.get("summary") or {}
    checks = {
        "DAG run succeeded": report["state"] == "success",
        f"{expected.files} files profiled": summary.get("files") == expected.files,
        f"{expected.rows} rows counted": summary.get("rows") == expected.rows,
        "empty cells per column match": summary.get("empty_cells") == expected.empty_cells,
    }
    console.print(
        f"[bold]DAG {report['dag_id']}[/] · run {report['run_id']} · {report['seconds']}s",
        highlight=False,
        soft_wrap=True,
    )
    for task, state in report["tasks"].items():
        color = "green" if state == "success" else "red"
        console.print(f"  {task:<20} [{color}]{state}[/]", highlight=False)
    console.print(
        f"completion topic: {counter.succeeded} succeeded, {counter.failed} failed results\n"
        f"summary: {summary.get('files')} files, {summary.get('rows')} rows",
        highlight=False,
    )
    for check, passed in checks.items():
        console.print(f"  {'[green]✔' if passed else '[red]✘'}[/] {check}", highlight=False)
    ok = all(checks.values())
    verdict = "[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]"
    console.print(f"{verdict} in {elapsed:.0f}s")
    console.print(
        "where to look:\n"
        f"  report      {report_file}\n"
        f"  inputs      {run_dir / 'csv'}\n"
        f"  Airflow     {logs / 'airflow-dag-test.log'}\n"
        f"  task logs   {run_dir / 'airflow' / 'logs'}\n"
        f"  stack logs  {run_dir / 'stack' / 'logs'} (broker, one file per function)",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
