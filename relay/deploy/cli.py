"""`relay deploy`: the topology's functions onto Cloud Functions, or onto `relay up`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from relay.deploy._client import EMULATOR_HOST_ENV, emulator_host
from relay.deploy._deploy import DeployError, DeployPlan, describe_requests
from relay.deploy._deploy import deploy as deploy_functions
from relay.deploy._package import PackageError
from relay.provision import ProvisionError, configure_triggers
from relay.provision.cli import render_plan
from relay.topology import DEFAULT_FILE, TopologyError, load_topology

_MARKS = {"create": "+", "update": "~", "unchanged": "=", "conflict": "!"}
_STYLES = {"create": "green", "update": "yellow", "unchanged": "dim", "conflict": "bold red"}
_FUTURE = {"create": "would create", "update": "would update", "unchanged": "unchanged"}


def render_deploy_plan(console: Console, plan: DeployPlan, *, dry_run: bool) -> None:
    """One line per function (+ create, ~ update, = unchanged, ! conflict), details indented;
    with `dry_run`, the requests it would send."""
    console.print(f"[bold]Cloud Functions in project {plan.project}[/]", highlight=False)
    width = max((len(change.desired.function_id) for change in plan.changes), default=0)
    for change in plan.changes:
        style = _STYLES[change.action]
        word = _FUTURE.get(change.action, change.action) if dry_run else change.action
        region = change.desired.parent.rpartition("/")[2]
        console.print(
            f"  [{style}]{_MARKS[change.action]} {change.desired.function_id:<{width}}  "
            f"{region}  {word}[/]",
            highlight=False,
        )
        if change.action != "unchanged":
            for line in change.details:
                console.print(f"      {line}", highlight=False, markup=False, soft_wrap=True)
        if dry_run:
            for line in describe_requests(change):
                console.print(f"      > {line}", highlight=False, markup=False, soft_wrap=True)


@click.command()
@click.argument("functions", nargs=-1)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_FILE,
    show_default=True,
    help="The topology file.",
)
@click.option("--project", help="Project id (overrides the file's `project`).")
@click.option("--dry-run", is_flag=True, help="Print the requests it would send; change nothing.")
def deploy(functions: tuple[str, ...], file: Path, project: str | None, dry_run: bool) -> None:
    """Deploy the topology's functions (or those named) to Cloud Functions (2nd gen).

    Packages each function's folder with relay's wheel, uploads it, and creates the function or
    updates only what changed; a function already as declared is left alone. Talks to Google
    Cloud with Application Default Credentials, or to `relay up` when
    CLOUD_FUNCTIONS_EMULATOR_HOST is set.
    """
    console = Console()
    try:
        topology = load_topology(file, project=project)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    host = emulator_host()
    where = f"relay up's control plane at {host} ({EMULATOR_HOST_ENV})" if host else "Google Cloud"
    console.print(f"Deploying [bold]{topology.path or file}[/] to {where}", highlight=False)
    triggers: list[str] = []
    try:
        with console.status("reading the deployed functions") as status:
            plan, deployed = deploy_functions(
                topology,
                functions,
                dry_run=dry_run,
                progress=lambda name, text: status.update(f"{name}: {text}"),
            )
            # An Eventarc trigger's subscription gets relay's retry and dead-letter policy, as
            # `relay provision` gives it when it runs after the deploy.
            triggers = [
                item.change.desired.topology_name
                for item in deployed
                if item.change.desired.trigger == "eventarc"
            ]
            if triggers:
                status.update("configuring the Eventarc triggers' subscriptions")
                configured = configure_triggers(topology, triggers)
    except (DeployError, PackageError, ProvisionError) as exc:
        raise click.ClickException(str(exc)) from exc
    render_deploy_plan(console, plan, dry_run=dry_run)
    if not dry_run and triggers:
        render_plan(console, configured, dry_run=False)
    for item in deployed:
        console.print(
            f"  {item.change.desired.function_id}: {item.state} at {item.uri}", highlight=False
        )
    if dry_run:
        console.print("dry run, nothing deployed", highlight=False)
