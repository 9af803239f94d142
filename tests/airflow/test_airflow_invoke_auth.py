"""The direct HTTPS path under `relay up --require-auth --token-lifetime 20`.

RelayHttpInvokeOperator runs under dag.test() in a process of Airflow's identity (its metadata
server through Application Default Credentials, no key; tests/airflow/_run_dag.py): google-auth
gets the ID token for echo's URL from the broker's token service and refreshes it, and echo lets
in only its invokers (relay.yaml: Airflow `invokes` echo), checking the token against the broker's
certificates as Cloud Run checks it in front of a service: 401 without a valid token for its URL,
403 for a caller without run.invoker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _relay_up import RelayUp, id_token, post, relay_up

pytestmark = pytest.mark.timeout(300)

LIFETIME = 20
SKEW = 10  # seconds past `exp` relay's function runtime still accepts (relay/functions/_auth.py)
AIRFLOW = "relay-airflow@relay-local.iam.gserviceaccount.com"
FUNCTIONS = "relay-functions@relay-local.iam.gserviceaccount.com"
DAG_FILE = Path(__file__).parent / "_dag_files" / "relay_test_dags.py"
RUNNER = Path(__file__).parent / "_run_dag.py"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayUp]:
    root = tmp_path_factory.mktemp("invoke-auth")
    with relay_up(root, "--require-auth", "--token-lifetime", str(LIFETIME)) as running:
        yield running


def _run_dag(up: RelayUp, identity: str, dag_id: str, log: Path, **env: str) -> dict[str, Any]:
    """dag.test() of `dag_id` in a process of `identity`, with the Google connection relay up
    printed for Airflow."""
    environment = up.environment(identity)
    environment.update(env)
    environment["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"] = json.dumps(
        {"conn_type": "google_cloud_platform", "extra": dict(up.connection_extra)}
    )
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, str(RUNNER), str(DAG_FILE), dag_id],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment,
            timeout=240,
            check=False,
        )
    text = log.read_text(errors="replace")
    results = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, text[-5000:]
    assert results, text[-5000:]
    outcome: dict[str, Any] = json.loads(results[-1].removeprefix("RESULT "))
    return outcome


def test_airflow_invokes_echo_as_its_identity_across_token_lifetimes(
    up: RelayUp, airflow_db: Path, tmp_path: Path
) -> None:
    """Two invokes of echo's stable URL as Airflow's identity, the second once the first one's
    token has expired; a token minted before the run is refused afterwards, so the second invoke
    cannot have reused one."""
    echo = up.urls["echo"]
    before = id_token(up.metadata["airflow"], echo)
    log = tmp_path / "dag.log"
    outcome = _run_dag(
        up,
        "airflow",
        "relay_invoke_as_identity",
        log,
        RELAY_TEST_FUNCTION_URL=echo,
        RELAY_TEST_RESULTS="relay-results",
        RELAY_TEST_PAUSE=str(LIFETIME + SKEW + 1),
    )
    text = log.read_text(errors="replace")
    assert outcome["states"] == {
        "invoke": "success",
        "pause": "success",
        "invoke_again": "success",
    }, text[-5000:]
    assert outcome["xcom"]["invoke"] == {"first": 1}
    assert outcome["xcom"]["invoke_again"] == {"again": 2}
    status, answer = post(echo, before)
    assert status == 401, answer
    assert "expired" in answer["error"], answer


def test_echo_lets_in_only_its_invokers_with_a_token_for_its_url(up: RelayUp) -> None:
    echo, csv_profile = up.urls["echo"], up.urls["csv-profile"]

    status, answer = post(echo, None)
    assert (status, answer["error"]) == (401, "missing Authorization header"), answer
    status, answer = post(echo, id_token(up.metadata["airflow"], csv_profile))
    assert status == 401, answer  # a token of an invoker, for another function
    assert "audience" in answer["error"], answer
    status, answer = post(echo, id_token(up.metadata["functions"], echo))
    assert status == 403, answer  # a token for echo's URL of an identity that does not invoke it
    assert answer["error"] == f"{FUNCTIONS!r} may not invoke this function", answer
    # Airflow's token for echo's URL passes the check: what is left is the body, not a CloudEvent.
    status, answer = post(echo, id_token(up.metadata["airflow"], echo))
    assert (status, answer["outcome"]) == (400, "unanswerable"), answer
    # Nobody gets an ID token for a URL no identity invokes.
    with pytest.raises(urllib.error.HTTPError) as refused:
        id_token(up.metadata["airflow"], "https://elsewhere.example")
    assert refused.value.code == 403
