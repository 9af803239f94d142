"""relay_e2e_native: dags/relay_csv_pipeline.py with `profile` started in the triggerer.

    list_files ──▶ profile (RelayFanOutOperator, start_in_triggerer=True) ──▶ summarize

`profile` never runs on a worker: the scheduler hands it to the triggerer, whose
RelayRequestTrigger reads list_files' XCom, publishes, waits and ends the task there. Same run
conf as the pipeline (csv_dir, request_topic, completion_topic).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from relay.airflow.operators import RelayFanOutOperator

with DAG(
    "relay_e2e_native",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "csv_dir": "/tmp/relay-csv",
        "request_topic": "relay-csv-profile-requests",
        "completion_topic": "relay-results",
    },
    tags=["relay", "e2e"],
) as relay_e2e_native:

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
        policy="collect_all",
        timeout=timedelta(minutes=10),
        start_in_triggerer=True,
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
