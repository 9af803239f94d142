"""`import relay.protocol` stays light: it runs in every function's cold start."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("google.", "grpc", "airflow", "functions_framework", "cloudevents", "jsonschema")

_PROBE = """
import json, sys, time
before = set(sys.modules)
start = time.perf_counter()
import relay.protocol
elapsed = time.perf_counter() - start
print(json.dumps({"new": sorted(set(sys.modules) - before), "seconds": elapsed}))
"""


def test_import_is_light() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    result = json.loads(out)
    heavy = [m for m in result["new"] if m.startswith(FORBIDDEN) or m == "google"]
    assert heavy == []
    assert "relay.protocol" in result["new"]
    assert result["seconds"] < 1.0  # about 0.03 s here; generous for a loaded machine


def test_validation_loads_jsonschema_lazily() -> None:
    probe = (
        "import sys, relay.protocol as p;"
        "assert 'jsonschema' not in sys.modules;"
        "r = p.default_registry();"
        "assert 'jsonschema' not in sys.modules;"
        "r.validate('dev.relay.example.echo', {});"
        "assert 'jsonschema' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
