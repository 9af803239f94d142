"""relay's Airflow modules stay light to import where Airflow imports them on a hot path.

- relay.airflow.triggers: the triggerer imports trigger classes on its event loop, where every
  millisecond of import blocks all the triggers of the process.
- relay.airflow.operators and .sensors: every task process of a DAG using them parses its DAG file
  at start-up (benchmarks/pipeline.py measured 2.0-2.4 s per task against 0.15 s without relay
  while relay.airflow.hooks, and through it the Google provider's GoogleBaseHook, loaded at
  import). The hook and the Pub/Sub clients load when a task first uses them.
"""

from __future__ import annotations

import json
import subprocess
import sys

_GOOGLE = (
    "airflow.providers.google.common.hooks",  # GoogleBaseHook: over a second to import
    "google.auth",
    "google.cloud.pubsub",
    "google.pubsub_v1",
    "grpc",
)

_PROBE = """
import json, sys
import {loaded_already}
before = set(sys.modules)
{imports}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _new_modules(loaded_already: str, imports: str) -> list[str]:
    """The modules `imports` loads in a fresh process that has `loaded_already` imported."""
    probe = _PROBE.format(loaded_already=loaded_already, imports=imports)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_triggers_loads_nothing_heavy() -> None:
    # what a triggerer process has loaded already
    loaded = _new_modules("airflow.jobs.triggerer_job_runner", "import relay.airflow.triggers")
    assert "relay.airflow._result_trigger" in loaded  # the probe saw the import
    heavy = (
        "airflow.providers.google",
        "airflow.sdk.bases.operator",
        "google.auth",
        "google.pubsub_v1",
        "grpc",
        "requests",
    )
    assert [m for m in loaded if m.startswith(heavy)] == []


def test_importing_the_operators_loads_no_google_client() -> None:
    loaded = _new_modules(  # airflow.sdk: what a DAG file imports anyway
        "airflow.sdk",
        "from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator\n"
        "from relay.airflow.sensors import RelayResultSensor",
    )
    assert "relay.airflow.operators" in loaded  # the probe saw the import
    heavy = ("relay.airflow.hooks", *_GOOGLE)
    assert [m for m in loaded if m.startswith(heavy)] == []
