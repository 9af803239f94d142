"""relay's side of the deployment: `relay broker`, every function of relay.yaml, the topology.

Like `relay.up.stack_up()` (same commands, same push OIDC settings, with `token_lifetime` the same
--require-auth identities and grants), but each part is a `Proc` the fault tests can kill and
start again on the same port: stack_up() keeps its children private and has no restart.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from _auth_client import auth_broker_fields
from _e2e_procs import E2EError, Proc, answers_http, free_port, stop_all, wait_until

from relay.demo import with_csv_inputs
from relay.provision import provision
from relay.topology import Function, Topology, load_topology
from relay.up import (
    airflow_connection,
    function_server,
    identity_environment,
    operator_credentials,
    push_allow_list_options,
    require_auth_options,
)

REPO = Path(__file__).resolve().parents[2]
_READY = "relay broker ready "


class RelayStack:
    """The broker and the functions, each restartable; `topology` has the local function URLs.

    With `token_lifetime` the broker runs --require-auth (tokens of that many seconds) and each
    function as its runtime identity; `ca` and `metadata` (email -> host:port) are known once
    the broker is up.
    """

    def __init__(self, root: Path, token_lifetime: int | None = None) -> None:
        self.root = root
        self.logs = root / "logs"
        self.broker_port = free_port()
        self.http_port = free_port()
        self.inputs = root / "inputs"
        """The only folder the csv_profile function may read CSV files from."""
        base = with_csv_inputs(load_topology(REPO / "relay.yaml"), self.inputs)
        # like a Cloud Run service URL (and relay up's): no path, so it is its own ID-token audience
        urls = {name: f"http://127.0.0.1:{free_port()}" for name in base.functions}
        self.topology: Topology = replace(
            base,
            functions=MappingProxyType(
                {name: replace(f, url=urls[name]) for name, f in base.functions.items()}
            ),
        )
        self.token_lifetime = token_lifetime
        auth = []
        if token_lifetime is not None:
            auth = push_allow_list_options(self.topology, urls)
            auth += require_auth_options(self.topology, root / "auth", token_lifetime)
        self.ca: Path | None = None
        self.metadata: dict[str, str] = {}
        self.broker = Proc(
            "relay-broker",
            [
                sys.executable,
                "-m",
                "relay.broker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.broker_port),
                "--http-port",
                str(self.http_port),
                "--data-dir",
                str(root / "broker"),
                # the same extra options as the other tests' broker (tests/conftest.py)
                *shlex.split(os.environ.get("RELAY_TEST_BROKER_ARGS", "")),
                *auth,
            ],
            log=self.logs / "broker.log",
            env=clean_env(),
        )
        self.functions: dict[str, Proc] = {}
        """Each function's server, by function name (made at start: under --require-auth their
        environment names the broker's metadata servers)."""

    @property
    def host(self) -> str:
        """What PUBSUB_EMULATOR_HOST takes."""
        return f"127.0.0.1:{self.broker_port}"

    @property
    def certs_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/certs"

    def stats(self) -> dict[str, Any]:
        """The broker's GET /stats (with --require-auth its "auth" counts)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/stats", timeout=10) as r:
            result: dict[str, Any] = json.load(r)
        return result

    @property
    def procs(self) -> list[Proc]:
        return [self.broker, *self.functions.values()]

    def function_named(self, source_dir: str) -> Proc:
        """The Proc serving functions/<source_dir>."""
        for name, function in self.topology.functions.items():
            if function.source.name == source_dir:
                return self.functions[name]
        raise KeyError(source_dir)

    def topic_of(self, source_dir: str) -> str:
        for function in self.topology.functions.values():
            if function.source.name == source_dir:
                return function.topic
        raise KeyError(source_dir)

    def identity_environment(self, identity: str) -> dict[str, str]:
        """--require-auth: what a process needs to run as topology identity `identity`."""
        account = self.topology.identities[identity].service_account
        assert self.ca is not None, "the broker does not run --require-auth"
        assert account is not None, f"identity {identity} has no service account"
        return identity_environment(self.metadata[account], self.ca)

    def _function_proc(self, function: Function) -> Proc:
        identity = None
        if self.token_lifetime is not None:
            identity = self.identity_environment(function.runtime_identity or "")
        argv, env = function_server(
            self.topology,
            function,
            url=function.url,
            pubsub_host=self.host,
            certs_url=self.certs_url,
            base_env=clean_env(),
            identity=identity,
        )
        return Proc(function.name, argv, log=self.logs / f"{function.name}.log", env=env, cwd=REPO)

    # -- lifecycle --------------------------------------------------------------------------------

    def start_broker(self, timeout: float = 60.0) -> None:
        self.broker.start()
        wait_until(
            "relay broker ready", lambda: _READY in self.broker.text(), timeout, procs=[self.broker]
        )
        if self.token_lifetime is not None:
            self.ca, self.metadata = auth_broker_fields(self.broker.text())

    def start_function(self, proc: Proc, timeout: float = 60.0) -> None:
        proc.start()
        url = self._url_of(proc)
        wait_until(f"{proc.name} serving {url}", lambda: answers_http(url), timeout, procs=[proc])

    def _url_of(self, proc: Proc) -> str:
        for name, candidate in self.functions.items():
            if candidate is proc:
                return self.topology.functions[name].url
        raise KeyError(proc.name)

    def start(self) -> None:
        """Broker, then every function (started together), then provision the topology."""
        self.start_broker()
        self.functions = {
            name: self._function_proc(function)
            for name, function in self.topology.functions.items()
        }
        for proc in self.functions.values():
            proc.start()
        for proc in self.functions.values():
            url = self._url_of(proc)
            wait_until(f"{proc.name} serving {url}", partial(answers_http, url), 90, procs=[proc])
        try:
            self._provision()
        except Exception as exc:
            raise E2EError(f"provisioning failed: {exc}\n{self.broker.describe()}") from exc

    def _provision(self) -> None:
        """As `relay up` provisions: through PUBSUB_EMULATOR_HOST, or with --require-auth as
        its operator identity over TLS (the CA given to the channel: gRPC reads
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per process)."""
        if self.ca is None:
            previous = os.environ.get("PUBSUB_EMULATOR_HOST")
            os.environ["PUBSUB_EMULATOR_HOST"] = self.host
            try:
                provision(self.topology)
            finally:
                if previous is None:
                    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
                else:
                    os.environ["PUBSUB_EMULATOR_HOST"] = previous
            return
        import grpc
        from google.pubsub_v1 import PublisherClient, SubscriberClient
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        credentials = operator_credentials(self.metadata, self.topology)
        tls = grpc.ssl_channel_credentials(self.ca.read_bytes())
        publisher = PublisherClient(
            transport=PublisherGrpcTransport(
                host=self.host, credentials=credentials, ssl_channel_credentials=tls
            )
        )
        subscriber = SubscriberClient(
            transport=SubscriberGrpcTransport(
                host=self.host, credentials=credentials, ssl_channel_credentials=tls
            )
        )
        try:
            provision(self.topology, clients=(publisher, subscriber))
        finally:
            publisher.transport.close()
            subscriber.transport.close()

    def stop(self) -> None:
        stop_all(list(self.functions.values()))
        self.broker.stop()


_NOT_INHERITED = (
    "AIRFLOW",
    "PUBSUB_EMULATOR_HOST",
    "RELAY_",
    "GCE_METADATA_",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)


def clean_env() -> dict[str, str]:
    """This process's environment without Airflow, Pub/Sub or credential settings other tests
    (or the developer's shell) may have set."""
    return {key: value for key, value in os.environ.items() if not key.startswith(_NOT_INHERITED)}


def airflow_pubsub_env(host: str, topology: Topology) -> dict[str, str]:
    """clean_env() plus what every Airflow process needs to reach the broker: the emulator host
    and an anonymous google_cloud_default connection on the topology's project (and its wait
    project), as `relay up` prints it."""
    env = clean_env()
    env.update(
        {
            "PUBSUB_EMULATOR_HOST": host,
            "GOOGLE_CLOUD_PROJECT": topology.project,
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": airflow_connection(topology),
        }
    )
    return env


def airflow_auth_env(stack: RelayStack, identity: str = "airflow") -> dict[str, str]:
    """clean_env() plus what every Airflow process needs to run as `identity` against the
    --require-auth broker: its metadata server (Application Default Credentials), the CA, and a
    google_cloud_default connection with the API endpoint (no PUBSUB_EMULATOR_HOST)."""
    env = clean_env()
    env.update(stack.identity_environment(identity))
    env.update(
        {
            "GOOGLE_CLOUD_PROJECT": stack.topology.project,
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": airflow_connection(stack.topology, stack.host),
        }
    )
    return env


@contextmanager
def relay_stack(root: Path, token_lifetime: int | None = None) -> Iterator[RelayStack]:
    """A started RelayStack (--require-auth with `token_lifetime`), stopped (functions first)
    at the end."""
    stack = RelayStack(root, token_lifetime)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
