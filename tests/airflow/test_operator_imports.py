"""A DAG file that imports relay's operators stays quick to parse: every task process of such a DAG
parses it at start-up (benchmarks/pipeline.py measured 2.0-2.4 s per task against 0.15 s without
relay while relay.airflow.hooks, and through it the Google provider's GoogleBaseHook, loaded at
import). The hook and the Pub/Sub clients load when a task first uses them."""

from __future__ import annotations

import json
import subprocess
import sys

_HEAVY = (
    "airflow.providers.google.common.hooks",  # GoogleBaseHook: over a second to import
    "google.auth",
    "google.cloud.pubsub",
    "google.pubsub_v1",
    "grpc",
    "relay.airflow.hooks",
)

_PROBE = """
import json, sys
import airflow.sdk  # what a DAG file imports anyway
before = set(sys.modules)
from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator, RelayPublishOperator
from relay.airflow.sensors import RelayResultSensor
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_the_operators_loads_no_google_client() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "relay.airflow.operators" in loaded  # the probe saw the import
    heavy = [m for m in loaded if m.startswith(_HEAVY)]
    assert heavy == []
