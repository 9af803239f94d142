"""Child processes for the end-to-end tests: own process group, output in a log file, killable.

Every component (Airflow's scheduler, triggerer, DAG processor and API server, relay broker, each
function) is one `Proc`: `kill()` is SIGKILL to its whole process group (a crash, no shutdown),
`start()` again is a restart with the same command, environment and log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class E2EError(RuntimeError):
    """A component did not start or a wait ran out; the message carries the relevant log tails."""


class Proc:
    """One component as a subprocess in its own process group, appending to `log`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} never started"
        return self.process.pid

    def start(self) -> None:
        """Start (or restart) the command; its output is appended to the log."""
        assert not self.alive(), f"{self.name} is already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            handle.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            self.offset = handle.tell()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def text(self, *, since_start: bool = True) -> str:
        """The log (since the last start, or all of it)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(self.offset if since_start else 0)
            return handle.read().decode("utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        text = self.text(since_start=False).rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (no output)"

    def describe(self, lines: int = 40) -> str:
        state = "running" if self.alive() else f"exited ({self._code()})"
        return f"--- {self.name} [{state}] {self.log}\n{self.tail(lines)}"

    def _code(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash (workers it forked die with it)."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL whatever is left after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_all(procs: Sequence[Proc]) -> None:
    """SIGTERM every group at once (shutdowns overlap), then make sure each is gone."""
    for proc in procs:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        if proc.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        proc.stop(timeout=1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    *,
    procs: Sequence[Proc] = (),
    interval: float = 0.5,
) -> None:
    """Poll `check` until true; fail early when one of `procs` died, naming it with its log."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        dead = [proc for proc in procs if not proc.alive()]
        if dead:
            raise E2EError(
                f"{what}: a component died\n" + "\n".join(proc.describe() for proc in dead)
            )
        if time.monotonic() > deadline:
            raise E2EError(
                f"{what}: not after {timeout:g}s\n" + "\n".join(p.describe(15) for p in procs)
            )
        time.sleep(interval)


def answers_http(url: str) -> bool:
    """Whether anything answers HTTP at `url` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
