"""The topology as frozen dataclasses: what `relay.yaml` declares, validated and resolved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

Delivery = Literal["push", "pull", "eventarc"]
"""One delivery path per function: relay's push subscription, a pull subscription something of
your own forwards, or an Eventarc trigger on the request topic."""
Ingress = Literal["internal", "internal-and-gclb", "all"]

TIMEOUT_MARGIN_SECONDS = 10
"""A function's timeout is at least its ack deadline plus this: Pub/Sub gives up on a delivery at
the ack deadline, and the function must not be cut off before Pub/Sub does."""


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class RetryPolicy:
    """Pub/Sub's exponential redelivery backoff for a subscription, in seconds (each 0..600)."""

    minimum_backoff: float = 10.0
    maximum_backoff: float = 600.0


@dataclass(frozen=True)
class Identity:
    """A principal and the least it may do: publish, pull subscriptions, invoke functions."""

    name: str
    member: str
    """IAM member string, e.g. `serviceAccount:airflow@p.iam.gserviceaccount.com`."""
    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    invokes: tuple[str, ...] = ()
    waits_on: tuple[str, ...] = ()
    """Topics to which it attaches its task subscriptions, one per waiting task (Airflow's)."""
    wait_project: str | None = None
    """The project where it creates those subscriptions (default: the topology's project)."""

    @property
    def service_account(self) -> str | None:
        """The e-mail when the member is a service account (only those sign push OIDC tokens)."""
        kind, _, value = self.member.partition(":")
        return value if kind == "serviceAccount" else None


@dataclass(frozen=True)
class Subscription:
    """A plain pull subscription: on the completion topic (a consumer of results, e.g. Airflow), or
    on a terminal dead-letter topic (where an operator pulls what nothing could deliver)."""

    name: str
    topic: str
    ack_deadline_seconds: int = 60
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Function:
    """One function: its code, the topic it listens on and how its subscription delivers to it."""

    name: str
    source: Path
    """The function's folder (absolute); functions-framework serves `source/main.py`."""
    entry_point: str
    topic: str
    subscription: str
    """Its subscription's name ("" for eventarc delivery: Eventarc names the trigger's own)."""
    delivery: Delivery
    url: str
    """Push endpoint and OIDC audience in the cloud; `relay up` replaces it with a local URL."""
    push_identity: str | None
    """Name of the identity whose service account signs push OIDC tokens (push delivery only)."""
    runtime_identity: str | None
    """Name of the identity the function runs as (what it publishes results with)."""
    ack_deadline_seconds: int = 60
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter_topic: str | None = None
    """Where Pub/Sub moves a request after `max_delivery_attempts` (the loader requires one)."""
    max_delivery_attempts: int = 5
    environment: Mapping[str, str] = field(default_factory=_frozen)
    region: str = "europe-west1"
    """Where it is deployed (default: the topology's region)."""
    runtime: str = "python312"
    memory: str = "256M"
    """Google's quantity form (`256M`, `512Mi`, `1Gi`)."""
    timeout_seconds: int = 70
    """The function's execution timeout (default: ack deadline + TIMEOUT_MARGIN_SECONDS)."""
    max_instances: int = 100
    concurrency: int = 1
    """Requests one instance serves at once (above 1, relay deploys it with one full vCPU)."""
    ingress: Ingress = "internal"
    """Who may reach it: internal traffic and Pub/Sub push (default), or also a load balancer, or
    all (the direct HTTPS path from outside Google Cloud)."""

    @property
    def source_file(self) -> Path:
        """The file functions-framework loads."""
        return self.source / "main.py"


@dataclass(frozen=True)
class Topology:
    """Everything `relay provision` creates and `relay up` runs, for one project."""

    project: str
    region: str
    request_topics: tuple[str, ...]
    completion_topic: str
    dead_letter_topics: tuple[str, ...]
    completion_subscriptions: tuple[Subscription, ...]
    functions: Mapping[str, Function]
    identities: Mapping[str, Identity]
    path: Path | None = None
    """The file it was loaded from, when it was."""

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic, in declaration order: requests, completion, dead-letter."""
        return (*self.request_topics, self.completion_topic, *self.dead_letter_topics)

    @property
    def terminal_topics(self) -> tuple[str, ...]:
        """Dead-letter topics no function listens on: where dead-letter chains end."""
        listened = {function.topic for function in self.functions.values()}
        return tuple(topic for topic in self.dead_letter_topics if topic not in listened)

    @property
    def terminal_subscriptions(self) -> tuple[Subscription, ...]:
        """One pull subscription per terminal topic, of the same name: it keeps what lands there."""
        return tuple(Subscription(name=topic, topic=topic) for topic in self.terminal_topics)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Every subscription name relay names: one per function (Eventarc names its triggers'
        own), those on the completion topic, then one per terminal topic."""
        return (
            *(
                function.subscription
                for function in self.functions.values()
                if function.delivery != "eventarc"
            ),
            *(subscription.name for subscription in self.completion_subscriptions),
            *(subscription.name for subscription in self.terminal_subscriptions),
        )

    def push_service_account(self, function: Function) -> str | None:
        """The e-mail in the OIDC tokens pushed to `function`: its push subscription's or its
        Eventarc trigger's (None for pull delivery)."""
        if function.push_identity is None:
            return None
        return self.identities[function.push_identity].service_account

    def invokers(self, function: str) -> tuple[str, ...]:
        """The service accounts that may call `function` over HTTPS (`roles/run.invoker`): those
        of the identities listing it under `invokes`, its push identity's among them."""
        return tuple(
            identity.service_account
            for identity in self.identities.values()
            if function in identity.invokes and identity.service_account
        )
