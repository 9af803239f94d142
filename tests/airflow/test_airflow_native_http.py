"""RelayHttpInvokeOperator(start_in_triggerer=True): the direct path's POST and wait run in
RelayRequestTrigger, run the way Airflow 3.3's trigger runner runs it (_trigger_runner), against
the real broker and either the real echo function (functions-framework, checking the ID token
minted in the trigger) or the fake Google's /flaky endpoint (scripted statuses, records each
POST's Authorization and ce-id)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _airflow_fakes import FakeGoogle
from _airflow_responder import answer
from _trigger_runner import Comms, WorkerTi, first_event, inflate, make_dag, new_run_id

from relay.airflow._names import correlation_group, task_subscription
from relay.airflow._publish import task_request_ids
from relay.airflow._request_trigger import NON_RETRYABLE_EVENT
from relay.airflow.exceptions import (
    RelayConfigError,
    RelayHttpError,
    RelayNonRetryableResultError,
)
from relay.airflow.operators import RelayHttpInvokeOperator
from relay.protocol import EXAMPLE_ECHO, new_request

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
]


def _invoke(topics: dict[str, str], url: str, **kwargs: Any) -> RelayHttpInvokeOperator:
    return RelayHttpInvokeOperator(
        task_id="invoke",
        url=url,
        event_type=EXAMPLE_ECHO,
        reply_topic=topics["results"],
        gcp_conn_id="relay_adc",  # Application Default Credentials: the fake metadata server
        backoff=0.05,
        timeout=30,
        start_in_triggerer=True,
        **kwargs,
    )


def _ce_id(dag: Any, run_id: str) -> str:
    """The ce-id the worker path gives the task instance's request."""
    (ce_id,) = task_request_ids({"ti": WorkerTi(Comms(), dag.dag_id, run_id, "invoke")}, 1)
    return ce_id


def _group_subscription(comms: Comms, topics: dict[str, str], run_id: str) -> str:
    (cid,) = comms.of(run_id, "invoke", "correlation_ids")
    return task_subscription("relay-test", topics["results"], correlation_group(cid))


def _subscriptions(broker: Any, topic: str) -> list[str]:
    return list(broker.publisher().list_topic_subscriptions(topic=topic, timeout=10))


def _no_token_in(text: str, fake: FakeGoogle) -> None:
    assert fake.minted  # tokens were minted and used...
    for _, token in fake.minted:  # ...but are in neither the trigger's kwargs nor XCom
        assert token not in text
    assert "bearer" not in text.lower()


def test_an_invoke_decides_at_parse_time_and_refuses_what_the_triggerer_cannot_do() -> None:
    from airflow.sdk import Asset, task

    @task
    def one(n: int) -> str:
        return f"http://fn-{n}.example"

    common = {"event_type": "x", "reply_topic": "r", "start_in_triggerer": True}
    with make_dag("native_invoke_parse") as dag:
        RelayHttpInvokeOperator(
            task_id="invoke",
            function="echo",
            region="europe-west1",
            data={"n": "{{ params.n }}"},
            fail_fast_statuses=(400, 409),
            **common,
        )
        mapped = RelayHttpInvokeOperator.partial(
            task_id="mapped", url="http://fn.example", **common
        ).expand(data=[{"n": 1}, {"n": 2}])
        with pytest.raises(RelayConfigError, match=r"^a: start_in_triggerer=True with outlets"):
            RelayHttpInvokeOperator(
                task_id="a", url="http://fn.example", outlets=[Asset("s3://x/y")], **common
            )
        with pytest.raises(RelayConfigError, match=r"^b: .*url is an XComArg of the mapped"):
            RelayHttpInvokeOperator(task_id="b", url=one.expand(n=[1, 2]), **common)
        with pytest.raises(RelayConfigError, match=r"^c: start_in_triggerer=True needs JSON"):
            RelayHttpInvokeOperator(
                task_id="c", url="http://fn.example", data={"x": object()}, **common
            )
    spec = inflate(dag, "invoke", new_run_id()).spec
    assert spec["kind"] == "invoke"
    assert spec["inputs"]["data"] == {"n": "{{ params.n }}"}  # rendered in the trigger
    assert spec["inputs"]["function"] == "echo"
    assert spec["http"]["fail_fast_statuses"] == [400, 409]
    assert spec["wait_for_result"] is True
    assert RelayHttpInvokeOperator.start_from_trigger is False
    assert not mapped.start_from_trigger  # apache/airflow#48009: the worker path


def test_an_invoke_waits_for_the_function_result_in_the_trigger(
    comms: Comms,
    topics: dict[str, str],
    echo_function: str,
    fake_google: FakeGoogle,
    broker: Any,
) -> None:
    """echo lets the POST in only with an ID token for its URL, minted in the trigger; its result
    comes through the completion topic and ends the task as a call's would."""
    from airflow.triggers.base import TaskSuccessEvent

    with make_dag("native_invoke", params={"who": "world"}) as dag:
        _invoke(topics, echo_function, data={"hello": "{{ params.who }}"})
    run_id = new_run_id()
    trigger = inflate(dag, "invoke", run_id)
    event = asyncio.run(first_event(trigger))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "invoke") == {"hello": "world"}
    assert comms.of(run_id, "invoke", "event_ids") == [_ce_id(dag, run_id)]
    (outcome,) = comms.of(run_id, "invoke", "outcomes")
    assert outcome["status"] == "succeeded"
    assert echo_function in {audience for audience, _ in fake_google.minted}
    _no_token_in(json.dumps([trigger.serialize()[1], list(comms.xcoms.values())]), fake_google)
    assert _group_subscription(comms, topics, run_id) not in _subscriptions(
        broker, topics["results"]
    )


def test_without_wait_for_result_the_task_returns_the_function_answer(
    comms: Comms,
    topics: dict[str, str],
    echo_function: str,
    fake_google: FakeGoogle,
    broker: Any,
) -> None:
    """The return value is the function's HTTP answer, exactly what the worker path returns for
    the same task instance; no completion subscription is created."""
    from airflow.triggers.base import TaskSuccessEvent

    with make_dag("native_invoke_answer") as dag:
        op = _invoke(topics, echo_function, data={"n": 1}, wait_for_result=False)
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "invoke", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    returned = comms.of(run_id, "invoke")
    (cid,) = comms.of(run_id, "invoke", "correlation_ids")
    assert returned == {"outcome": "succeeded", "id": _ce_id(dag, run_id), "correlationid": cid}
    assert comms.of(run_id, "invoke", "outcomes") is None  # nothing was waited for
    assert _group_subscription(comms, topics, run_id) not in _subscriptions(
        broker, topics["results"]
    )
    worker = WorkerTi(Comms(), dag.dag_id, run_id, "invoke")
    assert op.execute({"ti": worker}) == returned


def test_a_non_retryable_result_fails_the_invoke_without_retries(
    comms: Comms, topics: dict[str, str], echo_function: str, fake_google: FakeGoogle
) -> None:
    """echo's non-retryable failure, with retries left: the trigger's plain event makes a worker
    raise it from the operator's execute_complete (AirflowFailException: no retries)."""
    from airflow.triggers.base import TriggerEvent

    with make_dag("native_invoke_failed") as dag:
        op = _invoke(topics, echo_function, data={"fail": "bad input"}, retries=2)
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "invoke", run_id)))
    (outcome,) = comms.of(run_id, "invoke", "outcomes")
    assert outcome["status"] == "failed"
    assert comms.of(run_id, "invoke") is None
    assert type(event) is TriggerEvent
    assert NON_RETRYABLE_EVENT in event.payload
    with pytest.raises(RelayNonRetryableResultError, match="bad input"):
        op.execute_complete({}, json.loads(json.dumps(event.payload)))


def test_a_fail_fast_status_fails_the_task_as_on_a_worker(
    comms: Comms,
    topics: dict[str, str],
    fake_google: FakeGoogle,
    broker: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """400: one attempt, TaskFailedEvent (Airflow's retries apply, as to the worker's
    RelayHttpError), the subscription created for the result deleted again."""
    from airflow.triggers.base import TaskFailedEvent

    with make_dag("native_invoke_fail_fast") as dag:
        op = _invoke(topics, f"{fake_google.url}/flaky", data={"n": 1}, retries=2)
    run_id = new_run_id()
    fake_google.flaky_statuses = [400]
    event = asyncio.run(first_event(inflate(dag, "invoke", run_id)))
    assert type(event) is TaskFailedEvent
    assert len(fake_google.flaky_seen) == 1
    assert "RelayHttpError: POST" in capsys.readouterr().out
    assert comms.of(run_id, "invoke") is None
    assert _group_subscription(comms, topics, run_id) not in _subscriptions(
        broker, topics["results"]
    )
    fake_google.flaky_statuses = [400]
    worker = WorkerTi(Comms(), dag.dag_id, run_id, "invoke")
    with pytest.raises(RelayHttpError, match=r"failed after 1 attempt\(s\): HTTP 400"):
        op.execute({"ti": worker})


def test_a_re_run_after_a_failover_re_sends_the_same_ce_id(
    comms: Comms, topics: dict[str, str], fake_google: FakeGoogle, broker: Any
) -> None:
    """The first run POSTs and dies while waiting; the result arrives in the subscription it
    created; the second run POSTs the same ce-id again (retrying a 503 on the way, each attempt
    with a token) and ends with that result."""
    from airflow.triggers.base import TaskSuccessEvent

    with make_dag("native_invoke_failover") as dag:
        _invoke(topics, f"{fake_google.url}/flaky", data={"n": 1})
    run_id = new_run_id()

    async def first_run_dies() -> None:
        task = asyncio.ensure_future(first_event(inflate(dag, "invoke", run_id)))
        while not fake_google.flaky_seen:
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()  # the triggerer went away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(first_run_dies())
    subscription = _group_subscription(comms, topics, run_id)
    assert subscription in _subscriptions(broker, topics["results"])  # kept for the next run
    (ce_id,) = comms.of(run_id, "invoke", "event_ids")
    (cid,) = comms.of(run_id, "invoke", "correlation_ids")
    request = new_request(
        EXAMPLE_ECHO,
        {"n": 1},
        source="/t",
        reply_to=topics["results"],
        correlation_id=cid,
        id=ce_id,
    )
    answer(broker.publisher(), request, {"n": 1})  # the function's result, as echo publishes it
    fake_google.flaky_statuses = [503]
    event = asyncio.run(first_event(inflate(dag, "invoke", run_id)))
    assert isinstance(event, TaskSuccessEvent)
    assert comms.of(run_id, "invoke") == {"n": 1}
    assert [seen for _, seen in fake_google.flaky_seen] == [_ce_id(dag, run_id)] * 3
    assert all(auth and auth.startswith("Bearer ") for auth, _ in fake_google.flaky_seen)
    assert subscription not in _subscriptions(broker, topics["results"])


def test_an_invoke_whose_result_never_comes_times_out(
    comms: Comms, topics: dict[str, str], fake_google: FakeGoogle
) -> None:
    """The POST succeeds (2xx) but no result is published: the wait ends at `timeout`."""
    from airflow.triggers.base import TaskFailedEvent

    with make_dag("native_invoke_timeout") as dag:
        RelayHttpInvokeOperator(
            task_id="invoke",
            url=f"{fake_google.url}/flaky",
            event_type=EXAMPLE_ECHO,
            reply_topic=topics["results"],
            gcp_conn_id="relay_adc",
            data={"n": 1},
            timeout=2,
            start_in_triggerer=True,
        )
    run_id = new_run_id()
    event = asyncio.run(first_event(inflate(dag, "invoke", run_id), limit=30))
    assert type(event) is TaskFailedEvent
    (outcome,) = comms.of(run_id, "invoke", "outcomes")
    assert outcome["status"] == "timeout"
