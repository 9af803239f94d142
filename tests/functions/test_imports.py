"""relay.functions stays light: no Airflow ever, no Pub/Sub client or google-auth at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import relay.functions
{extra}
mods = sorted(sys.modules)
print(json.dumps(mods))
"""


def _modules(extra: str = "") -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(extra=extra)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def test_import_loads_no_airflow_and_no_heavy_clients() -> None:
    loaded = _modules()
    assert "relay.functions" in loaded
    assert not [m for m in loaded if m == "airflow" or m.startswith("airflow.")]
    assert "google.cloud.pubsub_v1" not in loaded
    assert "google.auth" not in loaded
    assert "grpc" not in loaded


def test_serving_an_example_loads_no_airflow() -> None:
    extra = (
        "import functions_framework\n"
        "for name in ('echo', 'csv_profile', 'dead_letter'):\n"
        "    functions_framework.create_app(name, f'functions/{name}/main.py', 'cloudevent')\n"
    )
    loaded = _modules(extra)
    assert not [m for m in loaded if m == "airflow" or m.startswith("airflow.")]
