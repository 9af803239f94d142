"""The full stack for the end-to-end tests, once per test module (Airflow start-up is slow).

`e2e` = PostgreSQL database (fresh) + relay broker + every function of relay.yaml (push with OIDC)
+ Airflow's API server, scheduler, DAG processor and triggerer as separate processes. `e2e_auth`
is the same with the broker enforcing --require-auth (tokens of AUTH_TOKEN_LIFETIME seconds),
every function and every Airflow component running as its topology identity. On failure the logs
of every component are printed (they also stay in the temp dir).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _e2e_airflow import airflow_deployment
from _e2e_postgres import create_database, drop_database, server_user
from _e2e_relay import airflow_auth_env, airflow_pubsub_env, relay_stack
from _e2e_stack import AUTH_DAG_FILES, AUTH_TOKEN_LIFETIME, DAG_FILES, E2E


def _deployment(
    root: Path, dag_files: Sequence[Path], token_lifetime: int | None = None
) -> Iterator[E2E]:
    started = time.monotonic()
    db_url = create_database(server_user())
    dags = root / "dags"
    dags.mkdir()
    for source in dag_files:
        shutil.copy(source, dags / source.name)
    try:
        with relay_stack(root / "relay", token_lifetime) as stack:
            relay_ready = time.monotonic() - started
            if token_lifetime is None:
                env = airflow_pubsub_env(stack.host, stack.topology)
            else:
                env = airflow_auth_env(stack)
            with airflow_deployment(root / "airflow", dags, db_url, env) as deployment:
                running = E2E(root, stack, deployment)
                running.timings = {
                    "relay stack up": relay_ready,
                    "airflow migrated and healthy": time.monotonic() - started - relay_ready,
                }
                print(f"e2e start-up: {running.timings}")
                yield running
    finally:
        drop_database(db_url)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """The running deployment; everything stopped and the database dropped after the module."""
    yield from _deployment(tmp_path_factory.mktemp("e2e"), DAG_FILES)


@pytest.fixture(scope="module")
def e2e_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """The deployment under --require-auth (Airflow as identity `airflow`, each function as its
    runtime identity); stopped and dropped after the module."""
    yield from _deployment(tmp_path_factory.mktemp("e2e-auth"), AUTH_DAG_FILES, AUTH_TOKEN_LIFETIME)
