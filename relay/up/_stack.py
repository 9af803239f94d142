"""Bring the local stack up: `relay broker`, the topology provisioned, every function served.

`stack_up()` is the one place that knows the order; `relay up`, `python -m relay.demo` and the tests
all use it. Everything it starts is stopped when the `with` block ends, functions first. With
`require_auth` the broker authenticates and authorizes every call and each process runs as its
identity (`_auth`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from relay.deploy._client import EMULATOR_HOST_ENV
from relay.deploy._environment import function_environment
from relay.functions import MAX_DELIVERY_ATTEMPTS_ENV
from relay.protocol import function_path
from relay.provision import Plan, provision, subscription_path
from relay.topology import Function, Topology
from relay.up import _auth
from relay.up._forward import PullForwarder
from relay.up._process import (
    Child,
    StackError,
    free_port,
    start,
    stop_all,
    wait_for_http,
    wait_for_line,
)
from relay.up._serving import google_stand_ins
from relay.up.control_plane import ControlPlane, Routes

DEFAULT_DATA_DIR = ".relay"
_READY_PREFIX = "relay broker ready "
_HOST = "127.0.0.1"
_BROKER = "relay broker"
_METADATA_FIELD = "metadata:"


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the broker listens: `host` is what PUBSUB_EMULATOR_HOST takes, or with
    --require-auth the API endpoint (TLS by `ca_file`; `metadata`: each identity's metadata
    server, email -> host:port)."""

    host: str
    http_url: str
    data_dir: Path | None = None
    log: Path | None = None
    ca_file: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def certs_url(self) -> str:
        """The OIDC certificates ({kid: PEM}) the functions verify push tokens against."""
        return f"{self.http_url}/certs"


@dataclass(frozen=True)
class ServedFunction:
    """One function served by functions-framework on a local port."""

    name: str
    url: str
    pid: int
    log: Path
    delivery: str
    topic: str
    subscription: str


class Stack:
    """The running local stack: what runs where, and a health check."""

    def __init__(
        self,
        topology: Topology,
        broker: BrokerEndpoint,
        functions: Mapping[str, ServedFunction],
        plan: Plan,
        data_dir: Path,
        children: list[Child],
        control_plane: ControlPlane,
        client_kwargs: Mapping[str, Any] = MappingProxyType({}),
    ) -> None:
        self.topology = topology
        """The topology as provisioned locally (function URLs point at the local servers)."""
        self.broker = broker
        self.functions = MappingProxyType(dict(functions))
        self.plan = plan
        self.data_dir = data_dir
        self.control_plane = control_plane
        """The local Cloud Functions API (`relay deploy` replaces a function's process)."""
        self.client_kwargs = MappingProxyType(dict(client_kwargs))
        """What google-cloud-pubsub clients in this process take to reach the stack (with
        --require-auth: the operator's credentials and the API endpoint)."""
        self._children = children

    @property
    def environment(self) -> dict[str, str]:
        """What a client process needs to reach this stack (with --require-auth: as the
        identity that waits on results, Airflow's, when there is one)."""
        common = {EMULATOR_HOST_ENV: self.control_plane.host}
        project = {"GOOGLE_CLOUD_PROJECT": self.topology.project}
        if self.broker.ca_file is None:
            return {"PUBSUB_EMULATOR_HOST": self.broker.host, **common, **project}
        waiter = self.waiter
        if waiter is None:
            return {_auth.CA_ENV: str(self.broker.ca_file), **common, **project}
        return {**self.identity_environment(waiter), **common, **project}

    @property
    def api_endpoint(self) -> str | None:
        """--require-auth: the broker's address as clients' API endpoint (TLS, credentials);
        None when they reach it through PUBSUB_EMULATOR_HOST."""
        return self.broker.host if self.broker.ca_file is not None else None

    @property
    def waiter(self) -> str | None:
        """The name of the identity that waits on results (Airflow's), with a service account."""
        return next(
            (
                name
                for name, identity in self.topology.identities.items()
                if identity.waits_on and identity.service_account
            ),
            None,
        )

    def identity_environment(self, name: str) -> dict[str, str]:
        """--require-auth: what a process needs to run as identity `name` (metadata server, CA)."""
        return _identity_environment(self.topology, self.broker, name)

    def dead(self) -> list[str]:
        """Descriptions of child processes that have exited (empty while all is well): the
        broker's, and each function's serving process."""
        return [
            f"{child.name} (pid {child.pid}) exited with code {child.process.returncode}; "
            f"its log ({child.log}):\n{child.tail()}"
            for child in self._children
            if not child.alive()
        ] + self.control_plane.dead()


@contextlib.contextmanager
def stack_up(
    topology: Topology,
    *,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    broker: BrokerEndpoint | None = None,
    broker_port: int = 0,
    broker_args: Sequence[str] = (),
    ready_timeout: float = 60.0,
    status: Callable[[str], None] | None = None,
    functions_port: int = 0,
    require_auth: bool = False,
    token_lifetime: int | None = None,
) -> Iterator[Stack]:
    """Start the broker (unless `broker` is given; `broker_args`: more `relay broker` options,
    e.g. `--profile google`) and the Cloud Functions control plane (gRPC on `functions_port`),
    serve each function from its folder at its stable URL, provision; yield the stack.

    The functions' stable URLs (their routes' ports) are chosen first: the broker signs push
    tokens only for the topology's push identities and those URLs (`--push-service-accounts`,
    `--push-audiences`).

    Sets PUBSUB_EMULATOR_HOST and CLOUD_FUNCTIONS_EMULATOR_HOST in this process for the duration
    (restored afterwards), so the clients created inside the block talk to the local stack. With
    `require_auth` (the broker is started with --require-auth, --token-lifetime, an --identity
    per service account and the topology's --grants) it sets GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to
    the broker's CA instead of PUBSUB_EMULATOR_HOST, and Pub/Sub clients take
    `Stack.client_kwargs` (the operator's identity).
    """
    say = status or (lambda _: None)
    root = Path(data_dir).resolve()
    logs = root / "logs"
    children: list[Child] = []
    forwarders: list[PullForwarder] = []
    previous = {
        key: os.environ.get(key)
        for key in ("PUBSUB_EMULATOR_HOST", EMULATOR_HOST_ENV, _auth.CA_ENV)
    }
    admin: tuple[Any, Any] | None = None
    control: ControlPlane | None = None
    routes = Routes(_HOST)
    try:
        urls = {
            function.name: routes.url(function_path(topology.project, function.region, name))
            for name, function in topology.functions.items()
        }
        if broker is None:
            say("starting relay broker")
            args = [*push_allow_list_options(topology, urls), *broker_args]
            if require_auth:
                args += require_auth_options(topology, root, token_lifetime)
            broker = _start_broker(root, logs, broker_port, args, ready_timeout, children)
        client_kwargs: dict[str, Any] = {}
        if broker.ca_file is None:
            os.environ["PUBSUB_EMULATOR_HOST"] = broker.host
        else:
            _check_runtime_identities(topology)
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            os.environ[_auth.CA_ENV] = str(broker.ca_file)
            client_kwargs = {
                "credentials": _auth.operator_credentials(broker.metadata, topology),
                "client_options": {"api_endpoint": broker.host},
            }
        say("starting the Cloud Functions control plane")
        control = ControlPlane(
            root / "cloud-functions",
            pubsub_host=broker.host,
            certs_url=broker.certs_url,
            invokers=topology.invokers,
            port=functions_port,
            routes=routes,
            identities=_identities(broker),
            pubsub_client_kwargs=client_kwargs or None,
        )
        os.environ[EMULATOR_HOST_ENV] = control.host
        served: dict[str, ServedFunction] = {}
        pending: list[tuple[Child, str]] = []
        for function in topology.functions.values():
            url = urls[function.name]
            child, own_url = _start_function(topology, function, broker, logs, control)
            pending.append((child, own_url))
            served[function.name] = ServedFunction(
                function.name,
                url,
                child.pid,
                child.log,
                function.delivery,
                function.topic,
                function.subscription,
            )
        say(f"waiting for {len(pending)} function(s)")
        for child, url in pending:
            wait_for_http(child, url, ready_timeout)
        local = replace(
            topology,
            functions=MappingProxyType(
                {
                    name: replace(function, url=served[name].url)
                    for name, function in topology.functions.items()
                }
            ),
        )
        say("provisioning the topology")
        admin = _admin_clients(client_kwargs)
        plan = provision(local, clients=admin)
        for function in local.functions.values():
            if function.delivery == "pull":
                forwarder = PullForwarder(
                    subscription_path(local.project, function.subscription),
                    function.url,
                    client_kwargs=client_kwargs,
                )
                forwarder.start()
                forwarders.append(forwarder)
        yield Stack(local, broker, served, plan, root, children, control, client_kwargs)
    finally:
        for forwarder in forwarders:
            forwarder.stop()
        for client in admin or ():
            client.transport.close()
        # Functions first (they may still be publishing results), then the broker.
        if control is not None:
            control.close()  # its routes too
        else:
            routes.close()
        broker_children = [child for child in children if child.name == _BROKER]
        stop_all([child for child in children if child.name != _BROKER])
        stop_all(broker_children)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _identity_environment(topology: Topology, broker: BrokerEndpoint, name: str) -> dict[str, str]:
    """What a process needs to run as identity `name` against a --require-auth broker."""
    identity = topology.identities.get(name)
    account = identity.service_account if identity is not None else None
    host = broker.metadata.get(account or "")
    if broker.ca_file is None or host is None:
        raise StackError(f"identity {name!r} has no metadata server (relay up --require-auth)")
    return _auth.identity_environment(host, broker.ca_file)


def _identities(broker: BrokerEndpoint) -> dict[str, dict[str, str]] | None:
    """--require-auth: the environment of a process running as each service account that has a
    metadata server (what a deployed revision runs as); None without auth."""
    if broker.ca_file is None:
        return None
    return {
        email: _auth.identity_environment(host, broker.ca_file)
        for email, host in broker.metadata.items()
    }


def _admin_clients(client_kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    """The publisher and subscriber admin clients provisioning uses (closed by the caller)."""
    from google.pubsub_v1 import PublisherClient, SubscriberClient

    return PublisherClient(**client_kwargs), SubscriberClient(**client_kwargs)


def _check_runtime_identities(topology: Topology) -> None:
    """Under --require-auth every function runs as a service account of the topology."""
    for function in topology.functions.values():
        identity = topology.identities.get(function.runtime_identity or "")
        if identity is None or identity.service_account is None:
            raise StackError(
                f"function {function.name} has no runtime_identity with a service account: "
                "under --require-auth every function runs as one (docs/topology.md)"
            )


def require_auth_options(topology: Topology, root: Path, token_lifetime: int | None) -> list[str]:
    """`relay broker` options of --require-auth: an identity per service account (the operator's
    too, `operator_credentials`), the topology's grants (written to `root`/grants.json)."""
    args = ["--require-auth", "--grants", str(_auth.write_grants(topology, root / "grants.json"))]
    if token_lifetime is not None:
        args += ["--token-lifetime", str(token_lifetime)]
    for account in _auth.service_accounts(topology):
        args += ["--identity", account]
    return args


def push_allow_list_options(topology: Topology, urls: Mapping[str, str]) -> list[str]:
    """`relay broker` options that let it sign push tokens only for the push functions' own
    identities and (local) URLs, and ID tokens (--require-auth's metadata servers) only for
    those URLs and the URLs of the functions some identity `invokes` (the direct HTTPS path)."""
    accounts = set()
    audiences = set()
    for function in topology.functions.values():
        account = topology.push_service_account(function)
        # an Eventarc trigger's subscription pushes to the function's URL as its push identity
        if function.delivery in ("push", "eventarc") and account is not None:
            accounts.add(account)
            audiences.add(urls[function.name])
    invoked = {urls[name] for name in topology.functions if topology.invokers(name)}
    return [
        "--push-service-accounts",
        ",".join(sorted(accounts)),
        "--push-audiences",
        ",".join(sorted(audiences)),
        "--id-token-audiences",
        ",".join(sorted(invoked - audiences)),
    ]


def _start_broker(
    root: Path,
    logs: Path,
    port: int,
    extra: Sequence[str],
    timeout: float,
    children: list[Child],
) -> BrokerEndpoint:
    data = root / "broker"
    argv = [
        sys.executable,
        "-m",
        "relay.broker",
        "--host",
        _HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data),
    ]
    if port == 0:
        argv += ["--http-port", "0"]  # else the broker's default: port + 1
    argv += extra
    child = start(_BROKER, argv, log=logs / "broker.log", env=os.environ)
    children.append(child)
    line = wait_for_line(child, _READY_PREFIX, timeout)
    fields = dict(part.split("=", 1) for part in line[len(_READY_PREFIX) :].split() if "=" in part)
    if "grpc" not in fields or "http" not in fields:
        raise StackError(f"cannot parse the broker's ready line: {line!r}")
    metadata = {
        key[len(_METADATA_FIELD) :]: value
        for key, value in fields.items()
        if key.startswith(_METADATA_FIELD)
    }
    return BrokerEndpoint(
        fields["grpc"],
        fields["http"].rstrip("/"),
        data,
        child.log,
        Path(fields["ca"]) if "ca" in fields else None,
        MappingProxyType(metadata),
    )


def function_server(
    topology: Topology,
    function: Function,
    *,
    url: str,
    pubsub_host: str,
    certs_url: str,
    base_env: Mapping[str, str],
    port: int | None = None,
    identity: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The functions-framework command line and environment that serve `function` at `url`
    (listening on `port`, default the URL's: another when a route forwards the URL to it).

    Callers are checked the way Cloud Run checks them: an ID token from the broker (`certs_url`)
    for this URL, of one of the function's invokers (its push identity's and those of every
    identity that `invokes` it). With `identity` (--require-auth: the environment of its runtime
    identity, `Stack.identity_environment`) it publishes as that identity over TLS to the API
    endpoint `pubsub_host`; else through PUBSUB_EMULATOR_HOST (`_serving`).
    """
    port = port or urlsplit(url).port
    if port is None:
        raise StackError(f"function URL {url!r} has no port")
    env = google_stand_ins(
        base_env,
        url=url,
        pubsub_host=pubsub_host,
        certs_url=certs_url,
        invokers=topology.invokers(function.name),
        # at least the ack deadline plus a margin, as deployed
        timeout_seconds=function.timeout_seconds,
        identity=identity,
    )
    env.update(
        {
            "GOOGLE_CLOUD_PROJECT": topology.project,
            "K_SERVICE": function.name,
            "PYTHONUNBUFFERED": "1",
        }
    )
    # What it may touch (results only to the completion topic; its last attempt known): the
    # same variables `relay deploy` sets.
    env.pop(MAX_DELIVERY_ATTEMPTS_ENV, None)
    env.update(function_environment(topology, function))
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        function.entry_point,
        "--source",
        str(function.source_file),
        "--signature-type",
        "cloudevent",
        "--host",
        urlsplit(url).hostname or _HOST,
        "--port",
        str(port),
    ]
    return argv, env


def _start_function(
    topology: Topology,
    function: Function,
    broker: BrokerEndpoint,
    logs: Path,
    control: ControlPlane,
) -> tuple[Child, str]:
    """Serve `function` from its folder at its stable URL (the one a deploy keeps); returns the
    child and the child's own URL."""
    resource = function_path(topology.project, function.region, function.name)
    url = control.url(resource)
    port = free_port(_HOST)
    identity = None
    if broker.ca_file is not None:
        identity = _identity_environment(topology, broker, function.runtime_identity or "")
    argv, env = function_server(
        topology,
        function,
        url=url,
        pubsub_host=broker.host,
        certs_url=broker.certs_url,
        base_env=os.environ,
        port=port,
        identity=identity,
    )
    cwd = topology.path.parent if topology.path else None
    child = start(function.name, argv, log=logs / f"{function.name}.log", env=env, cwd=cwd)
    control.adopt(resource, child, port)
    return child, f"http://{_HOST}:{port}/"
