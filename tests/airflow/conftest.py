"""Airflow for relay's tests: a temporary AIRFLOW_HOME with SQLite, migrated once per session, and a
google_cloud_default connection (anonymous, project relay-test) from an env var. The environment
is set here, at import, before anything imports airflow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
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
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parent / "_dag_files"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        # Application Default Credentials (the tests point them at a fake metadata server)
        "AIRFLOW_CONN_RELAY_ADC": json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"project": "relay-test"}}
        ),
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "relay-test"},
            }
        ),
    }
)

from _airflow_fakes import FakeGoogle, use_as_metadata_server  # noqa: E402
from _airflow_responder import Responder  # noqa: E402
from _trigger_runner import Comms  # noqa: E402

from relay.functions import REPLY_TOPICS_ENV  # noqa: E402


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
def topics(broker: Any, project: str, unique: Callable[[str], str]) -> dict[str, str]:
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
    return names


@pytest.fixture
def responder(broker: Any, topics: dict[str, str]) -> Iterator[Responder]:
    """A stand-in function answering requests on the request subscription (_airflow_responder)."""
    with Responder(broker, topics["request_sub"]) as running:
        yield running


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Comms:
    """The trigger runner's comms to its supervisor, for RelayRequestTrigger (_trigger_runner)."""
    from airflow.sdk.execution_time import task_runner

    stand_in = Comms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", stand_in, raising=False)
    return stand_in


@pytest.fixture
def fake_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeGoogle]:
    """A fake metadata server that Application Default Credentials use (connection relay_adc)."""
    with FakeGoogle() as fake:
        use_as_metadata_server(fake, monkeypatch, tmp_path)
        yield fake


@pytest.fixture
def echo_function(broker: Any, fake_google: FakeGoogle, tmp_path: Path) -> Iterator[str]:
    """functions/echo served by functions-framework, requiring OIDC tokens from fake_google's key
    for its own URL as audience; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": broker.host,
        "RELAY_PUSH_AUDIENCE": url,
        "RELAY_PUSH_CERTS_URL": f"{fake_google.url}/certs",
        "RELAY_PUSH_ALLOWED_EMAILS": "airflow@relay-test.iam.gserviceaccount.com",
        REPLY_TOPICS_ENV: "projects/relay-test/topics/*",
    }
    root = Path(__file__).resolve().parents[2]
    log = (tmp_path / "echo.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(root / "functions" / "echo" / "main.py"),
            "--target",
            "echo",
            "--signature-type",
            "cloudevent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=log,
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "echo.log").read_text()
                assert time.monotonic() < deadline, "echo function did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
