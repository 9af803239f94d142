"""Airflow deployed as users run it: API server, scheduler, DAG processor and triggerer as separate
processes on PostgreSQL with the LocalExecutor, driven only through the REST API (/api/v2).

Each component runs the venv's `airflow` entry point (what `uv run --frozen airflow <component>`
runs, without uv's extra parent process, so a kill -9 of the group is a kill of Airflow itself).
Auth: the simple auth manager with every user an admin; `GET /auth/token` hands out a JWT.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from _e2e_procs import E2EError, Proc, free_port, stop_all, wait_until

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FINAL_RUN_STATES = ("success", "failed")


def airflow_env(
    home: Path,
    dags: Path,
    db_url: str,
    api_port: int,
    base: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The configuration every component shares (one JWT secret: tasks and API must agree);
    `overrides` go last (the benchmark puts some settings back to Airflow's defaults)."""
    env = dict(base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",  # a 2-core machine shared with others
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__FERNET_KEY": "",
            # Airflow 3.3.2 can fail a task resumed from a fast trigger (docs/e2e.md, "resume-
            # after-defer race"); one retry lets such a run finish. The tests check that every
            # retry they see was that race, never a relay failure.
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
            # The supervisor notices its task process's exit only when its select() times out,
            # after up to min_heartbeat_interval (5 s): that delay is the race's window.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The scheduler's and triggerer's log servers default to 8793/8794: other Airflows
            # on the machine (or a parallel run) must not collide.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # A triggerer killed with -9 stops heartbeating; its triggers move to the new one
            # once it counts as dead (default 30 s).
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides or {})
    return env


class AirflowDeployment:
    """The four components on one AIRFLOW_HOME and database; `api` talks to the API server."""

    def __init__(
        self,
        home: Path,
        dags: Path,
        db_url: str,
        extra_env: Mapping[str, str],
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = airflow_env(home, dags, db_url, self.port, extra_env, overrides)
        logs = home / "process-logs"
        self.procs = {
            name: Proc(
                name,
                [AIRFLOW, name, *(["--port", str(self.port)] if name == "api-server" else [])],
                log=logs / f"{name}.log",
                env=self.env,
                cwd=home,
            )
            for name in COMPONENTS
        }
        self.api = AirflowApi(self.url)

    def migrate(self, timeout: float = 240.0) -> float:
        """`airflow db migrate`; returns its duration."""
        started = time.monotonic()
        log = self.home / "process-logs" / "db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as handle:
            result = subprocess.run(
                [AIRFLOW, "db", "migrate"],
                env=self.env,
                cwd=self.home,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise E2EError(f"airflow db migrate failed ({log}):\n{log.read_text()[-4000:]}")
        return time.monotonic() - started

    def start(self, timeout: float = 180.0) -> None:
        """Start all four and wait until the API server reports every component healthy."""
        for proc in self.procs.values():
            proc.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float, components: tuple[str, ...] = COMPONENTS) -> None:
        names = {
            "scheduler": "scheduler",
            "triggerer": "triggerer",
            "dag-processor": "dag_processor",
        }
        wanted = [names[c] for c in components if c in names]

        def healthy() -> bool:
            health = self.api.health()
            return health is not None and all(
                (health.get(key) or {}).get("status") == "healthy"
                for key in ("metadatabase", *wanted)
            )

        wait_until("Airflow healthy", healthy, timeout, procs=list(self.procs.values()))

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Start a component that was killed, and wait for it to report healthy again."""
        self.procs[name].start()
        self.wait_healthy(timeout, (name,))

    def describe(self) -> str:
        """Every component's log tail (for failure messages)."""
        return "\n".join(proc.describe() for proc in self.procs.values())

    def stop(self) -> None:
        stop_all(list(self.procs.values()))


class AirflowApi:
    """A tiny client of the public REST API (/api/v2) with a simple-auth-manager JWT."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self._token: str | None = None

    def health(self) -> dict[str, Any] | None:
        try:
            response = self.session.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return None
        return dict(response.json()) if response.ok else None

    def token(self) -> str:
        """A JWT from the simple auth manager (every user admin: no credentials needed)."""
        if self._token is None:
            response = self.session.get(f"{self.url}/auth/token", timeout=30)
            if response.status_code != 201:
                raise E2EError(f"GET /auth/token: {response.status_code} {response.text[:500]}")
            self._token = str(response.json()["access_token"])
        return self._token

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return self.session.request(
            method, f"{self.url}/api/v2{path}", headers=headers, timeout=30, **kwargs
        )

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        if not response.ok:
            raise E2EError(f"{method} {path}: {response.status_code} {response.text[:1000]}")
        return response.json()

    # -- DAGs and runs ----------------------------------------------------------------------------

    def dag_exists(self, dag_id: str) -> bool:
        return self.call("GET", f"/dags/{dag_id}").status_code == 200

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/importErrors")["import_errors"])

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """Trigger a manual run now; returns its run id."""
        body = {"logical_date": None, "conf": dict(conf)}
        return str(self.json("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self.json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return list(data["task_instances"])

    def xcom_entries(
        self, dag_id: str, run_id: str, task_id: str, key: str
    ) -> list[dict[str, Any]]:
        """Every XCom row of a task (all map indexes) with this key (no values)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries"
        data = self.json("GET", path, params={"xcom_key": key, "limit": 1000})
        return list(data["xcom_entries"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        """The stored value of one XCom. Airflow keeps XCom values as JSON text (serialize_value)
        in a JSON column, and the API returns that text unless asked to stringify it; decoded."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self.json("GET", path, params={"map_index": map_index})["value"]
        return json.loads(value) if isinstance(value, str) else value

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int
    ) -> str:
        """The task's log as text (structured entries joined: event plus error details)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        data = self.json(
            "GET",
            path,
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
        )
        content = data.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(json.dumps(entry, default=str) for entry in content or [])

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float, deployment: AirflowDeployment
    ) -> str:
        """Poll the run to a final state; returns it. Fails naming the task states on timeout."""
        state = ""

        def final() -> bool:
            nonlocal state
            state = str(self.run(dag_id, run_id)["state"])
            return state in FINAL_RUN_STATES

        try:
            wait_until(
                f"run {dag_id}/{run_id} final",
                final,
                timeout,
                procs=[p for p in deployment.procs.values() if p.starts],
                interval=1.0,
            )
        except E2EError as exc:
            states = self.task_states(dag_id, run_id)
            raise E2EError(f"{exc}\nrun state {state}; tasks {states}") from exc
        return state

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {_ti_name(ti): ti["state"] for ti in self.task_instances(dag_id, run_id)}


def _ti_name(ti: Mapping[str, Any]) -> str:
    index = ti.get("map_index", -1)
    return str(ti["task_id"]) + (f"[{index}]" if index is not None and index >= 0 else "")


@contextmanager
def airflow_deployment(
    home: Path,
    dags: Path,
    db_url: str,
    extra_env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> Iterator[AirflowDeployment]:
    """Migrated and started; every component stopped at the end."""
    deployment = AirflowDeployment(home, dags, db_url, extra_env, overrides)
    try:
        deployment.migrate()
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
