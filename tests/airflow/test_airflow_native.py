"""Tasks started in the triggerer (`start_in_triggerer=True`): the parse-time decision as Airflow
serializes it, and RelayRequestTrigger run the way Airflow 3.3's trigger runner runs it
(_trigger_runner) against the real broker and a stand-in function. The direct path's invoke is in
test_airflow_native_http.py, the full deployment test in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from _airflow_responder import Responder
from _trigger_runner import (
    Comms,
    WorkerTi,
    first_event,
    inflate,
    make_dag,
    new_run_id,
    serialized_task,
)

from relay.airflow._names import correlation_group, task_subscription
from relay.airflow._publish import task_request_ids
from relay.airflow._request_trigger import NON_RETRYABLE_EVENT, XCOM_MARKER
from relay.airflow._wait import TIMEOUT, WaitOutcome
from relay.airflow.exceptions import (
    RelayConfigError,
    RelayNonRetryablePartialFailureError,
    RelayNonRetryableResultError,
    RelayPartialFailureError,
)
from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator, RelayPublishOperator
from relay.airflow.sensors import RelayResultSensor
from relay.protocol import EXAMPLE_ECHO

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
]


def _common(topics: dict[str, str]) -> dict[str, Any]:
    return {
        "topic": topics["requests"],
        "reply_topic": topics["results"],
        "event_type": EXAMPLE_ECHO,
        "timeout": 30,
        "start_in_triggerer": True,
    }


# -- parse time ----------------------------------------------------------------------------------


def test_the_decision_is_made_per_instance_at_parse_time() -> None:
    from airflow.sdk import BaseOperator, task

    @task
    def list_files() -> list[str]:
        return ["a"]

    with make_dag("native_parse") as dag:
        literal = RelayCallOperator(
            task_id="literal",
            topic="t",
            reply_topic="r",
            event_type="x",
            data={"n": 1},
            start_in_triggerer=True,
        )
        RelayFanOutOperator(
            task_id="from_xcom",
            topic="t",
            reply_topic="r",
            event_type="x",
            items=list_files(),
            start_in_triggerer=True,
        )
        plain = RelayCallOperator(task_id="plain", topic="t", reply_topic="r", event_type="x")
        mapped = RelayCallOperator.partial(
            task_id="mapped", topic="t", reply_topic="r", event_type="x", start_in_triggerer=True
        ).expand(data=[{"n": 1}, {"n": 2}])
    assert literal.start_from_trigger is True
    assert BaseOperator.start_from_trigger is False
    assert RelayCallOperator.start_from_trigger is False
    assert plain.start_from_trigger is False
    spec = inflate(dag, "from_xcom", new_run_id()).spec
    assert spec["inputs"]["items"] == {
        XCOM_MARKER: {"task_id": "list_files", "key": "return_value"}
    }
    assert spec["kind"] == "fan_out"
    assert spec["timeout"] == 3600
    # A mapped task cannot start in the triggerer (apache/airflow#48009): today's path.
    _, serialized_mapped = serialized_task(dag, "mapped")
    assert not serialized_mapped.start_from_trigger
    assert not mapped.start_from_trigger


def test_inputs_the_triggerer_cannot_resolve_are_refused_at_parse_time() -> None:
    from airflow.sdk import Asset, task

    @task
    def one(n: int) -> int:
        return n

    @task
    def single() -> list[int]:
        return [1]

    common = {"topic": "t", "reply_topic": "r", "event_type": "x", "start_in_triggerer": True}
    with make_dag("native_refused"):
        mapped_up = one.expand(n=[1, 2])
        with pytest.raises(RelayConfigError, match="mapped task one"):
            RelayFanOutOperator(task_id="a", items=mapped_up, **common)
        with pytest.raises(RelayConfigError, match="MapXComArg"):
            RelayFanOutOperator(task_id="b", items=single().map(lambda n: n), **common)
        with pytest.raises(RelayConfigError, match="outlets"):
            RelayCallOperator(task_id="c", data={}, outlets=[Asset("s3://x/y")], **common)
        with pytest.raises(RelayConfigError, match="JSON"):
            RelayCallOperator(task_id="d", data={"when": object()}, **common)


# -- the trigger against the broker ----------------------------------------------------------------


def test_a_call_runs_from_publish_to_success_in_the_trigger(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    with make_dag("native_call", params={"who": "world"}) as dag:
        RelayCallOperator(task_id="call", data={"hello": "{{ params.who }}"}, **_common(topics))
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "call", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "call") == {"hello": "world"}
    ti = {
        "ti": type(
            "TI", (), {"dag_id": dag.dag_id, "run_id": run_id, "task_id": "call", "map_index": -1}
        )()
    }
    assert comms.of(run_id, "call", "event_ids") == task_request_ids(ti, 1)
    assert [r.id for r in responder.requests] == task_request_ids(ti, 1)
    (outcome,) = comms.of(run_id, "call", "outcomes")
    assert outcome["status"] == "succeeded"
    assert len(comms.of(run_id, "call", "correlation_ids")) == 1


def test_a_fan_out_reads_its_items_from_an_upstream_xcom(
    comms: Comms, topics: dict[str, str], responder: Responder, broker: Any
) -> None:
    from airflow.sdk import task
    from airflow.triggers.base import TaskSuccessEvent

    @task
    def list_files() -> list[str]:
        return []

    with make_dag("native_fan_out") as dag:
        RelayFanOutOperator(task_id="fan", items=list_files(), **_common(topics))
    run_id = new_run_id()
    items = [{"file": f"f{i}"} for i in range(5)]
    comms.xcoms[(run_id, "list_files", "return_value", -1)] = items
    event = asyncio.run(first_event(inflate(dag, "fan", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "fan") == items
    assert [o["status"] for o in comms.of(run_id, "fan", "outcomes")] == ["succeeded"] * 5
    # the task's subscription is gone once the task ended
    group = correlation_group(comms.of(run_id, "fan", "correlation_ids")[0])
    subs = list(broker.publisher().list_topic_subscriptions(topic=topics["results"], timeout=10))
    assert task_subscription("relay-test", topics["results"], group) not in subs


def test_templates_render_natively_when_the_dag_says_so(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    items = [{"n": 1}, {"n": 2}]
    with make_dag("native_obj", render_template_as_native_obj=True, params={"n": items}) as dag:
        RelayFanOutOperator(task_id="fan", items="{{ params.n }}", **_common(topics))
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "fan", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "fan") == items


def test_a_render_error_fails_the_task_and_says_why_in_the_trigger_log(
    comms: Comms,
    topics: dict[str, str],
    responder: Responder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from airflow.triggers.base import TaskFailedEvent

    with make_dag("native_render") as dag:
        RelayCallOperator(task_id="call", data="{{ params.missing }}", **_common(topics))
    event = asyncio.run(first_event(inflate(dag, "call", new_run_id())))
    assert isinstance(event, TaskFailedEvent)
    logged = capsys.readouterr().out  # Airflow's structlog: the trigger log in a triggerer
    assert "could not render the task's inputs: UndefinedError" in logged
    assert "missing" in logged
    assert responder.requests == []  # nothing was sent


@pytest.mark.parametrize("retries", [0, 2])
def test_a_non_retryable_failure_fails_without_retries(
    comms: Comms, topics: dict[str, str], responder: Responder, retries: int
) -> None:
    from airflow.triggers.base import TaskFailedEvent, TriggerEvent

    with make_dag(f"native_fail_{retries}") as dag:
        op = RelayCallOperator(
            task_id="call", data={"fail": "bad input"}, retries=retries, **_common(topics)
        )
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "call", run_id)))
    (outcome,) = comms.of(run_id, "call", "outcomes")
    assert outcome["status"] == "failed"
    assert outcome["error"]["message"] == "bad input"
    assert comms.of(run_id, "call") is None
    if retries == 0:  # Airflow fails it: no retries to skip
        assert isinstance(event, TaskFailedEvent)
        return
    # Retries left: a worker resumes only to raise the non-retryable error (AirflowFailException).
    assert type(event) is TriggerEvent
    assert NON_RETRYABLE_EVENT in event.payload
    payload = json.loads(json.dumps(event.payload))
    with pytest.raises(RelayNonRetryableResultError, match="bad input"):
        op.execute_complete({}, payload)


def test_a_retryable_failure_ends_with_a_failed_event_airflow_retries(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    from airflow.triggers.base import TaskFailedEvent

    with make_dag("native_retryable") as dag:
        RelayCallOperator(
            task_id="call", data={"fail": "busy", "retryable": True}, retries=2, **_common(topics)
        )
    event = asyncio.run(first_event(inflate(dag, "call", new_run_id())))
    assert isinstance(event, TaskFailedEvent)


def test_a_trigger_run_again_after_a_failover_resends_the_same_requests(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    items = [{"delay": 2, "n": i} for i in range(3)]
    with make_dag("native_failover", params={"items": items}) as dag:
        RelayFanOutOperator(task_id="fan", items=items, **_common(topics))
    run_id = new_run_id()

    async def first_run_dies() -> None:
        task = asyncio.ensure_future(first_event(inflate(dag, "fan", run_id)))
        await asyncio.to_thread(responder.wait_for_requests, 3)
        task.cancel()  # the triggerer went away mid-wait
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(first_run_dies())
    event = asyncio.run(first_event(inflate(dag, "fan", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "fan") == items  # exactly one result per item, in item order
    requests = responder.wait_for_requests(6)
    first, second = requests[:3], requests[3:]
    assert sorted(r.id for r in first) == sorted(r.id for r in second)
    assert sorted(str(r.correlationid) for r in first) == sorted(
        str(r.correlationid) for r in second
    )


def test_a_re_run_keeps_the_deadline_airflow_set_when_it_deferred_the_task(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    """Deferred 28 s ago with timeout 30: the wait ends about 2 s (plus its final quiet read)
    after this run starts, not 30 s after."""
    from airflow.triggers.base import TaskFailedEvent

    with make_dag("native_deadline") as dag:
        RelayCallOperator(task_id="call", data={"silent": True}, **_common(topics))
    run_id = new_run_id()
    started = time.monotonic()
    event = asyncio.run(first_event(inflate(dag, "call", run_id, deferred_ago=28), limit=28))
    assert isinstance(event, TaskFailedEvent)
    assert time.monotonic() - started < 28
    (outcome,) = comms.of(run_id, "call", "outcomes")
    assert outcome["status"] == "timeout"


def test_a_fan_out_whose_failures_are_all_final_fails_without_retries(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    """collect_all: every outcome in XCom, and the partial failure (all non-retryable) is raised
    on the worker as RelayNonRetryablePartialFailureError, outcomes included."""
    with make_dag("native_partial") as dag:
        op = RelayFanOutOperator(
            task_id="fan",
            items=[{"n": 1}, {"fail": "no such file"}],
            policy="collect_all",
            retries=1,
            **_common(topics),
        )
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "fan", run_id)))
    assert [o["status"] for o in comms.of(run_id, "fan", "outcomes")] == ["succeeded", "failed"]
    assert NON_RETRYABLE_EVENT in event.payload
    with pytest.raises(RelayNonRetryablePartialFailureError, match="no such file") as raised:
        op.execute_complete({}, json.loads(json.dumps(event.payload)))
    assert [o["status"] for o in raised.value.outcomes] == ["succeeded", "failed"]


# -- RelayResultSensor ----------------------------------------------------------------------------


def _publish(comms: Comms, dag: Any, run_id: str, task_id: str = "publish") -> list[str]:
    """Run the DAG's RelayPublishOperator as a worker does: its return value lands in XCom."""
    ti = WorkerTi(comms, dag.dag_id, run_id, task_id)
    ids: list[str] = dag.get_task(task_id).execute({"ti": ti})
    ti.xcom_push("return_value", ids)
    return ids


def _publisher(topics: dict[str, str], **kwargs: Any) -> RelayPublishOperator:
    return RelayPublishOperator(
        task_id="publish",
        topic=topics["requests"],
        reply_topic=topics["results"],
        event_type=EXAMPLE_ECHO,
        **kwargs,
    )


def _subscriptions(broker: Any, topic: str) -> list[str]:
    return list(broker.publisher().list_topic_subscriptions(topic=topic, timeout=10))


def test_sensor_inputs_the_triggerer_cannot_honour_are_refused_at_parse_time() -> None:
    from airflow.sdk import Asset, task

    @task
    def one(n: int) -> list[str]:
        return [f"g.{n}"]

    @task
    def ids() -> list[str]:
        return ["g.1"]

    common = {"reply_topic": "r", "start_in_triggerer": True}
    with make_dag("native_sensor_refused"):
        with pytest.raises(RelayConfigError, match=r"^a: start_in_triggerer=True with mode='re"):
            RelayResultSensor(task_id="a", correlation_ids=["g.1"], mode="reschedule", **common)
        with pytest.raises(RelayConfigError, match=r"^b: start_in_triggerer=True with outlets"):
            RelayResultSensor(
                task_id="b", correlation_ids=["g.1"], outlets=[Asset("s3://x/y")], **common
            )
        with pytest.raises(RelayConfigError, match=r"^c: .*ids is an XComArg of the mapped"):
            RelayResultSensor(task_id="c", correlation_ids=one.expand(n=[1, 2]), **common)
        with pytest.raises(RelayConfigError, match=r"^d: .*ids is a MapXComArg"):
            RelayResultSensor(task_id="d", correlation_ids=ids().map(str), **common)
        # soft_fail ends a timeout with TaskSkippedEvent there: accepted
        soft = RelayResultSensor(task_id="e", correlation_ids=ids(), soft_fail=True, **common)
        mapped = RelayResultSensor.partial(task_id="f", **common).expand(
            correlation_ids=[["g.1"], ["h.1"]]
        )
    assert soft.start_from_trigger is True
    assert soft.start_trigger_args.trigger_kwargs["spec"]["soft_fail"] is True
    assert not mapped.start_from_trigger  # apache/airflow#48009: the worker path
    assert RelayResultSensor.start_from_trigger is False


def test_a_sensor_waits_in_the_trigger_for_the_ids_an_upstream_publish_returned(
    comms: Comms, topics: dict[str, str], responder: Responder, broker: Any
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    items = [{"n": 1}, {"n": 2}]
    with make_dag("native_sensor") as dag:
        publish = _publisher(topics, items=items)
        RelayResultSensor(
            task_id="wait",
            reply_topic=topics["results"],
            correlation_ids=publish.output,
            timeout=30,
            start_in_triggerer=True,
        )
    run_id = new_run_id()
    ids = _publish(comms, dag, run_id)
    trigger = inflate(dag, "wait", run_id)
    assert trigger.spec["kind"] == "wait"
    assert trigger.spec["inputs"]["correlation_ids"] == {
        XCOM_MARKER: {"task_id": "publish", "key": "return_value"}
    }
    subscription = task_subscription("relay-test", topics["results"], correlation_group(ids[0]))
    assert subscription in _subscriptions(broker, topics["results"])
    event = asyncio.run(first_event(trigger))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "wait") == items  # several ids: the list, in order
    outcomes = comms.of(run_id, "wait", "outcomes")
    assert [(o["correlation_id"], o["status"]) for o in outcomes] == [
        (cid, "succeeded") for cid in ids
    ]
    assert comms.of(run_id, "wait", "event_ids") is None  # the sensor published nothing
    assert len(responder.requests) == 2
    assert subscription not in _subscriptions(broker, topics["results"])


def test_a_single_id_sensor_returns_the_data_and_can_keep_its_subscription(
    comms: Comms, topics: dict[str, str], responder: Responder, broker: Any
) -> None:
    """One id (a str, here a template) returns the result's data, not a list; with
    delete_subscriptions=False the group's subscription outlives the task."""
    from airflow.triggers.base import TaskSuccessEvent

    group = f"g{uuid.uuid4().hex[:8]}"
    with make_dag("native_sensor_one", params={"group": group}) as dag:
        _publisher(topics, data={"n": 1}, correlation_ids=[f"{group}.one"])
        RelayResultSensor(
            task_id="wait",
            reply_topic=topics["results"],
            correlation_ids="{{ params.group }}.one",
            delete_subscriptions=False,
            timeout=30,
            start_in_triggerer=True,
        )
    run_id = new_run_id()
    _publish(comms, dag, run_id)
    event = asyncio.run(first_event(inflate(dag, "wait", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "wait") == {"n": 1}
    kept = task_subscription("relay-test", topics["results"], group)
    assert kept in _subscriptions(broker, topics["results"])


@pytest.mark.parametrize("retries", [0, 2])
def test_a_failed_result_fails_the_sensor_under_fail_fast_without_retries(
    comms: Comms, topics: dict[str, str], responder: Responder, retries: int
) -> None:
    """fail_fast: the failure ends the wait though the other request never answers; non-retryable,
    so with retries left a worker resumes only to raise it from the sensor's execute_complete."""
    from airflow.triggers.base import TaskFailedEvent, TriggerEvent

    with make_dag(f"native_sensor_fail_{retries}") as dag:
        publish = _publisher(topics, items=[{"silent": True}, {"fail": "bad input"}])
        sensor = RelayResultSensor(
            task_id="wait",
            reply_topic=topics["results"],
            correlation_ids=publish.output,
            policy="fail_fast",
            retries=retries,
            timeout=30,
            start_in_triggerer=True,
        )
    run_id = new_run_id()
    _publish(comms, dag, run_id)
    event = asyncio.run(first_event(inflate(dag, "wait", run_id)))
    outcomes = comms.of(run_id, "wait", "outcomes")
    assert [o["status"] for o in outcomes] == ["cancelled", "failed"]
    assert outcomes[1]["error"]["message"] == "bad input"
    assert comms.of(run_id, "wait") is None
    if retries == 0:
        assert isinstance(event, TaskFailedEvent)
        return
    assert type(event) is TriggerEvent
    assert NON_RETRYABLE_EVENT in event.payload
    with pytest.raises(RelayNonRetryableResultError, match="bad input"):
        sensor.execute_complete({}, json.loads(json.dumps(event.payload)))


def test_soft_fail_skips_a_sensor_that_timed_out_in_the_trigger_as_on_a_worker(
    comms: Comms, topics: dict[str, str], responder: Responder
) -> None:
    """The trigger ends the task with TaskSkippedEvent after `timeout`; a worker resuming from a
    timed-out wait (dag.test(), a mapped sensor) skips too, instead of raising the timeout (here
    collect_all's RelayPartialFailureError)."""
    from airflow.sdk.exceptions import AirflowSkipException
    from airflow.triggers.base import TaskSkippedEvent

    group = f"g{uuid.uuid4().hex[:8]}"
    with make_dag("native_sensor_soft") as dag:
        _publisher(topics, data={"silent": True}, correlation_ids=[f"{group}.0"])
        sensors = {
            soft: RelayResultSensor(
                task_id=f"wait_{soft}",
                reply_topic=topics["results"],
                correlation_ids=[f"{group}.0"],
                soft_fail=soft,
                timeout=1,
                start_in_triggerer=True,
            )
            for soft in (True, False)
        }
    run_id = new_run_id()
    _publish(comms, dag, run_id)
    event = asyncio.run(first_event(inflate(dag, "wait_True", run_id)))
    assert isinstance(event, TaskSkippedEvent)
    assert [o["status"] for o in comms.of(run_id, "wait_True", "outcomes")] == ["timeout"]
    for soft, sensor in sensors.items():
        wait = sensor._trigger(time.time()).wait
        timed_out = WaitOutcome(wait, TIMEOUT, (None,)).to_event()
        expected = AirflowSkipException if soft else RelayPartialFailureError
        with pytest.raises(expected, match="no result before the timeout"):
            sensor.execute_complete({}, timed_out)
