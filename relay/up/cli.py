"""`relay up`: the whole topology on this machine, with a live view of the results flowing."""

from __future__ import annotations

import json
import shlex
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import click
from rich.console import Console

from relay.protocol import RESULT_FAILED, RESULT_SUCCEEDED
from relay.provision import ProvisionError
from relay.provision.cli import render_plan
from relay.topology import DEFAULT_FILE, TopologyError, load_topology
from relay.up._connection import airflow_connection_extra
from relay.up._monitor import CompletionMonitor, Observed
from relay.up._process import StackError
from relay.up._stack import DEFAULT_DATA_DIR, Stack, stack_up

_ICONS = {RESULT_SUCCEEDED: "[green]✔[/]", RESULT_FAILED: "[red]✘[/]"}


class _Stop(Exception):
    """Raised by the SIGTERM handler to unwind like Ctrl-C does."""


def render_stack(console: Console, stack: Stack) -> None:
    """What runs where: the broker, each function and the subscription that feeds it."""
    broker = stack.broker
    width = max((len(name) for name in stack.functions), default=0)
    width = max(width, len("functions"))
    lines = [f"[bold]relay up[/] · project {stack.topology.project}"]
    data = f" · data {broker.data_dir}" if broker.data_dir else " (external)"
    lines.append(f"  [bold]{'broker':<{width}}[/]  grpc {broker.host} · {broker.http_url}{data}")
    lines.append(
        f"  [bold]{'functions':<{width}}[/]  Cloud Functions v2 API, grpc "
        f"{stack.control_plane.host} (relay deploy deploys here)"
    )
    for function in stack.functions.values():
        via = function.subscription or "its Eventarc trigger, once deployed"
        lines.append(
            f"  [bold]{function.name:<{width}}[/]  {function.url}  ← {function.topic} via "
            f"{via} ({function.delivery})"
        )
    lines.append(f"  {'logs':<{width}}  {stack.data_dir / 'logs'} (broker.log, <function>.log)")
    clients = " ".join(f"{key}={value}" for key, value in stack.environment.items())
    if broker.ca_file is not None:
        lines.extend(_auth_lines(stack, width))
        waiter = stack.waiter
        if waiter is not None:
            clients += f" (runs as {waiter})"
        where = "the clients' variables below (no PUBSUB_EMULATOR_HOST)"
    else:
        where = "PUBSUB_EMULATOR_HOST as below"
    extra = json.dumps(airflow_connection_extra(stack.topology, stack.api_endpoint))
    lines.append(
        f"  {'airflow':<{width}}  Google connection extra {extra}, in every Airflow process {where}"
    )
    lines.append(f"  {'clients':<{width}}  {clients}")
    lines.append(f"  {'results':<{width}}  completion topic {stack.topology.completion_topic}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _auth_lines(stack: Stack, width: int) -> list[str]:
    """--require-auth: TLS, and each identity's metadata server."""
    broker = stack.broker
    lines = [f"  {'auth':<{width}}  TLS (CA {broker.ca_file}); every call needs a token and IAM"]
    for name, identity in stack.topology.identities.items():
        host = broker.metadata.get(identity.service_account or "")
        if host is not None:
            lines.append(
                f"  {'identity':<{width}}  {name} ({identity.service_account}): "
                f"GCE_METADATA_HOST=GCE_METADATA_IP={host}"
            )
    return lines


def _print_event(console: Console, observed: Observed) -> None:
    icon = _ICONS.get(observed.type, "[blue]•[/]")
    stamp = observed.received.astimezone().strftime("%H:%M:%S")
    event = observed.event
    if event is None:
        console.print(
            f"{stamp} [red]undecodable[/] message {observed.message_id}: {observed.error}"
        )
        return
    detail = f"for {event.subject}" if event.subject else ""
    console.print(
        f"{stamp} {icon} {event.type:<28} corr={event.correlationid} {detail} from {event.source}",
        highlight=False,
    )


@click.command()
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_FILE,
    show_default=True,
    help="The topology file.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Broker data (persists across runs) and logs.",
)
@click.option("--project", help="Project id (overrides the file's `project`).")
@click.option(
    "--broker-port",
    type=int,
    default=8085,
    show_default=True,
    help="The broker's gRPC port (0: any free port).",
)
@click.option(
    "--functions-port",
    type=int,
    default=None,
    help="The Cloud Functions control plane's gRPC port (default 8090; any free port when "
    "--broker-port is 0).",
)
@click.option(
    "--broker-args",
    default="",
    metavar="'OPTIONS'",
    help="More `relay broker` options, e.g. '--profile google' (behave as Google may).",
)
@click.option(
    "--require-auth",
    is_flag=True,
    help="The broker authenticates and authorizes every call as Google does (TLS, tokens, the "
    "topology's least-privilege grants); each function runs as its runtime_identity.",
)
@click.option(
    "--token-lifetime",
    type=click.IntRange(1, 24 * 3600),
    default=None,
    help="Seconds the broker's access and ID tokens live (with --require-auth) [default: 3600].",
)
def up(
    file: Path,
    data_dir: Path,
    project: str | None,
    broker_port: int,
    functions_port: int | None,
    broker_args: str,
    require_auth: bool,
    token_lifetime: int | None,
) -> None:
    """Run the topology locally: broker, provisioning, every function; Ctrl-C stops it all.

    Each function runs under functions-framework on a free port and verifies the OIDC token of
    every push against the broker's certificates. Results on the completion topic are shown live.
    """
    if token_lifetime is not None and not require_auth:
        raise click.UsageError("--token-lifetime takes effect only with --require-auth")
    console = Console()
    try:
        topology = load_topology(file, project=project)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with ExitStack() as resources:
            with console.status("starting") as spinner:
                stack = resources.enter_context(
                    stack_up(
                        topology,
                        data_dir=data_dir,
                        broker_port=broker_port,
                        broker_args=shlex.split(broker_args),
                        status=lambda text: spinner.update(text),
                        functions_port=(
                            functions_port
                            if functions_port is not None
                            else (0 if broker_port == 0 else 8090)
                        ),
                        require_auth=require_auth,
                        token_lifetime=token_lifetime,
                    )
                )
            render_plan(console, stack.plan, dry_run=False)
            render_stack(console, stack)
            resources.enter_context(
                CompletionMonitor(
                    topology.project,
                    topology.completion_topic,
                    on_event=lambda observed: _print_event(console, observed),
                    client_kwargs=stack.client_kwargs,
                )
            )
            console.print("[bold]ready[/] — watching results; Ctrl-C stops everything")
            try:
                while True:
                    dead = stack.dead()
                    if dead:
                        raise StackError("\n".join(dead))
                    time.sleep(0.5)
            finally:
                console.print("stopping…")
    except (KeyboardInterrupt, _Stop):
        console.print("stopped")
    except (StackError, ProvisionError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
