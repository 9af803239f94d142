"""Shared fixtures: a real `relay broker` subprocess and unique resource names.

- `broker` (session): a running broker (profile off, started with --control); sets
  PUBSUB_EMULATOR_HOST for the session. Attributes: .host ("127.0.0.1:PORT"), .port, .http_port,
  .http_url, .certs_url, .data_dir, .kill(), .restart(), .stop(), .stats() (GET /stats),
  .control(body) (POST /control: behaviour settings, {"fail": ...}, {"advance_seconds": ...}),
  plus .publisher() / .subscriber() / .schema_client() clients bound to this broker.
- `google_broker` (session): a second broker started with `--profile google --seed 1 --control`.
- `start_broker` (function): `start_broker(data_dir, args=[...], launcher=[...]) ->
  BrokerProcess`, a broker of your own (to kill it, with other flags, or run through `launcher`,
  an argv prefix); stopped at the end of the test.
- `project`: "relay-test"; `unique`: unique("topic") -> "topic-<hex>".

Advancing a shared broker's clock ages every message on it for the rest of the session (publish
times stay real): tests that advance the clock should use a broker of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

_READY = re.compile(r"relay broker ready grpc=(\S+):(\d+) http=(http://\S+):(\d+) data=(.+)")
_START_TIMEOUT = 30.0
_ENV_LOCK = threading.Lock()  # clients read PUBSUB_EMULATOR_HOST while being constructed


class BrokerProcess:
    """A `relay broker` subprocess with stderr in <data_dir>/../<name>.log; `args`: more flags;
    `launcher`: an argv prefix that runs it (e.g. in a namespace of its own)."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        http_port: int = 0,
        args: Sequence[str] = (),
        launcher: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.http_port = http_port
        self.args = list(args)
        self.launcher = list(launcher)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-broker.log"
        self.start()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """What PUBSUB_EMULATOR_HOST takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def certs_url(self) -> str:
        return f"{self.http_url}/certs"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process (on the remembered ports once known) and wait for the ready line."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.launcher,
                sys.executable,
                "-m",
                "relay.broker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = _READY.search(text)
            if match:
                self.port = int(match.group(2))
                self.http_port = int(match.group(4))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"relay broker did not become ready:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same ports and data dir."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    # -- HTTP: stats and control -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """GET /stats: RPC and administrator-operation counts since start, current settings."""
        with urllib.request.urlopen(f"{self.http_url}/stats", timeout=10) as response:
            result: dict[str, Any] = json.load(response)
        return result

    def control(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /control (the broker needs --control); raises ValueError with the broker's
        message on a refused body."""
        request = urllib.request.Request(
            f"{self.http_url}/control",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            raise ValueError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc
        return result

    # -- clients ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _env(self) -> Iterator[None]:
        with _ENV_LOCK:
            old = os.environ.get("PUBSUB_EMULATOR_HOST")
            os.environ["PUBSUB_EMULATOR_HOST"] = self.host
            try:
                yield
            finally:
                if old is None:
                    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
                else:
                    os.environ["PUBSUB_EMULATOR_HOST"] = old

    def publisher(self, **kwargs: Any) -> Any:
        """A google.cloud.pubsub_v1.PublisherClient talking to this broker."""
        from google.cloud import pubsub_v1

        with self._env():
            return pubsub_v1.PublisherClient(**kwargs)

    def subscriber(self, **kwargs: Any) -> Any:
        """A google.cloud.pubsub_v1.SubscriberClient talking to this broker."""
        from google.cloud import pubsub_v1

        with self._env():
            return pubsub_v1.SubscriberClient(**kwargs)

    def schema_client(self, **kwargs: Any) -> Any:
        """A google.cloud.pubsub.SchemaServiceClient talking to this broker."""
        from google.cloud.pubsub import SchemaServiceClient

        with self._env():
            return SchemaServiceClient(**kwargs)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """The session's broker; PUBSUB_EMULATOR_HOST points at it for the whole session.

    RELAY_TEST_BROKER_ARGS adds `relay broker` options, e.g. "--profile google --seed 3": the
    whole suite against a broker behaving as Google may.
    """
    extra = shlex.split(os.environ.get("RELAY_TEST_BROKER_ARGS", ""))
    process = BrokerProcess(tmp_path_factory.mktemp("broker") / "data", args=["--control", *extra])
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = process.host
    try:
        yield process
    finally:
        process.stop()
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def google_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A second session broker that behaves in every way Google is allowed to (seed 1)."""
    process = BrokerProcess(
        tmp_path_factory.mktemp("google-broker") / "data",
        args=["--profile", "google", "--seed", "1", "--control"],
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def start_broker() -> Iterator[Callable[..., BrokerProcess]]:
    """start_broker(data_dir, args=[...]) -> a new BrokerProcess of your own; stopped after the
    test."""
    started: list[BrokerProcess] = []

    def start(
        data_dir: Path, args: Sequence[str] = (), launcher: Sequence[str] = ()
    ) -> BrokerProcess:
        process = BrokerProcess(data_dir, args=args, launcher=launcher)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def project() -> str:
    """The project id used in resource names."""
    return "relay-test"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("topic") -> "topic-<hex>": names no other test uses."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
