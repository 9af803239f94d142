"""`relay broker`: run the local Pub/Sub-compatible broker in the foreground."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["broker"]

# The broker's threads (event loop, SQLite writer, gRPC poller) hand work to each other for every
# Publish; with the default 5 ms GIL switch interval a woken thread can wait that long behind the
# busy event loop. 0.5 ms cut publish() -> done p50 by about a third at 1,000 Publish calls/s.
_SWITCH_INTERVAL_SECONDS = 0.0005
# Python's full (oldest-generation) collection scans every tracked object, and each unacked
# message lives in memory as a few of them: with a backlog of 0.5-1.5 M messages, full
# collections took a fifth of the broker's time and paused it for up to 0.45 s. They run every
# 10 minutes instead (Broker's garbage collection loop); young collections stay automatic.
_NO_AUTOMATIC_FULL_COLLECTION = 2**31 - 1


class _Formatter(logging.Formatter):
    """Info lines as bare messages (the ready line is parsed), others with level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


class _Seconds(click.ParamType[Any]):
    """A range of seconds, "LOW-HIGH" (or one number, or "off" where the setting can be off)."""

    name = "LOW-HIGH"

    def __init__(self, *, can_be_off: bool) -> None:
        self.can_be_off = can_be_off

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple) or value is None:
            return value
        text = str(value).strip()
        if self.can_be_off and text == "off":
            return "off"
        low, _, high = text.partition("-")
        try:
            bounds = (float(low), float(high or low))
        except ValueError:
            self.fail(f"{value!r} is not seconds LOW-HIGH (e.g. 5-30)", param, ctx)
        if not 0 <= bounds[0] <= bounds[1]:
            self.fail(f"{value!r}: need 0 <= LOW <= HIGH", param, ctx)
        return bounds


_RATE = click.FloatRange(0.0, 1.0)


def _behaviour(profile: str, seed: int, overrides: dict[str, Any]) -> Any:
    """The Behaviour of `profile` with each behaviour option that was given applied."""
    from relay.broker._behaviour import Behaviour

    base = Behaviour.google(seed) if profile == "google" else Behaviour(seed=seed)
    changes = {
        name: None if value == "off" else value
        for name, value in overrides.items()
        if value is not None
    }
    try:
        return base.updated(changes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


class _ServiceAccount(click.ParamType[Any]):
    """A service account email whose project the email names."""

    name = "EMAIL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from relay.broker._access import identity_project

        if identity_project(str(value)) is None:
            self.fail(f"{value!r} is not NAME@PROJECT.iam.gserviceaccount.com", param, ctx)
        return str(value)


class _Names(click.ParamType[Any]):
    """A comma-separated list of values ("" for none), as a frozenset."""

    name = "A,B,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, frozenset):
            return value
        return frozenset(item.strip() for item in str(value).split(",") if item.strip())


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; one that is not loopback needs --insecure-listen.",
)
@click.option(
    "--insecure-listen",
    is_flag=True,
    help="Allow a --host that is not loopback (without --require-auth the API has no "
    "authentication; with it, the metadata servers hand tokens to whoever reaches them).",
)
@click.option(
    "--port",
    default=8085,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="gRPC (google.pubsub.v1) port; 0 picks a free one.",
)
@click.option(
    "--http-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="HTTP port for /healthz and /certs [default: port + 1; free if port is 0].",
)
@click.option(
    "--data-dir",
    default=".relay/broker",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the store and the signing key live (created 0700); one used before must still "
    "hold its store (else see --reset-store).",
)
@click.option(
    "--reset-store",
    is_flag=True,
    help="Start with an empty store: the topics, subscriptions, messages, snapshots, schemas and "
    "IAM policies of the old one are not loaded (its files are moved aside).",
)
@click.option(
    "--push-service-accounts",
    type=_Names(),
    default=None,
    help="The only service accounts push tokens are signed for [default: any].",
)
@click.option(
    "--push-audiences",
    type=_Names(),
    default=None,
    help="The only push token audiences (= push endpoints) [default: any].",
)
@click.option(
    "--id-token-audiences",
    type=_Names(),
    default=frozenset(),
    help="More audiences the metadata servers sign ID tokens for, besides the push audiences "
    "(the URLs of functions called directly) [default: none].",
)
@click.option(
    "--require-auth",
    is_flag=True,
    help="gRPC over TLS (a CA in the data dir), a bearer token from the broker's token service "
    "and the IAM permission Google requires, on every call.",
)
@click.option(
    "--token-lifetime",
    type=click.IntRange(1, 24 * 3600),
    default=None,
    help="Seconds the access and ID tokens of --require-auth live [default: 3600, Google's].",
)
@click.option(
    "--identity",
    "identities",
    multiple=True,
    type=_ServiceAccount(),
    help="A service account NAME@PROJECT.iam.gserviceaccount.com that gets a metadata server "
    "of its own (GCE_METADATA_HOST); repeat for each (--require-auth).",
)
@click.option(
    "--grants",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="JSON: custom roles and project, service-account or resource bindings beside the IAM "
    "policies of SetIamPolicy (--require-auth; docs/broker.md).",
)
@click.option(
    "--push-concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Default cap of concurrent push requests per push subscription.",
)
@click.option(
    "--fsync/--no-fsync",
    default=False,
    show_default=True,
    help="Also survive an OS crash (slower): SQLite synchronous=FULL.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--admin-ops-per-minute",
    default=6_000,
    show_default=True,
    type=click.IntRange(1),
    help="Administrator operations allowed per project per rolling minute (Google: 6,000).",
)
@click.option(
    "--control",
    is_flag=True,
    help="Serve POST /control on the HTTP port (behaviour, injected faults, clock).",
)
@click.option(
    "--profile",
    default="off",
    show_default=True,
    type=click.Choice(["off", "google"]),
    help="google: behave in every way Google is allowed to (the options below adjust it).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option("--short-pull-rate", type=_RATE, help="P(short Pull returns fewer) [google: 0.5].")
@click.option(
    "--blocking-short-pull-rate", type=_RATE, help="P(other Pull returns fewer) [google: 0.1]."
)
@click.option(
    "--short-pull-deadline",
    type=click.FloatRange(0),
    help="A Pull that may wait less than this many seconds is short [10].",
)
@click.option(
    "--redeliver-acked-rate", type=_RATE, help="P(an acked message comes again) [google: 0.05]."
)
@click.option(
    "--redeliver-delay",
    type=_Seconds(can_be_off=False),
    help="Seconds after the ack of such a second delivery [1-10].",
)
@click.option("--reorder-rate", type=_RATE, help="P(a message is held back) [google: 0.1].")
@click.option(
    "--reorder-max-delay", type=click.FloatRange(0), help="Seconds it is held back at most [0.5]."
)
@click.option(
    "--stream-lifetime",
    type=_Seconds(can_be_off=True),
    help="Seconds until the server closes a StreamingPull stream, or off [google: 5-30].",
)
@click.option(
    "--stream-unavailable-rate", type=_RATE, help="P(a stream fails at once) [google: 0.05]."
)
@click.option(
    "--admin-latency",
    type=_Seconds(can_be_off=True),
    help="Seconds every administrator operation takes, or off [google: 0.05-0.5].",
)
@click.option(
    "--push-backoff/--no-push-backoff",
    default=None,
    help="Google's push slow start and backoff [google: on].",
)
def broker(
    host: str,
    insecure_listen: bool,
    port: int,
    http_port: int | None,
    data_dir: Path,
    reset_store: bool,
    push_service_accounts: frozenset[str] | None,
    push_audiences: frozenset[str] | None,
    id_token_audiences: frozenset[str],
    require_auth: bool,
    token_lifetime: int | None,
    identities: tuple[str, ...],
    grants: Path | None,
    push_concurrency: int,
    fsync: bool,
    log_level: str,
    admin_ops_per_minute: int,
    control: bool,
    profile: str,
    seed: int,
    **overrides: Any,
) -> None:
    """Run the local Pub/Sub-compatible broker until SIGINT/SIGTERM.

    Point the google-cloud-pubsub clients at it with PUBSUB_EMULATOR_HOST=HOST:PORT; with
    --require-auth, with the API endpoint HOST:PORT, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=<the CA of
    the ready line> and credentials from an identity's metadata server (GCE_METADATA_HOST).
    """
    from relay.broker._grants import GrantsError
    from relay.broker._server import ListenRefused, ServerOptions, run
    from relay.broker._store import StoreUnusable
    from relay.broker._tokens import DEFAULT_TOKEN_LIFETIME

    if not require_auth:
        given = [
            option
            for option, value in (
                ("--token-lifetime", token_lifetime),
                ("--identity", identities),
                ("--grants", grants),
            )
            if value
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)} take(s) effect only with --require-auth")

    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("relay")
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    root.propagate = False
    options = ServerOptions(
        data_dir=data_dir.resolve(),
        host=host,
        port=port,
        http_port=http_port,
        push_concurrency=push_concurrency,
        fsync=fsync,
        behaviour=_behaviour(profile, seed, overrides),
        admin_ops_per_minute=admin_ops_per_minute,
        control=control,
        push_service_accounts=push_service_accounts,
        push_audiences=push_audiences,
        id_token_audiences=id_token_audiences,
        reset_store=reset_store,
        insecure_listen=insecure_listen,
        require_auth=require_auth,
        token_lifetime=token_lifetime or DEFAULT_TOKEN_LIFETIME,
        identities=tuple(dict.fromkeys(identities)),
        grants=None if grants is None else grants.resolve(),
    )
    sys.setswitchinterval(_SWITCH_INTERVAL_SECONDS)
    gc.freeze()  # what start-up created (modules, classes) is never scanned again
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NO_AUTOMATIC_FULL_COLLECTION)
    try:
        asyncio.run(run(options))
    except (OSError, StoreUnusable, ListenRefused, GrantsError) as exc:
        raise click.ClickException(f"cannot start the broker: {exc}") from None
