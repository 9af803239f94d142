"""`python -m relay.demo`: its generated inputs and expected totals, and one whole run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.demo import generate_csvs

REPO = Path(__file__).resolve().parents[2]


def _csv_profile_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_csv_profile_main", REPO / "functions" / "csv_profile" / "main.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_totals_match_what_csv_profile_computes(tmp_path: Path) -> None:
    expected = generate_csvs(tmp_path, 7)
    csv_profile = _csv_profile_module()

    profiles = [csv_profile.profile(path.read_text()) for path in sorted(tmp_path.glob("*.csv"))]

    assert expected.files == len(profiles) == 7
    assert expected.rows == sum(p["rows"] for p in profiles)
    totals = {column: sum(p["nulls"][column] for p in profiles) for column in expected.empty_cells}
    assert totals == expected.empty_cells
    assert any(expected.empty_cells.values())  # the files do exercise empty cells


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_csvs(tmp_path / "a", 3)
    second = generate_csvs(tmp_path / "b", 3)

    assert first == second
    assert [p.read_bytes() for p in sorted((tmp_path / "a").iterdir())] == [
        p.read_bytes() for p in sorted((tmp_path / "b").iterdir())
    ]


@pytest.mark.parametrize(
    ("files", "broker_args"),
    [
        (6, ""),
        # the broker behaving as Google may (short and empty pulls, redeliveries, reordering,
        # streams closed by the server, push backoff) with every admin call taking 200 ms
        (60, "--profile google --seed 7 --admin-latency 0.2"),
    ],
    ids=["plain", "google-profile"],
)
def test_demo_runs_the_pipeline_end_to_end(tmp_path: Path, files: int, broker_args: str) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PUBSUB_EMULATOR_HOST", None)

    argv = [sys.executable, "-m", "relay.demo", "--files", str(files), "--data-dir", str(tmp_path)]
    result = subprocess.run(
        [*argv, "--broker-args", broker_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "demo passed" in output
    (run_dir,) = tmp_path.glob("run-*")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["state"] == "success"
    assert set(report["tasks"].values()) == {"success"}
    expected = json.loads((run_dir / "expected.json").read_text())
    assert report["summary"]["files"] == expected["files"] == files
    assert report["summary"]["rows"] == expected["rows"]
    assert report["summary"]["empty_cells"] == expected["empty_cells"]
    log = (run_dir / "stack" / "logs" / "csv-profile.log").read_text()
    assert log.count('"succeeded"') >= files
