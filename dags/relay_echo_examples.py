"""Examples of every relay operator, against the echo function of the local stack.

Start the stack with `relay up` (relay broker on 127.0.0.1:8085 + functions from relay.yaml),
then point Airflow at it:

    export PUBSUB_EMULATOR_HOST=127.0.0.1:8085
    export AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT='{"conn_type": "google_cloud_platform",
        "extra": {"is_anonymous": true, "project": "relay-local",
                  "wait_project": "relay-local-waits"}}'
    airflow dags test relay_echo_call            # or any DAG id below

(`relay up` prints that extra; the wait project is where the task subscriptions are created.)

On Google Cloud, drop PUBSUB_EMULATOR_HOST and use a real connection (ADC, key, impersonation).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from relay.airflow.operators import (
    RelayCallOperator,
    RelayFanOutOperator,
    RelayHttpInvokeOperator,
    RelayPublishOperator,
)
from relay.airflow.sensors import RelayResultSensor

ECHO = {
    "topic": "relay-echo-requests",
    "reply_topic": "relay-results",
    "event_type": "dev.relay.example.echo",
}
WAIT = timedelta(minutes=5)  # every wait has a deadline
START = datetime(2026, 1, 1)

# The common case: one request, one result, one task; waits in the triggerer.
with DAG("relay_echo_call", schedule=None, start_date=START, catchup=False, tags=["relay"]):
    RelayCallOperator(
        task_id="echo",
        data={"text": "hello from {{ dag.dag_id }} at {{ ts }}"},
        timeout=WAIT,
        deferrable=True,
        **ECHO,
    )

# Dynamic task mapping: one call per item; and a fan-out per mapped task (N requests, 1 deferral).
with DAG("relay_echo_mapped", schedule=None, start_date=START, catchup=False, tags=["relay"]):
    RelayCallOperator.partial(task_id="call_each", timeout=WAIT, deferrable=True, **ECHO).expand(
        data=[{"n": 1}, {"n": 2}, {"n": 3}]
    )
    RelayFanOutOperator.partial(
        task_id="fan_out_each", timeout=WAIT, policy="collect_all", deferrable=True, **ECHO
    ).expand(items=[[{"batch": 0, "i": i} for i in range(10)], [{"batch": 1, "i": 0}]])

# Publish now, wait later (e.g. other work in between); failures stop the wait at once.
with DAG(
    "relay_echo_publish_sense", schedule=None, start_date=START, catchup=False, tags=["relay"]
):
    publish = RelayPublishOperator(task_id="publish", items=[{"a": 1}, {"b": 2}], **ECHO)
    RelayResultSensor(
        task_id="wait",
        reply_topic=ECHO["reply_topic"],
        correlation_ids=publish.output,
        policy="fail_fast",
        timeout=WAIT,
        deferrable=True,
    ).set_upstream(publish)

# A failing request: the task fails with the function's error type and message.
with DAG("relay_echo_failure", schedule=None, start_date=START, catchup=False, tags=["relay"]):
    RelayCallOperator(
        task_id="fails", data={"fail": "as asked"}, timeout=WAIT, deferrable=True, **ECHO
    )

# The direct path: POST the CloudEvent to the function's URL with an ID token for that URL; echo
# lets in only its invokers (relay.yaml: Airflow `invokes` echo). Locally: `relay up
# --require-auth`, Airflow run as the identity it prints (docs/auth.md), RELAY_ECHO_URL set to
# the URL it prints for echo; Airflow's metadata server signs the ID token. (Without
# --require-auth nothing signs one, and echo answers 401.) After `relay deploy`,
# `function="echo", region="europe-west1"` looks the URL up instead.
with DAG("relay_echo_http", schedule=None, start_date=START, catchup=False, tags=["relay"]):
    RelayHttpInvokeOperator(
        task_id="invoke",
        url=os.environ.get("RELAY_ECHO_URL", "http://127.0.0.1:8080/"),
        event_type=ECHO["event_type"],
        reply_topic=ECHO["reply_topic"],
        data={"via": "https"},
        timeout=WAIT,
        deferrable=True,
    )
