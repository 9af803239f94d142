"""The example pipeline built from the Google provider's Pub/Sub operators (benchmark variant).

    list_files ──▶ create_subscription ──▶ publish ──▶ wait_0 ──▶ summarize_1 ──▶ wait_1 ── …

`list_files` is the relay DAG's task. `publish` (PubSubPublishMessageOperator) sends one relay
csv-profile request per CSV file, built with relay.protocol (new_request + to_binary, rendered by a
macro at run time because bytes cannot travel through XCom), so the same function answers.
`create_subscription` makes a plain subscription on the completion topic first, so no result is
missed. A deferrable PubSubPullSensor returns as soon as one pull brings anything, so collecting N
results needs several sensors: `wait_i` pulls (max_messages=1000) without acking. Acking
(ack_messages=True, or in messages_callback) loses the results whenever Airflow's
resume-after-defer race (apache/airflow#72716) fails the resumed try after they were acked: its
retry then waits for results that never come. Unacked, they come back after the subscription's
10 s ack deadline; duplicates are dropped by correlation id, and the benchmark deletes the
subscription after the run. `summarize_i` (short-circuit) lets the chain go on while results are
missing, else totals them (XCom key "summary") and skips the rest of the chain in one call. The
chain length is RELAY_BENCH_PROVIDER_WAITS (default 40), read at parse time.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.google.cloud.operators.pubsub import (
    PubSubCreateSubscriptionOperator,
    PubSubPublishMessageOperator,
)
from airflow.providers.google.cloud.sensors.pubsub import PubSubPullSensor
from airflow.sdk import DAG, task

from relay.protocol import (
    EXAMPLE_CSV_PROFILE,
    RESULT_SUCCEEDED,
    from_message,
    new_request,
    to_binary,
)

DAG_ID = "relay_csv_pipeline_provider"
WAITS = int(os.environ.get("RELAY_BENCH_PROVIDER_WAITS", "40"))


def relay_requests(params: dict[str, Any], items: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One binary-mode relay csv-profile request per item, as provider message dicts."""
    reply_to = f"projects/{params['project']}/topics/{params['completion_topic']}"
    messages = []
    for item in items:
        event = new_request(
            EXAMPLE_CSV_PROFILE,
            item,
            source=f"//airflow/dags/{DAG_ID}/publish",
            reply_to=reply_to,
        )
        message = to_binary(event)
        messages.append({"data": message.data, "attributes": dict(message.attributes)})
    return messages


def decode_results(pulled: list[Any], context: Any) -> list[dict[str, Any]]:
    """messages_callback: the relay results pulled, as {cid, ok, data} (JSON-serialisable)."""
    out = []
    for received in pulled:
        event = from_message(received.message.data, dict(received.message.attributes))
        ok = event.type == RESULT_SUCCEEDED
        out.append({"cid": event.correlationid, "ok": ok, "data": event.data if ok else None})
    return out


with DAG(
    DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "csv_dir": "/tmp/relay-csv",
        "project": "relay-local",
        "request_topic": "relay-csv-profile-requests",
        "completion_topic": "relay-results",
        "subscription": "relay-bench-provider",
        "expected": 0,
    },
    user_defined_macros={"relay_requests": relay_requests},
    render_template_as_native_obj=True,
    tags=["relay", "benchmark"],
) as relay_csv_pipeline_provider:

    @task
    def list_files(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """One csv-profile request per file: {"uri": "file:///..."} (as in relay_csv_pipeline)."""
        folder = Path((params or {})["csv_dir"])
        return [{"uri": path.resolve().as_uri()} for path in sorted(folder.glob("*.csv"))]

    create = PubSubCreateSubscriptionOperator(
        task_id="create_subscription",
        project_id="{{ params.project }}",
        topic="{{ params.completion_topic }}",
        subscription="{{ params.subscription }}",
        ack_deadline_secs=10,  # the minimum: results pulled by a failed try come back soonest
    )
    publish = PubSubPublishMessageOperator(
        task_id="publish",
        project_id="{{ params.project }}",
        topic="{{ params.request_topic }}",
        messages="{{ relay_requests(params, ti.xcom_pull(task_ids='list_files')) }}",
    )
    list_files() >> create >> publish

    def _summary(ti: Any, upto: int) -> dict[str, Any]:
        pulled = ti.xcom_pull(task_ids=[f"wait_{i}" for i in range(upto)])
        profiles: dict[str, Any] = {}
        failed = set()
        for batch in pulled or []:
            for result in batch or []:
                if result["ok"]:
                    profiles[result["cid"]] = result["data"]
                else:
                    failed.add(result["cid"])
        empty: dict[str, int] = {}
        for profile_ in profiles.values():
            for column, count in profile_["nulls"].items():
                empty[column] = empty.get(column, 0) + count
        return {
            "files": len(profiles),
            "failed": len(failed),
            "rows": sum(p["rows"] for p in profiles.values()),
            "empty_cells": empty,
        }

    previous: Any = publish
    for index in range(WAITS):
        wait = PubSubPullSensor(
            task_id=f"wait_{index}",
            project_id="{{ params.project }}",
            subscription="{{ params.subscription }}",
            max_messages=1000,  # Pub/Sub's cap per Pull; not a templated field
            return_immediately=True,  # what the trigger does anyway (explicit: no warning)
            ack_messages=False,  # see the module docstring
            deferrable=True,
            messages_callback=decode_results,
            timeout=600,
        )

        @task.short_circuit(task_id=f"summarize_{index + 1}", ignore_downstream_trigger_rules=True)
        def summarize(
            upto: int, last: bool, params: dict[str, Any] | None = None, ti: Any = None
        ) -> bool:
            """Go on waiting while results are missing; else summarize (XCom "summary"), stop."""
            summary = _summary(ti, upto)
            if summary["files"] + summary["failed"] < int((params or {})["expected"]) and not last:
                return True
            ti.xcom_push(key="summary", value=summary)
            return False  # skips the rest of the chain in one go

        gate = summarize(index + 1, index == WAITS - 1)
        previous >> wait >> gate
        previous = gate
