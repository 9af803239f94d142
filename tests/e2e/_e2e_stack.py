"""What the e2e fixture yields (kept out of conftest.py so tests can import it by name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from _e2e_airflow import AirflowDeployment
from _e2e_relay import REPO, RelayStack

DAG_FILES = (
    REPO / "dags" / "relay_csv_pipeline.py",
    Path(__file__).resolve().parent / "dags" / "relay_e2e_echo.py",
)
DAG_IDS = (
    "relay_csv_pipeline",
    "relay_csv_pipeline_trigger",
    "relay_e2e_echo",
    "relay_e2e_echo_native",
)
AUTH_DAG_FILES = (DAG_FILES[0], Path(__file__).resolve().parent / "dags" / "relay_e2e_auth.py")
AUTH_DAG_IDS = ("relay_csv_pipeline", "relay_e2e_auth")
AUTH_TOKEN_LIFETIME = 20
"""Seconds an access or ID token of the --require-auth deployment lives (Google's: 3,600)."""


@dataclass
class E2E:
    """The running deployment: relay's processes, Airflow's, and start-up timings."""

    root: Path
    relay: RelayStack
    airflow: AirflowDeployment
    timings: dict[str, float] = field(default_factory=dict)

    def logs(self) -> str:
        return self.airflow.describe() + "\n" + "\n".join(p.describe() for p in self.relay.procs)
