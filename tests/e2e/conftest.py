"""The full stack for the end-to-end tests, once per test module (Airflow start-up is slow).

`e2e` = PostgreSQL database (fresh) + relay broker + every function of relay.yaml (push with OIDC)
+ Airflow's API server, scheduler, DAG processor and triggerer as separate processes. On failure
the logs of every component are printed (they also stay in the temp dir).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from _e2e_airflow import airflow_deployment
from _e2e_postgres import create_database, drop_database, server_user
from _e2e_relay import airflow_pubsub_env, relay_stack
from _e2e_stack import DAG_FILES, E2E


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """The running deployment; everything stopped and the database dropped after the module."""
    root = tmp_path_factory.mktemp("e2e")
    started = time.monotonic()
    db_url = create_database(server_user())
    dags = root / "dags"
    dags.mkdir()
    for source in DAG_FILES:
        shutil.copy(source, dags / source.name)
    try:
        with relay_stack(root / "relay") as stack:
            relay_ready = time.monotonic() - started
            env = airflow_pubsub_env(stack.host, stack.topology)
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
