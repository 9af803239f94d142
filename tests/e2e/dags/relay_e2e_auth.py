"""relay_e2e_auth: the --require-auth end-to-end test's DAG, waits that outlive access tokens.

    requests ──▶ call[0..n-1]    RelayCallOperator.expand on echo (deferred at once)
    dead_letter ──▶ dead_lettered
    invoke                       RelayHttpInvokeOperator: echo by its URL (run conf `echo_url`)
                                 with an ID token of Airflow's identity, then the result's wait

echo {"crash": 99} fails every delivery of `dead_letter`'s request until Pub/Sub dead-letters it;
the dead-letter function answers it with a failed result, so `dead_letter` fails (as it should)
and `dead_lettered` (all_done) ends the branch.

Run conf `items` chooses the calls' requests (echo {"sleep": s} answers after s seconds: a
deferral and a function call that outlive their tokens). No task retries: under
--require-auth nothing may fail for want of a fresh token, and no retry may hide it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from relay.airflow.operators import RelayCallOperator, RelayHttpInvokeOperator

with DAG(
    "relay_e2e_auth",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "items": [{"i": 0}],
        "request_topic": "relay-echo-requests",
        "completion_topic": "relay-results",
        "echo_url": "http://127.0.0.1:8080",
    },
    default_args={"retries": 0},
    tags=["relay", "e2e"],
) as dag:

    @task
    def requests(params: dict[str, Any] | None = None) -> list[Any]:
        """The items of the run conf, one request each."""
        return list((params or {})["items"])

    RelayCallOperator.partial(
        task_id="call",
        topic="{{ params.request_topic }}",
        reply_topic="{{ params.completion_topic }}",
        event_type="dev.relay.example.echo",
        timeout=timedelta(minutes=4),
        deferrable=True,
    ).expand(data=requests())

    dead_letter = RelayCallOperator(
        task_id="dead_letter",
        topic="{{ params.request_topic }}",
        reply_topic="{{ params.completion_topic }}",
        event_type="dev.relay.example.echo",
        data={"crash": 99},
        timeout=timedelta(minutes=4),
        deferrable=True,
    )

    @task(trigger_rule="all_done")
    def dead_lettered() -> None:
        """Ends the dead-letter branch whatever `dead_letter` did (the test checks that)."""

    dead_letter >> dead_lettered()

    RelayHttpInvokeOperator(
        task_id="invoke",
        url="{{ params.echo_url }}",
        event_type="dev.relay.example.echo",
        reply_topic="{{ params.completion_topic }}",
        data={"via": "https", "run": "{{ run_id }}"},
        timeout=timedelta(minutes=4),
        deferrable=True,
    )
