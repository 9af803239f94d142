"""relay.airflow.triggers stays light: Airflow's triggerer imports trigger classes on its event
loop, where every millisecond of import blocks all the triggers of the process."""

from __future__ import annotations

import json
import subprocess
import sys

_HEAVY = (
    "airflow.providers.google",  # GoogleBaseHook: over a second to import
    "airflow.sdk.bases.operator",
    "google.auth",
    "google.pubsub_v1",
    "grpc",
    "requests",
)

_PROBE = """
import json, sys
import airflow.jobs.triggerer_job_runner  # what a triggerer process has loaded already
before = set(sys.modules)
import relay.airflow.triggers
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_the_triggers_loads_nothing_heavy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "relay.airflow._result_trigger" in loaded  # the probe saw the import
    heavy = [m for m in loaded if m.startswith(_HEAVY)]
    assert heavy == []
