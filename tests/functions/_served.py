"""`Served`: a functions-framework process (gunicorn, as Cloud Run runs it) serving one target."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import log_lines


def free_port() -> int:
    """A local TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    """A `functions-framework` process serving one target; its stdout (relay's log) in a file."""

    def __init__(
        self, target: str, source: Path, log: Path, env: dict[str, str], port: int | None = None
    ) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "functions_framework",
                    "--target", target, "--source", str(source), "--signature-type", "cloudevent",
                    "--host", "127.0.0.1", "--port", str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "THREADS": "4", **env},
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{target} exited:\n{log.read_text()}")
            try:
                urllib.request.urlopen(self.url, timeout=1)
            except urllib.error.HTTPError:
                return  # 405 for GET: serving
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{target} did not start:\n{log.read_text()}")

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.log.read_text(errors="replace"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
