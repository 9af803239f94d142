"""`relay provision`: create or update the topology in a Pub/Sub project, set its topic and
subscription IAM bindings, then print the IAM that Pub/Sub cannot set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from rich.console import Console

from relay.provision._errors import ProvisionError
from relay.provision._iam import (
    PUBSUB_KINDS,
    SERVICE_AGENT,
    gcloud_script,
    iam_bindings,
    project_grants,
)
from relay.provision._pubsub import Plan, admin_clients
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
_IAM_MARKS = {"add": "+", "present": "="}
_IAM_STYLES = {"add": "green", "present": "dim"}
_IAM_PAST = {"add": "added", "present": "present"}
_IAM_FUTURE = {"add": "would add", "present": "present"}
_MEMBER_KINDS = ("user", "serviceAccount", "group", "domain", "principal", "principalSet")


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
    if plan.iam:
        _render_iam(console, plan, dry_run=dry_run)


def _render_iam(console: Console, plan: Plan, *, dry_run: bool) -> None:
    """One line per binding set through Pub/Sub (+ add, = present), the reason under each add."""
    words = _IAM_FUTURE if dry_run else _IAM_PAST
    console.print("[bold]IAM bindings set through Pub/Sub[/]", highlight=False)
    rows = [
        (change, f"{change.binding.kind:<12} {change.binding.resource}", change.binding.role)
        for change in plan.iam
    ]
    where = max(len(row[1]) for row in rows)
    role = max(len(row[2]) for row in rows)
    for change, resource, role_name in rows:
        style = _IAM_STYLES[change.action]
        console.print(
            f"  [{style}]{_IAM_MARKS[change.action]} {resource:<{where}}  {role_name:<{role}}  "
            f"{change.binding.member}  {words[change.action]}[/]",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
        if change.action == "add":
            console.print(
                f"      {change.binding.reason}", highlight=False, markup=False, soft_wrap=True
            )
    counts = plan.iam_counts()
    summary = ", ".join(f"{words[action]} {counts[action]}" for action in sorted(counts))
    prefix = "dry run, nothing changed: " if dry_run else ""
    console.print(f"{prefix}{summary}", highlight=False)


def _member(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An IAM member KIND:VALUE (user:, serviceAccount:, group:, domain:, principal(Set):)."""
    if value is None:
        return None
    kind, _, rest = value.partition(":")
    if kind not in _MEMBER_KINDS or not rest:
        raise click.BadParameter(
            f"{value!r} must be KIND:VALUE with KIND one of {', '.join(_MEMBER_KINDS)} "
            "(e.g. user:you@example.com)"
        )
    return value


def _endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """HOST:PORT of a Pub/Sub API (what client_options.api_endpoint takes)."""
    if value is None:
        return None
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in value:
        raise click.BadParameter(f"{value!r} must be HOST:PORT (e.g. 127.0.0.1:8085)")
    return value


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
@click.option(
    "--iam/--no-iam",
    default=True,
    show_default=True,
    help="Set the topic and subscription IAM bindings through Pub/Sub and print the rest as "
    "gcloud commands; --no-iam leaves IAM policies alone and prints every binding instead.",
)
@click.option(
    "--project-number",
    type=click.IntRange(min=1),
    help="The project's number, for the Pub/Sub service agent's bindings (without it they are "
    "printed, not set).",
)
@click.option(
    "--provisioner",
    callback=_member,
    help="The IAM member that runs relay provision (e.g. user:you@example.com): its own grants "
    "are printed and written too.",
)
@click.option(
    "--grants-file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the grants Pub/Sub cannot set (custom roles, project and service-account "
    "bindings) to this JSON file, as `relay broker --grants` reads them.",
)
@click.option(
    "--api-endpoint",
    callback=_endpoint,
    metavar="HOST:PORT",
    help="The Pub/Sub API to provision (default: Google's): TLS, trusting the CAs of "
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH besides the system's, with Application Default "
    "Credentials, e.g. relay broker --require-auth with GCE_METADATA_HOST set to an identity's "
    "metadata server.",
)
def provision(
    file: Path,
    project: str | None,
    dry_run: bool,
    iam: bool,
    project_number: int | None,
    provisioner: str | None,
    grants_file: Path | None,
    api_endpoint: str | None,
) -> None:
    """Create or update the topology's topics and subscriptions (idempotent) and add their
    least-privilege IAM bindings (nothing is removed).

    Works against Google Cloud with Application Default Credentials; against another Pub/Sub API
    with --api-endpoint (TLS and ADC, e.g. `relay broker --require-auth`); or against `relay
    broker` without authentication when PUBSUB_EMULATOR_HOST is set. Prints what Pub/Sub cannot
    set (custom and project-level roles, roles on service accounts and Cloud Run services) as
    gcloud commands.
    """
    console = Console()
    try:
        topology = load_topology(file, project=project)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    target = os.environ.get("PUBSUB_EMULATOR_HOST")
    if api_endpoint is not None:
        where = f"the Pub/Sub API at {api_endpoint} (TLS, Application Default Credentials)"
    elif target:
        where = f"relay broker / emulator at {target}"
    else:
        where = "Google Cloud (ADC)"
    console.print(
        f"Provisioning [bold]{topology.path or file}[/] into {where}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        with admin_clients(api_endpoint) as clients:
            plan = provision_topology(
                topology,
                dry_run=dry_run,
                clients=clients,
                iam=iam,
                project_number=project_number,
            )
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from exc
    render_plan(console, plan, dry_run=dry_run)
    if iam and project_number is None:
        agent = sum(
            1
            for b in iam_bindings(topology)
            if b.member == SERVICE_AGENT and b.kind in PUBSUB_KINDS
        )
        if agent:
            console.print(
                f"not set: {agent} bindings of the Pub/Sub service agent on topics and "
                "subscriptions (its member needs the project number: --project-number); they "
                "are in the script below",
                highlight=False,
                soft_wrap=True,
            )
    if grants_file is not None:
        grants = project_grants(topology, project_number=project_number, provisioner=provisioner)
        try:
            grants_file.write_text(json.dumps(grants, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(
                f"--grants-file: cannot write {grants_file} ({exc.strerror or exc})"
            ) from exc
        console.print(f"wrote the grants Pub/Sub cannot set to {grants_file}", highlight=False)
    if iam:
        console.rule("IAM that Pub/Sub cannot set — review, then apply with gcloud")
    else:
        console.rule("IAM (least privilege, not set: --no-iam) — review, then apply with gcloud")
    script = gcloud_script(
        topology, project_number=project_number, provisioner=provisioner, include_pubsub=not iam
    )
    console.print(script, markup=False, highlight=False, soft_wrap=True)
