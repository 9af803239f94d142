"""`relay broker` from the command line: the ready line, defaults, clean SIGINT/SIGTERM."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

READY = re.compile(
    r"^relay broker ready grpc=127\.0\.0\.1:(\d+) http=http://127\.0\.0\.1:(\d+) "
    r"data=(.+)$"
)


def _relay() -> list[str]:
    script = Path(sys.executable).with_name("relay")
    return [str(script)] if script.exists() else [shutil.which("relay") or "relay"]


def _wait_ready(proc: subprocess.Popen[str]) -> re.Match[str]:
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = READY.match(line.strip())
        if match:
            return match
        assert line or proc.poll() is None, "broker exited before it was ready"
    raise AssertionError("no ready line")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_relay_broker_command(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*_relay(), "broker", "--port", "0", "--data-dir", str(data)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        match = _wait_ready(proc)
        assert Path(match.group(3)) == data.resolve()
        http = f"http://127.0.0.1:{match.group(2)}"
        with urllib.request.urlopen(f"{http}/healthz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{http}/certs", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(sig)
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "Traceback" not in rest
        assert "relay broker ready" not in rest
        assert (data / "broker.sqlite3").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_http_port_defaults_to_port_plus_one(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [*_relay(), "broker", "--port", str(port), "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        match = _wait_ready(proc)
        assert (int(match.group(1)), int(match.group(2))) == (port, port + 1)
    finally:
        proc.terminate()
        proc.wait(20)


def test_port_in_use_fails_clearly(broker: object, tmp_path: Path) -> None:
    port = getattr(broker, "port")  # noqa: B009 - the fixture object is untyped here
    result = subprocess.run(
        [*_relay(), "broker", "--port", str(port), "--http-port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert str(port) in result.stderr
