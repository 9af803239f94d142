"""The example pipeline with a no-op in place of the fan-out (benchmark variant "floor").

    list_files ──▶ profile (EmptyOperator) ──▶ summarize

What Airflow itself costs on the deployment for the pipeline's three tasks, with nothing to wait
for. `profile` is Airflow's no-op: the scheduler marks it done without running it anywhere (as a
`start_in_triggerer` relay task also runs on no worker); `summarize` counts list_files' files,
there being no profiles to total. Same run conf as relay_csv_pipeline (the topics are unused).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

with DAG(
    "relay_csv_pipeline_floor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "csv_dir": "/tmp/relay-csv",
        "request_topic": "relay-csv-profile-requests",
        "completion_topic": "relay-results",
    },
    tags=["relay", "benchmark"],
) as relay_csv_pipeline_floor:

    @task
    def list_files(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """One csv-profile request per file: {"uri": "file:///..."} (as in relay_csv_pipeline)."""
        folder = Path((params or {})["csv_dir"])
        return [{"uri": path.resolve().as_uri()} for path in sorted(folder.glob("*.csv"))]

    @task
    def summarize(files: list[dict[str, str]]) -> dict[str, Any]:
        """The number of files (the floor profiles nothing, so there are no rows to sum)."""
        return {"files": len(files)}

    files = list_files()
    files >> EmptyOperator(task_id="profile") >> summarize(files)
