"""`relay provision`: create or update the topology in a Pub/Sub project, then print its IAM."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console

from relay.provision._iam import gcloud_script
from relay.provision._pubsub import Plan, ProvisionError
from relay.provision._pubsub import provision as provision_topology
from relay.topology import DEFAULT_FILE, TopologyError, load_topology

_MARKS = {"create": "+", "update": "~", "unchanged": "=", "conflict": "!", "pending": "…"}
_STYLES = {
    "create": "green",
    "update": "yellow",
    "unchanged": "dim",
    "conflict": "bold red",
    "pending": "cyan",
}
_PAST = {
    "create": "created",
    "update": "updated",
    "unchanged": "unchanged",
    "conflict": "conflict",
    "pending": "pending (relay deploy)",
}
_FUTURE = {
    "create": "would create",
    "update": "would update",
    "unchanged": "unchanged",
    "pending": "pending (relay deploy)",
}


def render_plan(console: Console, plan: Plan, *, dry_run: bool) -> None:
    """One line per resource (+ create, ~ update, = unchanged, ! conflict), details indented."""
    words = _FUTURE if dry_run else _PAST
    console.print(f"[bold]Pub/Sub resources in project {plan.project}[/]", highlight=False)
    width = max((len(change.short_name) for change in plan.changes), default=0)
    for change in plan.changes:
        style = _STYLES[change.action]
        word = words.get(change.action, change.action)
        console.print(
            f"  [{style}]{_MARKS[change.action]} {change.kind:<12} {change.short_name:<{width}}  "
            f"{word}[/]",
            highlight=False,
        )
        if change.action != "unchanged":
            for line in change.details:
                console.print(f"      {line}", highlight=False, markup=False, soft_wrap=True)
    counts = plan.counts()
    summary = ", ".join(
        f"{words.get(action, action)} {counts[action]}" for action in sorted(counts)
    )
    prefix = "dry run, nothing changed: " if dry_run else ""
    console.print(f"{prefix}{summary}", highlight=False)


@click.command()
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_FILE,
    show_default=True,
    help="The topology file.",
)
@click.option("--project", help="Project id (overrides the file's `project`).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--iam/--no-iam", default=True, show_default=True, help="Print the IAM commands.")
def provision(file: Path, project: str | None, dry_run: bool, iam: bool) -> None:
    """Create or update the topology's topics and subscriptions (idempotent).

    Works against Google Cloud with Application Default Credentials, or against `relay broker`
    when PUBSUB_EMULATOR_HOST is set. Prints the least-privilege IAM bindings as gcloud commands.
    """
    console = Console()
    try:
        topology = load_topology(file, project=project)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    target = os.environ.get("PUBSUB_EMULATOR_HOST")
    where = f"relay broker / emulator at {target}" if target else "Google Cloud (ADC)"
    console.print(
        f"Provisioning [bold]{topology.path or file}[/] into {where}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        plan = provision_topology(topology, dry_run=dry_run)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from exc
    render_plan(console, plan, dry_run=dry_run)
    if iam:
        console.rule("IAM (least privilege) — apply with gcloud")
        console.print(gcloud_script(topology), markup=False, highlight=False, soft_wrap=True)
