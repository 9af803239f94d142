"""The `relay` command line: subcommands are imported lazily, so `relay --help` stays fast."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command; imported only when the command runs.
_COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("relay.broker.cli:broker", "Run the local Pub/Sub-compatible broker."),
    "deploy": ("relay.deploy.cli:deploy", "Deploy the topology's functions to Cloud Functions."),
    "provision": ("relay.provision.cli:provision", "Create or update the topology in Pub/Sub."),
    "up": ("relay.up.cli:up", "Run the whole topology locally: broker, functions, live events."),
}


class _LazyGroup(click.Group):
    """A group whose subcommands load on use: one side's dependencies never load for another."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, _, attribute = _COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{_COMMANDS[cmd_name][0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="relay")
def main() -> None:
    """relay: Airflow and Google Cloud Functions, decoupled through Pub/Sub CloudEvents."""
