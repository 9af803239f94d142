"""Bring the local stack up: `relay broker`, the topology provisioned, every function served.

`stack_up()` is the one place that knows the order; `relay up`, `python -m relay.demo` and the tests
all use it. Everything it starts is stopped when the `with` block ends, functions first.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from relay.deploy._environment import function_environment
from relay.functions import (
    MAX_DELIVERY_ATTEMPTS_ENV,
    PUSH_ALLOWED_EMAILS_ENV,
    PUSH_AUDIENCE_ENV,
    PUSH_CERTS_URL_ENV,
)
from relay.provision import Plan, provision, subscription_path
from relay.topology import Function, Topology
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

DEFAULT_DATA_DIR = ".relay"
_READY_PREFIX = "relay broker ready "
_HOST = "127.0.0.1"
_BROKER = "relay broker"


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the broker listens: `host` is what PUBSUB_EMULATOR_HOST takes."""

    host: str
    http_url: str
    data_dir: Path | None = None
    log: Path | None = None

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
    ) -> None:
        self.topology = topology
        """The topology as provisioned locally (function URLs point at the local servers)."""
        self.broker = broker
        self.functions = MappingProxyType(dict(functions))
        self.plan = plan
        self.data_dir = data_dir
        self._children = children

    @property
    def environment(self) -> dict[str, str]:
        """What a client process needs to reach this stack."""
        return {
            "PUBSUB_EMULATOR_HOST": self.broker.host,
            "GOOGLE_CLOUD_PROJECT": self.topology.project,
        }

    def dead(self) -> list[str]:
        """Descriptions of child processes that have exited (empty while all is well)."""
        return [
            f"{child.name} (pid {child.pid}) exited with code {child.process.returncode}; "
            f"its log ({child.log}):\n{child.tail()}"
            for child in self._children
            if not child.alive()
        ]


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
) -> Iterator[Stack]:
    """Start the broker (unless `broker` is given; `broker_args`: more `relay broker` options,
    e.g. `--profile google`), serve each function, provision; yield the stack.

    Sets PUBSUB_EMULATOR_HOST in this process for the duration (restored afterwards), so the
    google-cloud-pubsub clients created inside the block talk to the local broker.
    """
    say = status or (lambda _: None)
    root = Path(data_dir).resolve()
    logs = root / "logs"
    children: list[Child] = []
    forwarders: list[PullForwarder] = []
    previous_host = os.environ.get("PUBSUB_EMULATOR_HOST")
    try:
        if broker is None:
            say("starting relay broker")
            broker = _start_broker(root, logs, broker_port, broker_args, ready_timeout, children)
        os.environ["PUBSUB_EMULATOR_HOST"] = broker.host
        served: dict[str, ServedFunction] = {}
        pending: list[tuple[Child, str]] = []
        for function in topology.functions.values():
            child, url = _start_function(topology, function, broker, logs)
            children.append(child)
            pending.append((child, url))
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
        plan = provision(local)
        for function in local.functions.values():
            if function.delivery == "pull":
                forwarder = PullForwarder(
                    subscription_path(local.project, function.subscription), function.url
                )
                forwarder.start()
                forwarders.append(forwarder)
        yield Stack(local, broker, served, plan, root, children)
    finally:
        for forwarder in forwarders:
            forwarder.stop()
        # Functions first (they may still be publishing results), then the broker.
        broker_children = [child for child in children if child.name == _BROKER]
        stop_all([child for child in children if child.name != _BROKER])
        stop_all(broker_children)
        if previous_host is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous_host


def _start_broker(
    root: Path,
    logs: Path,
    port: int,
    extra: Sequence[str],
    timeout: float,
    children: list[Child],
) -> BrokerEndpoint:
    data = root / "broker"
    data.mkdir(parents=True, exist_ok=True)
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
    return BrokerEndpoint(fields["grpc"], fields["http"].rstrip("/"), data, child.log)


def function_server(
    topology: Topology,
    function: Function,
    *,
    url: str,
    pubsub_host: str,
    certs_url: str,
    base_env: Mapping[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The functions-framework command line and environment that serve `function` at `url`.

    Pushes are verified the way Cloud Run would: a token from the broker (`certs_url`), for this
    URL, signed as the function's push identity.
    """
    port = urlsplit(url).port
    if port is None:
        raise StackError(f"function URL {url!r} has no port")
    env = dict(base_env)
    env.update(
        {
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GOOGLE_CLOUD_PROJECT": topology.project,
            "K_SERVICE": function.name,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in (PUSH_AUDIENCE_ENV, PUSH_CERTS_URL_ENV, PUSH_ALLOWED_EMAILS_ENV):
        env.pop(key, None)
    push_account = topology.push_service_account(function)
    if push_account is not None:
        env.update(
            {
                PUSH_AUDIENCE_ENV: url,
                PUSH_CERTS_URL_ENV: certs_url,
                PUSH_ALLOWED_EMAILS_ENV: push_account,
            }
        )
    # Requests time out as on Cloud Run (functions-framework's gunicorn option), at the
    # function's timeout (at least the ack deadline plus a margin, as deployed).
    env["CLOUD_RUN_TIMEOUT_SECONDS"] = str(function.timeout_seconds)
    env["THREADED_TIMEOUT_ENABLED"] = "true"
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
    topology: Topology, function: Function, broker: BrokerEndpoint, logs: Path
) -> tuple[Child, str]:
    port = free_port(_HOST)
    url = f"http://{_HOST}:{port}/"
    argv, env = function_server(
        topology,
        function,
        url=url,
        pubsub_host=broker.host,
        certs_url=broker.certs_url,
        base_env=os.environ,
    )
    cwd = topology.path.parent if topology.path else None
    child = start(function.name, argv, log=logs / f"{function.name}.log", env=env, cwd=cwd)
    return child, url
