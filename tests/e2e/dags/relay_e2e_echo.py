"""relay_e2e_echo: the end-to-end tests' small DAG, one deferred RelayCallOperator per item;
relay_e2e_echo_native: the same items as one RelayFanOutOperator started in the triggerer.

    relay_e2e_echo:         requests ──▶ call[0..n-1] (RelayCallOperator.expand, echo function)
    relay_e2e_echo_native:  requests ──▶ fan_out (RelayFanOutOperator, start_in_triggerer=True)

Run conf `items` chooses the requests: echo returns each item's data; {"crash": n} makes echo fail
retryably on delivery attempts 1..n, {"fail": "msg"} fails non-retryably (the task fails with that
message).

One task retry is allowed only so that a run survives Airflow 3.3.2's resume-after-defer race
(docs/e2e.md); the tests check that every retry was caused by that race, so relay itself must
absorb every fault without a task retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator


def _echo_dag(dag_id: str, retries: int, native: bool = False) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params={
            "items": [{"i": 0}],
            "request_topic": "relay-echo-requests",
            "completion_topic": "relay-results",
        },
        default_args={"retries": retries, "retry_delay": timedelta(seconds=1)},
        tags=["relay", "e2e"],
    ) as dag:

        @task
        def requests(params: dict[str, Any] | None = None) -> list[Any]:
            """The items of the run conf, one request each."""
            return list((params or {})["items"])

        common: dict[str, Any] = {
            "topic": "{{ params.request_topic }}",
            "reply_topic": "{{ params.completion_topic }}",
            "event_type": "dev.relay.example.echo",
            "timeout": timedelta(minutes=3),
            "deferrable": True,
        }
        if native:
            RelayFanOutOperator(
                task_id="fan_out",
                items=requests(),
                policy="collect_all",
                start_in_triggerer=True,
                **common,
            )
        else:
            RelayCallOperator.partial(task_id="call", **common).expand(data=requests())
    return dag


relay_e2e_echo = _echo_dag("relay_e2e_echo", retries=1)
relay_e2e_echo_native = _echo_dag("relay_e2e_echo_native", retries=1, native=True)
