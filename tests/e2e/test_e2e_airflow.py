"""A real Airflow deployment end to end: the example pipeline and relay's fault tolerance.

Airflow's API server, scheduler, DAG processor and triggerer run as separate processes on
PostgreSQL with the LocalExecutor (conftest.py); relay broker and the functions of relay.yaml run
beside them. Everything is driven and checked through Airflow's REST API only: trigger a run, poll
it to its final state, read XCom and task logs. The fault tests crash one part mid-run (kill -9)
and restart it; each run must still succeed with every result in XCom exactly once. See
docs/e2e.md.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _e2e_airflow import AirflowApi
from _e2e_procs import E2EError, wait_until
from _e2e_stack import DAG_IDS, E2E

from relay.demo import Expected, generate_csvs

ECHO = "relay_e2e_echo"
PIPELINE = "relay_csv_pipeline"
NATIVE = "relay_csv_pipeline_trigger"
NATIVE_ECHO = "relay_e2e_echo_native"
RUN_TIMEOUT = 240.0
# The first test also pays for the module's start-up (PostgreSQL DB, migrate, four components).
pytestmark = pytest.mark.timeout(600)
# Airflow 3.3.2 race (docs/e2e.md): a trigger firing before the scheduler has processed the
# executor's "success" event of the deferring worker can get the resumed try marked failed.
# Airflow records that as a "state mismatch" event log; only such tries may be retried.
RACE_EVENT = "state mismatch"


@pytest.fixture(scope="module")
def api(e2e: E2E) -> AirflowApi:
    """The REST client, once the DAG processor has parsed every DAG of the test's dags folder."""
    client = e2e.airflow.api
    started = time.monotonic()

    def parsed() -> bool:
        return all(client.dag_exists(dag_id) for dag_id in DAG_IDS)

    try:
        wait_until("DAGs parsed", parsed, 120, procs=list(e2e.airflow.procs.values()))
    except E2EError as exc:
        raise E2EError(f"{exc}\nimport errors: {client.import_errors()}") from exc
    e2e.timings["dags parsed"] = time.monotonic() - started
    return client


def _items(name: str, count: int, **extra: Any) -> list[dict[str, Any]]:
    """`count` unique echo requests for one test."""
    nonce = uuid.uuid4().hex[:8]
    return [{"test": name, "i": i, "nonce": nonce, **extra} for i in range(count)]


def _trigger_echo(e2e: E2E, items: list[dict[str, Any]]) -> str:
    return str(e2e.airflow.api.trigger(ECHO, {"items": items}))


def _finish(e2e: E2E, dag_id: str, run_id: str) -> str:
    started = time.monotonic()
    state = str(e2e.airflow.api.wait_for_run(dag_id, run_id, RUN_TIMEOUT, e2e.airflow))
    print(f"{dag_id} {run_id}: {state} after {time.monotonic() - started:.0f}s more")
    return state


def _context(e2e: E2E, dag_id: str, run_id: str) -> str:
    """What a failing assertion shows: task states and every component's log tail."""
    return f"tasks: {e2e.airflow.api.task_states(dag_id, run_id)}\n{e2e.logs()}"


def _wait_for_deferred(e2e: E2E, run_id: str) -> dict[str, str | None]:
    """Wait until a `call` task is deferred (its request is out, its trigger waits)."""
    api = e2e.airflow.api
    states: dict[str, str | None] = {}

    def deferred() -> bool:
        nonlocal states
        states = api.task_states(ECHO, run_id)
        return any(state == "deferred" for name, state in states.items() if name.startswith("call"))

    wait_until("a deferred call task", deferred, 180, interval=0.3)
    return states


def _unfinished(states: dict[str, str | None]) -> list[str]:
    return [name for name, state in states.items() if state not in ("success", "failed")]


def _tries_explained(e2e: E2E, dag_id: str, run_id: str) -> None:
    """Every retried task instance was retried because of Airflow's own race (RACE_EVENT), never
    because relay failed it."""
    api = e2e.airflow.api
    for ti in api.task_instances(dag_id, run_id):
        retries = int(ti["try_number"]) - 1
        if retries <= 0:
            continue
        logs = api.json(
            "GET",
            "/eventLogs",
            params={
                "dag_id": dag_id,
                "run_id": run_id,
                "task_id": ti["task_id"],
                "map_index": ti["map_index"],
                "event": RACE_EVENT,
            },
        )
        races = int(logs["total_entries"])
        print(f"{ti['task_id']}[{ti['map_index']}]: {retries} retry(ies), {races} Airflow race(s)")
        assert retries <= races, (
            f"{ti['task_id']}[{ti['map_index']}] needed {retries} retry(ies), only {races} of them "
            f"caused by Airflow's {RACE_EVENT!r} race:\n{_context(e2e, dag_id, run_id)}"
        )


def _check_echoed_exactly_once(
    e2e: E2E,
    run_id: str,
    items: list[dict[str, Any]],
    *,
    failed: tuple[int, ...] = (),
    dag_id: str = ECHO,
) -> None:
    """One return_value per successful `call[i]`, equal to items[i]; none for failed ones."""
    api = e2e.airflow.api
    entries = api.xcom_entries(dag_id, run_id, "call", "return_value")
    indexes = sorted(entry["map_index"] for entry in entries)
    expected = [i for i in range(len(items)) if i not in failed]
    assert indexes == expected, f"XCom rows by map index {indexes}, expected {expected}"
    for i in expected:
        assert api.xcom(dag_id, run_id, "call", "return_value", i) == items[i]


def _run_with_fault(
    e2e: E2E,
    api: AirflowApi,
    name: str,
    fault: Callable[[], None],
    count: int = 4,
    started: Callable[[str], None] | None = None,
) -> None:
    """Trigger, wait for a deferred call, apply the fault, then check the run end to end."""
    items = _items(name, count)
    run_id = _trigger_echo(e2e, items)
    if started is not None:
        started(run_id)
    states = _wait_for_deferred(e2e, run_id)
    assert _unfinished(states), f"the run finished before the fault: {states}"
    print(f"{name}: fault while {states}")
    fault()
    state = _finish(e2e, ECHO, run_id)
    assert state == "success", _context(e2e, ECHO, run_id)
    _check_echoed_exactly_once(e2e, run_id, items)
    _tries_explained(e2e, ECHO, run_id)


# -- the example pipeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    run_id: str
    state: str
    uris: list[str]
    expected: Expected


@pytest.fixture(scope="module")
def pipeline_run(e2e: E2E, api: AirflowApi) -> PipelineRun:
    """dags/relay_csv_pipeline.py triggered over REST on 100 fresh CSV files, run to its end."""
    folder = e2e.relay.inputs / "pipeline"
    expected = generate_csvs(folder, 100)
    conf = {
        "csv_dir": str(folder),
        "request_topic": e2e.relay.topic_of("csv_profile"),
        "completion_topic": e2e.relay.topology.completion_topic,
    }
    run_id = api.trigger(PIPELINE, conf)
    state = _finish(e2e, PIPELINE, run_id)
    uris = [path.resolve().as_uri() for path in sorted(folder.glob("*.csv"))]
    return PipelineRun(run_id, state, uris, expected)


def test_pipeline_dag_through_the_rest_api(
    e2e: E2E, api: AirflowApi, pipeline_run: PipelineRun
) -> None:
    """The pipeline succeeds; each file's profile is in XCom exactly once; the sums are right."""
    run_id = pipeline_run.run_id
    assert pipeline_run.state == "success", _context(e2e, PIPELINE, run_id)
    assert len(api.xcom_entries(PIPELINE, run_id, "profile", "return_value")) == 1
    profiles = api.xcom(PIPELINE, run_id, "profile", "return_value")
    assert Counter(p["uri"] for p in profiles) == Counter(pipeline_run.uris)
    expected = pipeline_run.expected
    summary = api.xcom(PIPELINE, run_id, "summarize", "return_value")
    assert summary == {
        "files": expected.files,
        "rows": expected.rows,
        "empty_cells": expected.empty_cells,
    }
    _tries_explained(e2e, PIPELINE, run_id)


def test_pipeline_results_in_item_order(api: AirflowApi, pipeline_run: PipelineRun) -> None:
    """RelayFanOutOperator returns results in item order (its docstring), on PostgreSQL too."""
    profiles = api.xcom(PIPELINE, pipeline_run.run_id, "profile", "return_value")
    got = [p["uri"].rsplit("/", 1)[1] for p in profiles]
    want = [uri.rsplit("/", 1)[1] for uri in pipeline_run.uris]
    assert got == want, f"fan-out results out of item order: first ten {got[:10]}"


def test_pipeline_with_defer_after_finishes_on_the_worker(
    e2e: E2E, api: AirflowApi, pipeline_run: PipelineRun
) -> None:
    """Run conf defer_after=60: the results come within it, so `profile` never defers (the run
    above, defer_after 0, did), and the outcome is the same."""
    folder = e2e.relay.inputs / "defer-after"
    expected = generate_csvs(folder, 20)
    conf = {
        "csv_dir": str(folder),
        "request_topic": e2e.relay.topic_of("csv_profile"),
        "completion_topic": e2e.relay.topology.completion_topic,
        "defer_after": 60,
    }
    run_id = api.trigger(PIPELINE, conf)
    assert _finish(e2e, PIPELINE, run_id) == "success", _context(e2e, PIPELINE, run_id)
    summary = api.xcom(PIPELINE, run_id, "summarize", "return_value")
    assert (summary["files"], summary["rows"]) == (expected.files, expected.rows)
    deferred = "Pausing task as DEFERRED"
    assert deferred in api.task_log(PIPELINE, pipeline_run.run_id, "profile", 1, -1)
    log = api.task_log(PIPELINE, run_id, "profile", 1, -1)
    assert "published 20 dev.relay.example.csv.profile request(s)" in log, log[-3000:]
    assert deferred not in log, log[-3000:]


def test_pipeline_started_in_the_triggerer_runs_no_worker_process_for_profile(
    e2e: E2E, api: AirflowApi, pipeline_run: PipelineRun
) -> None:
    """relay_csv_pipeline_trigger (dags/relay_csv_pipeline.py, `profile` started in the
    triggerer) on the same 100 files: the same profiles and summary as the pipeline, and
    `profile` succeeded on its first try without ever being queued to a worker: its only log is
    a trigger log."""
    conf = {
        "csv_dir": str(e2e.relay.inputs / "pipeline"),
        "request_topic": e2e.relay.topic_of("csv_profile"),
        "completion_topic": e2e.relay.topology.completion_topic,
    }
    run_id = api.trigger(NATIVE, conf)
    assert _finish(e2e, NATIVE, run_id) == "success", _context(e2e, NATIVE, run_id)
    assert api.xcom(NATIVE, run_id, "profile", "return_value") == api.xcom(
        PIPELINE, pipeline_run.run_id, "profile", "return_value"
    )
    assert api.xcom(NATIVE, run_id, "summarize", "return_value") == api.xcom(
        PIPELINE, pipeline_run.run_id, "summarize", "return_value"
    )
    (profile,) = [ti for ti in api.task_instances(NATIVE, run_id) if ti["task_id"] == "profile"]
    print(f"profile: {profile}")
    assert profile["state"] == "success"
    assert profile["try_number"] == 1
    assert profile["queued_when"] is None  # never queued to the executor
    assert profile["pid"] is None  # no task process
    logs = e2e.airflow.home / "logs" / f"dag_id={NATIVE}" / f"run_id={run_id}"
    assert [p.name for p in (logs / "task_id=list_files").iterdir()] == ["attempt=1.log"]
    files = sorted(p.name for p in (logs / "task_id=profile").iterdir())
    assert len(files) == 1, files
    assert files[0].startswith("attempt=1.log.trigger."), files  # no worker log
    log = (logs / "task_id=profile" / files[0]).read_text()
    assert "published 100 dev.relay.example.csv.profile request(s)" in log, log[-3000:]
    assert "results: {'succeeded': 100}" in log, log[-3000:]


# -- faults: each run must still succeed, every result in XCom exactly once -----------------------


def test_broker_killed_and_restarted_mid_run(e2e: E2E, api: AirflowApi) -> None:
    """kill -9 of relay broker while tasks publish and wait; same ports and data dir after."""

    def fault() -> None:
        e2e.relay.broker.kill()
        time.sleep(2)
        e2e.relay.start_broker()

    _run_with_fault(e2e, api, "broker-kill", fault)
    assert e2e.relay.broker.starts >= 2


def test_function_server_killed_and_restarted_mid_run(e2e: E2E, api: AirflowApi) -> None:
    """kill -9 of the echo function's server (gunicorn and workers); pushes fail meanwhile."""
    echo = e2e.relay.function_named("echo")

    def fault() -> None:
        echo.kill()
        time.sleep(1)
        e2e.relay.start_function(echo)

    _run_with_fault(e2e, api, "function-kill", fault)
    assert echo.starts >= 2


def test_triggerer_killed_and_restarted_while_deferred(e2e: E2E, api: AirflowApi) -> None:
    """kill -9 of the triggerer while tasks are deferred; results arrive while it is down.

    No trigger can fire while the triggerer is dead, so every call still deferred when it comes
    back must be resumed by the new triggerer, from results kept in its wait subscription.
    """
    triggerer = e2e.airflow.procs["triggerer"]
    left_deferred: list[str] = []

    def fault() -> None:
        triggerer.kill()
        time.sleep(5)  # tasks keep publishing and deferring; echo answers meanwhile
        states = api.task_states(ECHO, triggerer_run[0])
        left_deferred.extend(name for name, state in states.items() if state == "deferred")
        e2e.airflow.restart("triggerer")

    triggerer_run: list[str] = []
    _run_with_fault(e2e, api, "triggerer-kill", fault, started=triggerer_run.append)
    assert triggerer.starts >= 2
    assert left_deferred, "no task was deferred while the triggerer was down"
    # Those tasks' triggers ran in the new triggerer: their trigger logs carry its job id.
    jobs = api.json("GET", "/jobs", params={"job_type": "TriggererJob", "limit": 100})["jobs"]
    newest = max(int(job["id"]) for job in jobs)
    run_logs = e2e.airflow.home / "logs" / f"dag_id={ECHO}" / f"run_id={triggerer_run[0]}"
    resumed = list(run_logs.glob(f"task_id=call/map_index=*/attempt=*.log.trigger.{newest}.log"))
    assert resumed, f"no trigger of this run ran in triggerer job {newest} ({left_deferred})"


def test_retryable_failures_are_redelivered(e2e: E2E, api: AirflowApi) -> None:
    """echo {"crash": 2} fails retryably on delivery attempts 1 and 2; attempt 3 answers.

    Google's push wrapper (what relay.yaml provisions) reports the delivery attempt to echo.
    """
    items = _items("crash", 3, crash=2)
    run_id = _trigger_echo(e2e, items)
    state = _finish(e2e, ECHO, run_id)
    assert state == "success", _context(e2e, ECHO, run_id)
    _check_echoed_exactly_once(e2e, run_id, items)
    _tries_explained(e2e, ECHO, run_id)
    # The function really crashed twice per request before answering: its log says so.
    echo_log = [
        json.loads(line)
        for line in e2e.relay.function_named("echo").text(since_start=False).splitlines()
        if line.startswith("{")
    ]
    for i in range(len(items)):
        (cid,) = api.xcom(ECHO, run_id, "call", "correlation_ids", i)
        crashes = [
            entry
            for entry in echo_log
            if entry.get("correlationid") == cid and "Crash" in str(entry.get("error"))
        ]
        assert len(crashes) >= 2, f"request {cid}: {crashes}"


def test_non_retryable_failure_fails_only_its_task(e2e: E2E, api: AirflowApi) -> None:
    """echo {"fail": msg} in one request: that task fails with msg in its log; the rest succeed."""
    message = f"e2e refuses {uuid.uuid4().hex[:6]}"
    items = _items("fail", 3)
    items[1]["fail"] = message
    run_id = api.trigger(ECHO, {"items": items})
    state = _finish(e2e, ECHO, run_id)
    assert state == "failed", _context(e2e, ECHO, run_id)
    states = api.task_states(ECHO, run_id)
    assert states == {
        "requests": "success",
        "call[0]": "success",
        "call[1]": "failed",
        "call[2]": "success",
    }, _context(e2e, ECHO, run_id)
    _check_echoed_exactly_once(e2e, run_id, items, failed=(1,))
    _tries_explained(e2e, ECHO, run_id)
    failed = next(ti for ti in api.task_instances(ECHO, run_id) if ti["map_index"] == 1)
    # a non-retryable failure fails the task at once, despite the deployment's one task retry
    assert int(failed["try_number"]) == 1, _context(e2e, ECHO, run_id)
    log = api.task_log(ECHO, run_id, "call", int(failed["try_number"]), 1)
    assert message in log, log[-3000:]
    assert "EchoFailure" in log, log[-3000:]


# -- a task started in the triggerer (relay_e2e_echo_native: fan_out, start_in_triggerer=True) -----


def _fan_out(e2e: E2E, run_id: str) -> dict[str, Any]:
    (ti,) = [
        t for t in e2e.airflow.api.task_instances(NATIVE_ECHO, run_id) if t["task_id"] == "fan_out"
    ]
    return ti


def _fan_out_logs(e2e: E2E, run_id: str) -> dict[str, str]:
    """fan_out's log files of try 1 by name (trigger logs and, if a worker ran, its log)."""
    folder = e2e.airflow.home / "logs" / f"dag_id={NATIVE_ECHO}" / f"run_id={run_id}"
    return {p.name: p.read_text() for p in (folder / "task_id=fan_out").iterdir()}


def test_triggerer_killed_mid_wait_of_a_task_started_in_the_triggerer(
    e2e: E2E, api: AirflowApi
) -> None:
    """kill -9 of the triggerer after fan_out's trigger published and while it waits: the new
    triggerer runs the trigger again, which re-sends the same ce-ids into the same subscription
    and finds the results kept there: success on the first try, never on a worker, each result
    in XCom exactly once and in item order."""
    items = _items("native-kill", 6, sleep=3)
    run_id = api.trigger(NATIVE_ECHO, {"items": items})

    def published() -> bool:
        return bool(api.xcom_entries(NATIVE_ECHO, run_id, "fan_out", "event_ids"))

    wait_until("fan_out's requests published", published, 180, interval=0.2)
    sent = api.xcom(NATIVE_ECHO, run_id, "fan_out", "event_ids")
    triggerer = e2e.airflow.procs["triggerer"]
    triggerer.kill()
    assert _fan_out(e2e, run_id)["state"] == "deferred"
    time.sleep(6)  # echo answers while no triggerer runs
    e2e.airflow.restart("triggerer")
    assert _finish(e2e, NATIVE_ECHO, run_id) == "success", _context(e2e, NATIVE_ECHO, run_id)
    assert api.xcom(NATIVE_ECHO, run_id, "fan_out", "return_value") == items
    assert api.xcom(NATIVE_ECHO, run_id, "fan_out", "event_ids") == sent  # the same requests
    ti = _fan_out(e2e, run_id)
    assert (ti["try_number"], ti["queued_when"], ti["pid"]) == (1, None, None), ti
    logs = _fan_out_logs(e2e, run_id)
    assert all(".log.trigger." in name for name in logs), sorted(logs)  # no worker log
    jobs = api.json("GET", "/jobs", params={"job_type": "TriggererJob", "limit": 100})["jobs"]
    newest = max(int(job["id"]) for job in jobs)
    rerun = logs.get(f"attempt=1.log.trigger.{newest}.log", "")
    assert f"published {len(items)} dev.relay.example.echo request(s)" in rerun, sorted(logs)
    assert f"results: {{'succeeded': {len(items)}}}" in rerun, rerun[-3000:]


def test_a_task_started_in_the_triggerer_fails_as_on_a_worker(e2e: E2E, api: AirflowApi) -> None:
    """Every request of fan_out fails non-retryably: the task fails on its first try despite its
    task retry, as a worker-run fan-out does (Airflow has no fail-without-retry trigger event, so
    a worker resumes the task only to raise the error), naming the function's error."""
    message = f"e2e refuses {uuid.uuid4().hex[:6]}"
    items = _items("native-fail", 2, fail=message)
    run_id = api.trigger(NATIVE_ECHO, {"items": items})
    assert _finish(e2e, NATIVE_ECHO, run_id) == "failed", _context(e2e, NATIVE_ECHO, run_id)
    ti = _fan_out(e2e, run_id)
    assert (ti["state"], ti["try_number"]) == ("failed", 1), ti
    outcomes = api.xcom(NATIVE_ECHO, run_id, "fan_out", "outcomes")
    assert [o["status"] for o in outcomes] == ["failed", "failed"], outcomes
    assert all(o["error"]["type"] == "EchoFailure" for o in outcomes), outcomes
    log = "\n".join(_fan_out_logs(e2e, run_id).values())
    assert "RelayNonRetryablePartialFailureError" in log, log[-3000:]
    assert message in log, log[-3000:]
