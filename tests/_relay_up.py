"""`relay up` as a process of its own for the --require-auth tests, and what it printed.

`relay_up(root, "--require-auth", ...)` starts `relay up --broker-port 0` on a topology file, waits
until it watches results, reads its output (the broker's API endpoint, the CA, each identity's
metadata server, each function's stable URL, the clients' variables, Airflow's connection extra)
and stops it with SIGTERM at the end. A process of its own because gRPC reads its trusted roots
(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) once per process: a test process cannot follow a second CA.
`id_token` and `post` are what a caller does over HTTP (the metadata server's identity endpoint,
a POST with a bearer token), for the refusals the tests check without Airflow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _auth_client import client_environment

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RelayUp:
    """A running `relay up --require-auth` and what it printed."""

    process: subprocess.Popen[bytes]
    output: Path
    endpoint: str
    """The broker's API endpoint (host:port, TLS)."""
    ca: Path
    metadata: Mapping[str, str]
    """Identity name -> its metadata server (host:port)."""
    urls: Mapping[str, str]
    """Function name -> its stable URL."""
    clients: Mapping[str, str]
    """The variables printed for clients (those of the identity that waits on results)."""
    connection_extra: Mapping[str, Any]
    """The extra printed for Airflow's Google connection."""

    def environment(self, identity: str) -> dict[str, str]:
        """This process's environment as a process of `identity` would have it, plus the
        control plane's address (CLOUD_FUNCTIONS_EMULATOR_HOST)."""
        env = client_environment(self.metadata[identity], self.ca)
        env["CLOUD_FUNCTIONS_EMULATOR_HOST"] = self.clients["CLOUD_FUNCTIONS_EMULATOR_HOST"]
        return env

    def log(self, name: str) -> str:
        """The text of one of its logs (`broker`, a function's name)."""
        return (self.output.parent / ".relay" / "logs" / f"{name}.log").read_text(errors="replace")


def _wait_for(output: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace")
        if re.search(pattern, text, re.MULTILINE):
            return text
        assert process.poll() is None, f"relay up exited early:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the output of relay up:\n{output.read_text()}")


def _field(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in the output of relay up:\n{text}"
    return found.group(1)


@contextmanager
def relay_up(
    root: Path, *args: str, file: Path = REPO / "relay.yaml", timeout: float = 120
) -> Iterator[RelayUp]:
    """`relay up --file FILE --data-dir ROOT/.relay --broker-port 0 ARGS...` until the block ends
    (its output in ROOT/up.out)."""
    output = root / "up.out"
    env = {**os.environ, "COLUMNS": "300"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    argv = [sys.executable, "-c", "from relay.cli import main; main()", "up", "--file", str(file)]
    argv += ["--data-dir", str(root / ".relay"), "--broker-port", "0", *args]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        text = _wait_for(output, r"ready — watching results", process, timeout)
        clients = _field(r"^  clients +(.*?)(?: \(runs as \S+\))?$", text)
        yield RelayUp(
            process=process,
            output=output,
            endpoint=_field(r"^  broker +grpc (\S+) ", text),
            ca=Path(_field(r"^  auth +TLS \(CA (\S+)\)", text)),
            metadata=dict(
                re.findall(
                    r"^  identity +(\S+) \(\S+\): GCE_METADATA_HOST=GCE_METADATA_IP=(\S+)$",
                    text,
                    re.MULTILINE,
                )
            ),
            urls=dict(re.findall(r"^  (\S+) +(http://\S+)  ← ", text, re.MULTILINE)),
            clients=dict(item.split("=", 1) for item in clients.split()),
            connection_extra=json.loads(_field(r"Google connection extra (\{.*?\}),", text)),
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, output.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def id_token(metadata_host: str, audience: str) -> str:
    """An ID token for `audience` from the identity endpoint of a metadata server (HTTPError as
    it answers when it will not sign one)."""
    query = urllib.parse.urlencode({"audience": audience, "format": "full"})
    request = urllib.request.Request(
        f"http://{metadata_host}/computeMetadata/v1/instance/service-accounts/default/identity"
        f"?{query}",
        headers={"Metadata-Flavor": "Google"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def post(
    url: str, token: str | None, body: bytes = b"{}", headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST `body` to `url` with `token` as bearer (None: no Authorization): (status, JSON)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
