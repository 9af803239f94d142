"""Airflow for relay's tests: a temporary AIRFLOW_HOME with SQLite, migrated once per session, and a
google_cloud_default connection (anonymous, project relay-test) from an env var. The environment
is set here, at import, before anything imports airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="relay-airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "relay-test"},
            }
        ),
    }
)

from _airflow_responder import Responder  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` once per session; returns AIRFLOW_HOME."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _HOME


@pytest.fixture
def topics(broker: Any, project: str, unique: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """A fresh request topic, completion topic and the request subscription a responder reads."""
    publisher = broker.publisher()
    subscriber = broker.subscriber()
    names = {
        "requests": f"projects/{project}/topics/{unique('requests')}",
        "results": f"projects/{project}/topics/{unique('results')}",
    }
    for path in names.values():
        publisher.create_topic(name=path)
    names["request_sub"] = f"projects/{project}/subscriptions/{unique('function')}"
    subscriber.create_subscription(name=names["request_sub"], topic=names["requests"])
    yield names


@pytest.fixture
def responder(broker: Any, topics: dict[str, str]) -> Iterator[Responder]:
    """A stand-in function answering requests on the request subscription (see _airflow_responder.py)."""
    with Responder(broker, topics["request_sub"]) as running:
        yield running
