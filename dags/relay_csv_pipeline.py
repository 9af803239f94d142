"""relay_csv_pipeline: profile every CSV file in a folder with the csv-profile function, sum up.

    list_files ──▶ profile (RelayFanOutOperator) ──▶ summarize

`profile` publishes one dev.relay.example.csv.profile request per file (each with its own
completion subscription, created before the request is sent) and waits for all results in one
deferral; `summarize` totals rows and empty cells. `make demo` runs it against the local stack
(`relay up`: relay broker + functions/csv_profile); run conf / params:

    csv_dir           folder with *.csv files (file:// URIs; gs:// works with the real function)
    request_topic     the csv-profile function's request topic
    completion_topic  where functions publish results
    defer_after       seconds `profile` waits on its worker before deferring (0: defer at once;
                      results in by then cost no deferral; docs/airflow.md, "defer_after")

relay_csv_pipeline_trigger is the same pipeline with `profile` started in the triggerer
(`start_in_triggerer=True`): it never runs on a worker; the triggerer reads list_files' XCom,
publishes, waits and ends the task there (docs/airflow.md, "Starting in the triggerer"; no
defer_after there).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from relay.airflow.operators import RelayFanOutOperator


def _pipeline(dag_id: str, **mode: Any) -> DAG:
    """The pipeline; `mode`: how `profile` waits (deferring from a worker, or in the triggerer)."""
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        params={
            "csv_dir": "/tmp/relay-csv",
            "request_topic": "relay-csv-profile-requests",
            "completion_topic": "relay-results",
            "defer_after": 0,
        },
        tags=["relay", "example"],
    ) as dag:

        @task
        def list_files(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
            """One csv-profile request per file: {"uri": "file:///..."}."""
            folder = Path((params or {})["csv_dir"])
            return [{"uri": path.resolve().as_uri()} for path in sorted(folder.glob("*.csv"))]

        profile = RelayFanOutOperator(
            task_id="profile",
            topic="{{ params.request_topic }}",
            reply_topic="{{ params.completion_topic }}",
            event_type="dev.relay.example.csv.profile",
            items=list_files(),
            policy="collect_all",  # profile every file; fail at the end naming the bad ones
            timeout=timedelta(minutes=10),
            **mode,
        )

        @task
        def summarize(profiles: list[dict[str, Any]]) -> dict[str, Any]:
            """Files, rows and empty cells per column over all profiles."""
            empty: dict[str, int] = {}
            for profile_ in profiles:
                for column, count in profile_["nulls"].items():
                    empty[column] = empty.get(column, 0) + count
            return {
                "files": len(profiles),
                "rows": sum(p["rows"] for p in profiles),
                "empty_cells": empty,
            }

        summarize(profile.output)
    return dag


relay_csv_pipeline = _pipeline(
    "relay_csv_pipeline", deferrable=True, defer_after="{{ params.defer_after }}"
)
relay_csv_pipeline_trigger = _pipeline("relay_csv_pipeline_trigger", start_in_triggerer=True)
