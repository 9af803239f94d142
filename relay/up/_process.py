"""Child processes of `relay up`: own process group, output in a log file, stopped in order."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A part of the local stack did not start (or died); the message ends with its log's tail."""


@dataclass
class Child:
    """One running child process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    log_offset: int

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.process.poll() is None

    def log_text(self) -> str:
        """What it wrote since it started."""
        with self.log.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode("utf-8", errors="replace")

    def tail(self, lines: int = 20) -> str:
        """The last lines of its output, indented, for error messages."""
        text = self.log_text().rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (no output)"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM its process group, SIGKILL after `timeout`; returns the exit code."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
        # Workers a server forked may outlive it: the group goes too.
        _signal_group(self.pid, signal.SIGKILL)
        return self.process.returncode


def stop_all(children: list[Child], timeout: float = 10.0) -> None:
    """Stop several children at once: SIGTERM to every group, then wait, SIGKILL what is left."""
    for child in children:
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        child.stop(timeout)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# Runs first in each child (Linux): ask the kernel to SIGTERM it when its parent dies, so a
# `relay up` killed with SIGKILL leaves nothing behind; then exec the real command. Checked against
# the expected parent afterwards, in case the parent died before the request was made.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


def start(
    name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Child:
    """Start `argv` in a new process group (a terminal's Ctrl-C reaches only `relay up`, which
    then stops its children in order), stdout and stderr appended to `log`.

    On Linux the child also gets SIGTERM when this process dies, however it dies.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        offset = handle.tell()
        process = subprocess.Popen(
            _with_parent_death_signal(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name, process, log, offset)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_line(child: Child, prefix: str, timeout: float) -> str:
    """Wait until the child writes a line starting with `prefix`; returns that line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in child.log_text().splitlines():
            if line.startswith(prefix):
                return line
        if not child.alive():
            raise StackError(
                f"{child.name} exited with code {child.process.returncode} before it was ready; "
                f"its log ({child.log}):\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{child.name} was not ready after {timeout:g}s; "
                f"its log ({child.log}):\n{child.tail()}"
            )
        time.sleep(0.1)


def wait_for_http(child: Child, url: str, timeout: float) -> None:
    """Wait until `url` answers HTTP at all (any status: the server is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if not child.alive():
            raise StackError(
                f"{child.name} exited with code {child.process.returncode} before serving {url}; "
                f"its log ({child.log}):\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{child.name} did not answer at {url} within {timeout:g}s; "
                f"its log ({child.log}):\n{child.tail()}"
            )
        time.sleep(0.2)
