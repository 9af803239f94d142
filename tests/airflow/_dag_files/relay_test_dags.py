"""DAGs for tests/airflow/test_airflow_dags.py: topics come from the environment at parse time
(RELAY_TEST_REQUESTS, RELAY_TEST_RESULTS), so each test run points them at its own topics."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator, RelayPublishOperator
from relay.airflow.sensors import RelayResultSensor

TIMEOUT = timedelta(seconds=60)  # dag.test() runs triggers with no timeout of its own
# Deferring tasks wait `settle` seconds after deferring before their trigger fires (apache/airflow
# #72716; default [workers] min_heartbeat_interval + 3 = 8 s). dag.test() runs triggers inline, so
# it has no such race and relay leaves the default out there (`mapped` has it); an explicit 1 s
# keeps the delay exercised.
SETTLE = 1.0
COMMON = {
    "topic": os.environ.get("RELAY_TEST_REQUESTS", "requests"),
    "reply_topic": os.environ.get("RELAY_TEST_RESULTS", "results"),
    "event_type": "dev.relay.example.echo",
}

with DAG(
    "relay_happy_path", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as happy:
    call = RelayCallOperator(
        task_id="call",
        data={"text": "{{ dag.dag_id }}"},
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
        **COMMON,
    )
    mapped = RelayCallOperator.partial(
        task_id="mapped", timeout=TIMEOUT, deferrable=True, **COMMON
    ).expand(data=[{"n": 1}, {"n": 2}])
    fan = RelayFanOutOperator(
        task_id="fan",
        items=[{"i": i} for i in range(5)],
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
        **COMMON,
    )
    publish = RelayPublishOperator(task_id="publish", data={"sensed": True}, **COMMON)
    sense = RelayResultSensor(
        task_id="sense",
        reply_topic=COMMON["reply_topic"],
        correlation_ids=publish.output,
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
    )
    call >> mapped >> fan >> publish >> sense
    # the same without deferring: waiting in the worker, and a sensor in poke mode
    call_sync = RelayCallOperator(task_id="call_sync", data={"sync": 1}, timeout=TIMEOUT, **COMMON)
    publish_two = RelayPublishOperator(task_id="publish_two", items=[{"p": 1}, {"p": 2}], **COMMON)
    poke = RelayResultSensor(
        task_id="poke",
        reply_topic=COMMON["reply_topic"],
        correlation_ids=publish_two.output,
        timeout=TIMEOUT,
        poke_interval=0.2,
        policy="fail_fast",
    )
    sense >> call_sync >> publish_two >> poke
    # ids of the DAG's own (one group), and subscriptions in a project of their own
    publish_named = RelayPublishOperator(
        task_id="publish_named",
        items=[{"o": 1}, {"o": 2}],
        correlation_ids=["orders.{{ ds_nodash }}-a", "orders.{{ ds_nodash }}-b"],
        wait_project="relay-waits",
        **COMMON,
    )
    sense_named = RelayResultSensor(
        task_id="sense_named",
        reply_topic=COMMON["reply_topic"],
        correlation_ids=publish_named.output,
        wait_project="relay-waits",
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
    )
    poke >> publish_named >> sense_named

with DAG(
    "relay_failures", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as failures:
    # retries=1: a non-retryable failure must fail the task at once (one try), a retryable one
    # (a dead-lettered request's result) keeps Airflow's retries (two tries).
    RETRY_ONCE = {"retries": 1, "retry_delay": timedelta(0)}
    RelayCallOperator(
        task_id="fails",
        data={"fail": "no such file"},
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
        **RETRY_ONCE,
        **COMMON,
    )
    RelayCallOperator(
        task_id="fails_retryable",
        data={"fail": "dead-lettered", "retryable": True},
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
        **RETRY_ONCE,
        **COMMON,
    )
    RelayFanOutOperator(
        task_id="partial",
        items=[{"i": 0}, {"fail": "item 1"}, {"i": 2}],
        policy="collect_all",
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
        **RETRY_ONCE,
        **COMMON,
    )
    RelayCallOperator(
        task_id="times_out",
        data={"silent": True},
        timeout=3,
        deferrable=True,
        settle=SETTLE,
        **COMMON,
    )
    RelayCallOperator(task_id="invalid", data={"crash": -1}, timeout=TIMEOUT, **COMMON)

with DAG("relay_direct", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as direct:
    from relay.airflow.operators import RelayHttpInvokeOperator

    FUNCTION_URL = os.environ.get("RELAY_TEST_FUNCTION_URL", "http://127.0.0.1:1")
    RelayHttpInvokeOperator(
        task_id="invoke",
        url=FUNCTION_URL,
        audience=FUNCTION_URL,
        event_type="dev.relay.example.echo",
        reply_topic=COMMON["reply_topic"],
        data={"direct": "{{ task.task_id }}"},
        gcp_conn_id="relay_adc",
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
    )
    RelayHttpInvokeOperator(
        task_id="answer_only",
        url=FUNCTION_URL,
        audience=FUNCTION_URL,
        event_type="dev.relay.example.echo",
        reply_topic=COMMON["reply_topic"],
        data={"direct": "sync"},
        gcp_conn_id="relay_adc",
        wait_for_result=False,
        timeout=TIMEOUT,
    )
    RelayHttpInvokeOperator(
        task_id="gives_up",
        url=os.environ.get("RELAY_TEST_FLAKY_URL", "http://127.0.0.1:1"),
        event_type="dev.relay.example.echo",
        reply_topic=COMMON["reply_topic"],
        data={},
        gcp_conn_id="relay_adc",
        max_attempts=2,
        backoff=0.05,
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
    )

with DAG(
    "relay_direct_by_name", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as by_name:
    from relay.airflow.operators import RelayHttpInvokeOperator

    # The URL comes from GetFunction (relay up's control plane), the audience from that URL.
    RelayHttpInvokeOperator(
        task_id="invoke",
        function="echo",
        region="europe-west1",
        event_type="dev.relay.example.echo",
        reply_topic=COMMON["reply_topic"],
        data={"by": "name"},
        gcp_conn_id="relay_adc",
        timeout=TIMEOUT,
        deferrable=True,
        settle=SETTLE,
    )

with DAG(
    "relay_invoke_as_identity", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as invoke_as_identity:
    import time

    from airflow.sdk import task

    from relay.airflow.operators import RelayHttpInvokeOperator

    # A function at RELAY_TEST_FUNCTION_URL (the ID token's audience: its default, from the URL),
    # as the identity of the process (its metadata server, no key): deferred (the token is
    # minted in the trigger), then, once the first token has expired (RELAY_TEST_PAUSE seconds),
    # on the worker. One attempt each: a refused token fails the task.
    INVOKE = {
        "url": os.environ.get("RELAY_TEST_FUNCTION_URL", "http://127.0.0.1:1"),
        "event_type": "dev.relay.example.echo",
        "reply_topic": COMMON["reply_topic"],
        "timeout": TIMEOUT,
        "max_attempts": 1,
    }
    first = RelayHttpInvokeOperator(
        task_id="invoke", data={"first": 1}, deferrable=True, settle=SETTLE, **INVOKE
    )

    @task(task_id="pause")
    def pause() -> None:
        time.sleep(float(os.environ.get("RELAY_TEST_PAUSE", "0")))

    again = RelayHttpInvokeOperator(task_id="invoke_again", data={"again": 2}, **INVOKE)
    first >> pause() >> again

with DAG(
    "relay_defer_after",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"defer_after": 30},
) as defer_after:
    # Results within defer_after: the tasks finish on their worker, without deferring.
    quick = RelayCallOperator(
        task_id="quick",
        data={"quick": 1},
        timeout=TIMEOUT,
        deferrable=True,
        defer_after=30,
        settle=SETTLE,
        **COMMON,
    )
    fan_quick = RelayFanOutOperator(
        task_id="fan_quick",
        items=[{"i": i} for i in range(3)],
        timeout=TIMEOUT,
        deferrable=True,
        defer_after="{{ params.defer_after }}",
        settle=SETTLE,
        **COMMON,
    )
    publish_quick = RelayPublishOperator(task_id="publish_quick", data={"sensed": 1}, **COMMON)
    sense_quick = RelayResultSensor(
        task_id="sense_quick",
        reply_topic=COMMON["reply_topic"],
        correlation_ids=publish_quick.output,
        timeout=TIMEOUT,
        deferrable=True,
        defer_after=timedelta(seconds=30),
        settle=SETTLE,
    )
    # A result that takes longer than defer_after: the task defers and still gets it.
    slow = RelayCallOperator(
        task_id="slow",
        data={"delay": 3},
        timeout=TIMEOUT,
        deferrable=True,
        defer_after=0.5,
        settle=SETTLE,
        **COMMON,
    )
    # A failure within defer_after fails the task on its worker with the function's error.
    fails_quick = RelayCallOperator(
        task_id="fails_quick",
        data={"fail": "no such file"},
        timeout=TIMEOUT,
        deferrable=True,
        defer_after=30,
        settle=SETTLE,
        retries=0,
        **COMMON,
    )
    quick >> fan_quick >> publish_quick >> sense_quick >> slow >> fails_quick

with DAG(
    "relay_start_in_triggerer", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
) as start_in_triggerer:
    # dag.test() never starts a task in the triggerer: these run the worker path (execute,
    # deferral, execute_complete), with the same results.
    @task
    def list_items() -> list[dict[str, int]]:
        return [{"i": i} for i in range(3)]

    native_fan = RelayFanOutOperator(
        task_id="native_fan",
        items=list_items(),
        timeout=TIMEOUT,
        deferrable=True,
        start_in_triggerer=True,
        **COMMON,
    )
    native_mapped = RelayCallOperator.partial(
        task_id="native_mapped", timeout=TIMEOUT, deferrable=True, start_in_triggerer=True, **COMMON
    ).expand(data=[{"m": 1}, {"m": 2}])
    publish_native = RelayPublishOperator(
        task_id="publish_native", items=[{"s": 1}, {"s": 2}], **COMMON
    )
    native_sense = RelayResultSensor(
        task_id="native_sense",
        reply_topic=COMMON["reply_topic"],
        correlation_ids=publish_native.output,
        timeout=TIMEOUT,
        deferrable=True,
        start_in_triggerer=True,
    )
    native_fan >> native_mapped >> publish_native >> native_sense
