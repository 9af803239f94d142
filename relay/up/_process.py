"""Child processes of `relay up`: own process group, output in a log file, stopped in order."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def start(
    name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Child:
    """Start `argv` in a new process group (a terminal's Ctrl-C reaches only `relay up`, which
    then stops its children in order), stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        offset = handle.tell()
        process = subprocess.Popen(
            list(argv),
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
