"""Real Airflow: DAGs with relay operators run by dag.test() (deferred tasks' triggers run inline)
against the real broker and a stand-in function."""

from __future__ import annotations

import dataclasses
import importlib.util
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _airflow_responder import Responder

from relay.airflow._publish import task_request_ids

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
]

DAG_FILE = Path(__file__).parent / "_dag_files" / "relay_test_dags.py"


def _states(run: Any) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in run.get_task_instances()}


def _tries(run: Any) -> dict[str, int]:
    """Try number of each task that has retries (1 = failed without a retry)."""
    retried = ("fails", "partial", "fails_retryable")
    return {ti.task_id: ti.try_number for ti in run.get_task_instances() if ti.task_id in retried}


def _xcom(run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    (ti,) = [
        t for t in run.get_task_instances() if t.task_id == task_id and t.map_index == map_index
    ]
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(
                dag_id=ti.dag_id, run_id=ti.run_id, task_id=task_id, map_index=map_index, key=key
            )
            .one()
        )
        return XComModel.deserialize_value(row)


def load_dag(dag_id: str, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse the test DAG file with this test's topics (dag.test() re-parses the DAGs folder)."""
    monkeypatch.setenv("RELAY_TEST_REQUESTS", topics["requests"])
    monkeypatch.setenv("RELAY_TEST_RESULTS", topics["results"])
    spec = importlib.util.spec_from_file_location(f"relay_test_dags_{uuid.uuid4().hex}", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    (dag,) = [v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id]
    return dag


def test_call_fan_out_mapped_and_publish_then_sense(
    airflow_db: Any, topics: dict[str, str], responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = load_dag("relay_happy_path", topics, monkeypatch).test()
    assert set(_states(run).values()) == {"success"}, _states(run)
    assert _xcom(run, "call") == {"text": "relay_happy_path"}  # templated data, echoed
    assert _xcom(run, "mapped", map_index=0) == {"n": 1}
    assert _xcom(run, "mapped", map_index=1) == {"n": 2}
    assert _xcom(run, "fan") == [{"i": i} for i in range(5)]
    assert _xcom(run, "sense") == [{"sensed": True}]
    assert _xcom(run, "call_sync") == {"sync": 1}
    assert _xcom(run, "poke") == [{"p": 1}, {"p": 2}]
    assert _xcom(run, "sense_named") == [{"o": 1}, {"o": 2}]
    (named,) = {r["subscription"] for r in _xcom(run, "publish_named", key="requests")}
    assert named.startswith("projects/relay-waits/subscriptions/relay-task-")
    assert [r.correlationid for r in responder.requests if r.data.get("o")] == [
        f"orders.{run.logical_date:%Y%m%d}-a",
        f"orders.{run.logical_date:%Y%m%d}-b",
    ]
    event_ids = _xcom(run, "call", key="event_ids")
    assert event_ids[0] in {r.id for r in responder.requests}
    assert not responder.errors
    # ids are the task instance's own: a retry of the same task re-sends the same requests
    for task_id, map_index, count in (("call", -1, 1), ("mapped", 1, 1), ("fan", -1, 5)):
        ti = SimpleNamespace(
            dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, map_index=map_index
        )
        ids = _xcom(run, task_id, key="event_ids", map_index=map_index)
        assert ids == task_request_ids({"ti": ti}, count)


def _settled(run: Any) -> dict[tuple[str, int], float]:
    """Each deferred task's settle delay: its trigger's `not_before` minus when it deferred."""
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session

    delays = {}
    with create_session() as session:
        for ti in run.get_task_instances():
            if ti.trigger_id is None:
                continue
            trigger = session.get(Trigger, ti.trigger_id)
            created = trigger.created_date.timestamp()
            delays[(ti.task_id, ti.map_index)] = trigger.kwargs["not_before"] - created
    return delays


def test_dag_test_leaves_out_the_default_settle_delay(
    airflow_db: Any, topics: dict[str, str], responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test() runs a trigger inline after its task deferred: Airflow's resume race cannot
    happen, so the default settle (8 s) is left out; an explicit settle is kept."""
    run = load_dag("relay_happy_path", topics, monkeypatch).test()
    assert set(_states(run).values()) == {"success"}, _states(run)
    delays = _settled(run)
    assert 0.5 < delays[("call", -1)] <= 1.5, delays  # settle=1.0 given
    assert delays[("mapped", 0)] < 0.5, delays  # the default
    assert delays[("mapped", 1)] < 0.5, delays


def _deferred(run: Any) -> set[str]:
    """Tasks that deferred: dag.test() leaves a deferred task's trigger id on its instance."""
    return {ti.task_id for ti in run.get_task_instances() if ti.trigger_id is not None}


def test_defer_after_finishes_quick_results_on_the_worker(
    airflow_db: Any,
    topics: dict[str, str],
    responder: Responder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = load_dag("relay_defer_after", topics, monkeypatch).test()
    log = capsys.readouterr().out
    assert _states(run) == {
        ("quick", -1): "success",
        ("fan_quick", -1): "success",
        ("publish_quick", -1): "success",
        ("sense_quick", -1): "success",
        ("slow", -1): "success",
        ("fails_quick", -1): "failed",
    }
    assert _deferred(run) == {"slow"}  # its result took 3 s, defer_after was 0.5 s
    assert _xcom(run, "quick") == {"quick": 1}
    assert _xcom(run, "fan_quick") == [{"i": i} for i in range(3)]  # templated defer_after
    assert _xcom(run, "sense_quick") == [{"sensed": 1}]
    assert _xcom(run, "slow") == {"delay": 3}
    assert "EchoFailure: no such file (retryable=False, attempt=1)" in log


def test_tasks_to_start_in_the_triggerer_run_the_worker_path_under_dag_test(
    airflow_db: Any, topics: dict[str, str], responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dag.test() sets tasks SCHEDULED and calls execute() itself: a start_in_triggerer task
    (operator or sensor; and a mapped one, which never starts there) defers and resumes as
    without it."""
    dag = load_dag("relay_start_in_triggerer", topics, monkeypatch)
    assert dag.get_task("native_fan").start_from_trigger is True
    assert dag.get_task("native_sense").start_from_trigger is True
    run = dag.test()
    assert set(_states(run).values()) == {"success"}, _states(run)
    assert _xcom(run, "native_fan") == [{"i": i} for i in range(3)]
    assert _xcom(run, "native_mapped", map_index=1) == {"m": 2}
    assert _xcom(run, "native_sense") == [{"s": 1}, {"s": 2}]
    assert {"native_fan", "native_mapped", "native_sense"} <= _deferred(run)


def test_failures_fail_the_task_with_the_function_error(
    airflow_db: Any,
    topics: dict[str, str],
    responder: Responder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = load_dag("relay_failures", topics, monkeypatch).test()
    log = capsys.readouterr().out  # the task logs carry each task's exception
    assert "RelayNonRetryableResultError: function failed for correlation id" in log
    assert "EchoFailure: no such file (retryable=False, attempt=1)" in log
    assert "RelayResultError: function failed for correlation id" in log
    assert "EchoFailure: dead-lettered (retryable=True, attempt=1)" in log
    assert "RelayTimeoutError: no result within 3 s for 1 correlation id(s)" in log
    assert "SchemaValidationError: data of 'dev.relay.example.echo' is invalid at $.crash" in log
    assert "RelayNonRetryablePartialFailureError: 1 of 3 requests did not succeed" in log
    assert _states(run) == {
        ("fails", -1): "failed",
        ("fails_retryable", -1): "failed",
        ("partial", -1): "failed",
        ("times_out", -1): "failed",
        ("invalid", -1): "failed",
    }
    # retries=1 each: non-retryable failures fail at the first try, a retryable one is retried
    assert _tries(run) == {"fails": 1, "partial": 1, "fails_retryable": 2}
    outcomes = _xcom(run, "partial", key="outcomes")
    assert [o["status"] for o in outcomes] == ["succeeded", "failed", "succeeded"]
    assert outcomes[1]["error"]["type"] == "EchoFailure"
    # invalid data never left the worker: the schema check runs before publishing
    assert all(r.data != {"crash": -1} for r in responder.requests)


def test_direct_https_path_with_an_oidc_token(
    airflow_db: Any,
    topics: dict[str, str],
    echo_function: str,
    fake_google: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real echo function, which verifies the ID token, answers through the completion topic."""
    monkeypatch.setenv("RELAY_TEST_FUNCTION_URL", echo_function)
    monkeypatch.setenv("RELAY_TEST_FLAKY_URL", f"{fake_google.url}/flaky")
    fake_google.flaky_statuses = [503] * 5
    run = load_dag("relay_direct", topics, monkeypatch).test()
    log = capsys.readouterr().out
    assert _states(run) == {
        ("invoke", -1): "success",
        ("answer_only", -1): "success",
        ("gives_up", -1): "failed",
    }, log[-5000:]
    assert _xcom(run, "invoke") == {"direct": "invoke"}
    assert _xcom(run, "answer_only")["outcome"] == "succeeded"
    assert "RelayHttpError: POST" in log
    assert "failed after 2 attempt(s): HTTP 503" in log
    assert {audience for audience, _ in fake_google.minted} >= {echo_function}


def test_direct_https_path_finds_a_deployed_function_by_name(
    airflow_db: Any,
    topics: dict[str, str],
    broker: Any,
    fake_google: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`function="echo"`: GetFunction on relay up's control plane gives the URL, the ID token is
    minted for that URL, and the deployed revision (which lets only its invoker in) answers."""
    from _airflow_fakes import EMAIL

    from relay.deploy import deploy
    from relay.topology import load_topology
    from relay.up.control_plane import ControlPlane

    root = Path(__file__).resolve().parents[2]
    topology = load_topology(root / "relay.yaml", project="relay-test")
    echo = topology.functions["echo"]
    topology = dataclasses.replace(
        topology,
        functions={
            "echo": dataclasses.replace(
                echo, environment={"RELAY_REPLY_TOPICS": "projects/relay-test/topics/*"}
            )
        },
    )
    control = ControlPlane(
        tmp_path / "control-plane",
        pubsub_host=broker.host,
        certs_url=f"{fake_google.url}/certs",
        invokers=lambda function: (EMAIL,),
    )
    monkeypatch.setenv("CLOUD_FUNCTIONS_EMULATOR_HOST", control.host)
    try:
        _, (deployed,) = deploy(topology)
        run = load_dag("relay_direct_by_name", topics, monkeypatch).test()
        log = capsys.readouterr().out
        assert _states(run) == {("invoke", -1): "success"}, log[-5000:]
        assert _xcom(run, "invoke") == {"by": "name"}
        assert deployed.uri.startswith("http://127.0.0.1:")
        assert (deployed.uri, deployed.uri) in {
            (audience, audience) for audience, _ in fake_google.minted
        }
    finally:
        control.close()


def test_example_dags_parse(airflow_db: Any) -> None:
    """Every DAG in dags/ imports cleanly with the operators' arguments validated."""
    from airflow.dag_processing.dagbag import DagBag

    root = Path(__file__).resolve().parents[2] / "dags"
    bag = DagBag(dag_folder=str(root))
    assert not bag.import_errors, bag.import_errors
    assert {
        "relay_csv_pipeline",
        "relay_echo_call",
        "relay_echo_mapped",
        "relay_echo_publish_sense",
        "relay_echo_failure",
        "relay_echo_http",
    } <= set(bag.dag_ids)
