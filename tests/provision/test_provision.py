"""`relay provision` against a real `relay broker`: create, update, idempotent, dry-run reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from google.api_core import exceptions
from google.pubsub_v1 import PublisherClient, SubscriberClient

from relay.provision import ProvisionError, admin_clients, provision
from relay.provision.cli import provision as provision_command
from relay.topology import Topology, parse_topology

TEMPLATE = """
version: 1
project: {project}
topics:
  requests: [{requests}]
  completion:
    name: {results}
    subscriptions:
      {audit}: {{ack_deadline: 20s}}
  dead_letter: [{dead}, {final}]
functions:
  echo:
    source: functions/echo
    entry_point: echo
    topic: {requests}
    subscription: {echo_sub}
    push_identity: push
    runtime_identity: runtime
    url: {url}
    ack_deadline: {ack}
    retry: {{minimum_backoff: 2s, maximum_backoff: 30s}}
    dead_letter_topic: {dead}
    max_delivery_attempts: {attempts}
  dead-letter:
    source: functions/dead_letter
    entry_point: dead_letter
    topic: {dead}
    subscription: {dead_sub}
    delivery: {dead_delivery}
    {dead_push}
    runtime_identity: runtime
    retry: {dead_retry}
    dead_letter_topic: {final}
    max_delivery_attempts: 5
identities:
  airflow:
    service_account: airflow@{{project}}.iam.gserviceaccount.com
    publishes: [{requests}]
    waits_on: [{results}]
  runtime:
    service_account: runtime@{{project}}.iam.gserviceaccount.com
    publishes: [{results}]
  push:
    service_account: push@{{project}}.iam.gserviceaccount.com
    invokes: [echo, dead-letter]
"""


@pytest.fixture
def clients(broker: Any) -> Iterator[tuple[PublisherClient, SubscriberClient]]:
    with admin_clients() as pair:
        yield pair


@pytest.fixture
def names(unique: Callable[[str], str]) -> dict[str, str]:
    return {
        "requests": unique("echo-requests"),
        "results": unique("results"),
        "audit": unique("results-audit"),
        "dead": unique("dead-letters"),
        "final": unique("undeliverable"),
        "echo_sub": unique("echo-push"),
        "dead_sub": unique("dead-letter-sub"),
    }


def _render(project: str, names: dict[str, str], **overrides: Any) -> str:
    values: dict[str, Any] = {
        "project": project,
        "url": "https://europe-west1-relay-test.cloudfunctions.net/echo",
        "ack": "60s",
        "attempts": 5,
        "dead_delivery": "push",
        "dead_push": "push_identity: push",
        "dead_retry": "{minimum_backoff: 1s, maximum_backoff: 60s}",
        **names,
    }
    values.update(overrides)
    return TEMPLATE.format(**values)


@pytest.fixture
def make(project: str, names: dict[str, str]) -> Callable[..., Topology]:
    def build(**overrides: Any) -> Topology:
        return parse_topology(_render(project, names, **overrides), check_sources=False)

    return build


def _subscription(subscriber: SubscriberClient, topology: Topology, name: str) -> Any:
    path = f"projects/{topology.project}/subscriptions/{name}"
    subscription = subscriber.get_subscription(subscription=path)
    return type(subscription).pb(subscription)


def _actions(plan: Any) -> dict[str, str]:
    return {change.short_name: change.action for change in plan.changes}


def test_creates_every_resource_then_a_second_run_changes_nothing(
    make: Callable[..., Topology],
    clients: tuple[PublisherClient, SubscriberClient],
    names: dict[str, str],
) -> None:
    topology = make()
    publisher, subscriber = clients

    first = provision(topology, clients=clients)

    assert set(_actions(first).values()) == {"create"}
    assert [c.kind for c in first.changes] == ["topic"] * 4 + ["subscription"] * 4
    for topic in topology.topics:
        publisher.get_topic(topic=f"projects/{topology.project}/topics/{topic}")
    echo = _subscription(subscriber, topology, topology.functions["echo"].subscription)
    assert echo.topic.endswith("/" + topology.functions["echo"].topic)
    assert echo.ack_deadline_seconds == 60
    assert (
        echo.push_config.push_endpoint == "https://europe-west1-relay-test.cloudfunctions.net/echo"
    )
    assert "x-relay-push-format" not in echo.push_config.attributes  # Google's push wrapper
    assert (
        echo.push_config.oidc_token.service_account_email
        == "push@relay-test.iam.gserviceaccount.com"
    )
    assert echo.push_config.oidc_token.audience == echo.push_config.push_endpoint
    assert echo.retry_policy.minimum_backoff.seconds == 2
    assert echo.retry_policy.maximum_backoff.seconds == 30
    assert echo.dead_letter_policy.dead_letter_topic.endswith("/" + topology.dead_letter_topics[0])
    assert echo.dead_letter_policy.max_delivery_attempts == 5
    results = publisher.get_topic(topic=f"projects/{topology.project}/topics/{names['results']}")
    assert results.message_retention_duration.total_seconds() == 600  # for the creation seek
    audit = _subscription(subscriber, topology, topology.completion_subscriptions[0].name)
    assert (audit.push_config.push_endpoint, audit.ack_deadline_seconds) == ("", 20)
    assert not audit.HasField("dead_letter_policy")
    # Every function's subscription has a bounded path, the dead-letter function's too ...
    for function in topology.functions.values():
        policy = _subscription(subscriber, topology, function.subscription).dead_letter_policy
        assert policy.dead_letter_topic.rpartition("/")[2] == function.dead_letter_topic
        assert policy.max_delivery_attempts == 5
    assert topology.functions["dead-letter"].dead_letter_topic == names["final"]
    # ... ending on the terminal topic, whose pull subscription keeps 7 days and never expires.
    terminal = _subscription(subscriber, topology, names["final"])
    assert terminal.topic == f"projects/{topology.project}/topics/{names['final']}"
    assert terminal.push_config.push_endpoint == ""
    assert terminal.message_retention_duration.ToTimedelta().total_seconds() == 7 * 86400
    assert terminal.HasField("expiration_policy")
    assert not terminal.expiration_policy.HasField("ttl")  # never expires
    assert not terminal.HasField("dead_letter_policy")

    second = provision(topology, clients=clients)

    assert set(_actions(second).values()) == {"unchanged"}
    assert second.pending == ()


def test_dry_run_reports_and_changes_nothing(
    make: Callable[..., Topology], clients: tuple[PublisherClient, SubscriberClient]
) -> None:
    topology = make()
    publisher, subscriber = clients

    planned = provision(topology, dry_run=True, clients=clients)

    assert set(_actions(planned).values()) == {"create"}
    for topic in topology.topics:
        with pytest.raises(exceptions.NotFound):
            publisher.get_topic(topic=f"projects/{topology.project}/topics/{topic}")

    provision(topology, clients=clients)
    changed = make(ack="90s", attempts=10)
    planned = provision(changed, dry_run=True, clients=clients)

    echo_sub = topology.functions["echo"].subscription
    assert _actions(planned)[echo_sub] == "update"
    update = next(c for c in planned.changes if c.short_name == echo_sub)
    assert update.details == (
        "ack_deadline_seconds: 60 -> 90",
        f"dead_letter_policy: {topology.dead_letter_topics[0]} after 5 attempts -> "
        f"{topology.dead_letter_topics[0]} after 10 attempts",
    )
    echo = _subscription(subscriber, topology, echo_sub)
    assert (echo.ack_deadline_seconds, echo.dead_letter_policy.max_delivery_attempts) == (60, 5)


def test_updates_what_differs_and_converts_push_to_pull(
    make: Callable[..., Topology], clients: tuple[PublisherClient, SubscriberClient]
) -> None:
    provision(make(), clients=clients)
    changed = make(url="http://127.0.0.1:9999/", ack="30s", dead_delivery="pull", dead_push="")
    _, subscriber = clients

    result = provision(changed, clients=clients)

    echo_name = changed.functions["echo"].subscription
    dead_name = changed.functions["dead-letter"].subscription
    assert _actions(result)[echo_name] == "update"
    assert _actions(result)[dead_name] == "update"
    cloud_url = "https://europe-west1-relay-test.cloudfunctions.net/echo"
    details = {change.short_name: change.details for change in result.changes}
    assert details[echo_name] == (
        "ack_deadline_seconds: 60 -> 30",
        f"push_config.push_endpoint: {cloud_url} -> http://127.0.0.1:9999/",
        f"push_config.oidc_token.audience: {cloud_url} -> http://127.0.0.1:9999/",
    )
    assert details[dead_name][0].startswith("push_config: push to https://")
    assert details[dead_name][0].endswith(" -> pull")
    echo = _subscription(subscriber, changed, echo_name)
    assert echo.push_config.push_endpoint == "http://127.0.0.1:9999/"
    assert echo.push_config.oidc_token.audience == "http://127.0.0.1:9999/"
    assert echo.ack_deadline_seconds == 30
    assert echo.dead_letter_policy.max_delivery_attempts == 5  # untouched fields stay
    dead = _subscription(subscriber, changed, dead_name)
    assert dead.push_config.push_endpoint == ""
    assert set(_actions(provision(changed, clients=clients)).values()) == {"unchanged"}


def test_a_subscription_on_another_topic_is_a_conflict_and_nothing_changes(
    make: Callable[..., Topology],
    clients: tuple[PublisherClient, SubscriberClient],
    unique: Callable[[str], str],
) -> None:
    topology = make()
    publisher, subscriber = clients
    elsewhere = f"projects/{topology.project}/topics/{unique('elsewhere')}"
    publisher.create_topic(name=elsewhere)
    echo_sub = topology.functions["echo"].subscription
    subscriber.create_subscription(
        name=f"projects/{topology.project}/subscriptions/{echo_sub}", topic=elsewhere
    )

    with pytest.raises(ProvisionError, match=f"{echo_sub}: it is attached to {elsewhere}"):
        provision(topology, clients=clients)

    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=f"projects/{topology.project}/topics/{topology.topics[0]}")


def test_cli_dry_run_then_apply_then_unchanged(
    project: str, names: dict[str, str], tmp_path: Path, broker: Any
) -> None:
    for name, entry_point in (
        ("echo", "def echo(request): ..."),
        ("dead_letter", "dead_letter = 1"),
    ):
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "main.py").write_text(entry_point + "\n")
    file = tmp_path / "relay.yaml"
    file.write_text(_render(project, names))
    runner = CliRunner()

    dry = runner.invoke(provision_command, ["--file", str(file), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing changed: would create 8" in dry.output
    # Without --project-number the service agent's bindings are printed, not set.
    assert "not set: 4 bindings of the Pub/Sub service agent" in dry.output
    assert "gcloud pubsub topics add-iam-policy-binding" in dry.output
    terminal = dry.output[dry.output.index(f"subscription {names['final']}") :]
    assert "message_retention_duration: 7d" in terminal
    assert "expiration_policy: never" in terminal
    dead_letter = dry.output[dry.output.index(f"subscription {names['dead_sub']}") :]
    assert f"dead_letter_policy: {names['final']} after 5 attempts" in dead_letter
    agent = (
        '--member="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"'
    )
    assert (
        f"gcloud pubsub topics add-iam-policy-binding {names['final']} --project={project} "
        f"{agent} --role=roles/pubsub.publisher"
    ) in dry.output.splitlines()
    assert (
        f"gcloud pubsub subscriptions add-iam-policy-binding {names['dead_sub']} "
        f"--project={project} {agent} --role=roles/pubsub.subscriber"
    ) in dry.output.splitlines()

    applied = runner.invoke(provision_command, ["--file", str(file)])
    assert applied.exit_code == 0, applied.output
    assert "created 8" in applied.output.splitlines()
    assert "added 3" in applied.output.splitlines()  # the identities' topic bindings

    again = runner.invoke(provision_command, ["--file", str(file)])
    assert again.exit_code == 0, again.output
    assert "unchanged 8" in again.output.splitlines()
    assert "present 3" in again.output.splitlines()

    elsewhere = runner.invoke(
        provision_command, ["--file", str(file), "--project", "relay-other", "--dry-run"]
    )
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "Pub/Sub resources in project relay-other" in elsewhere.output
    assert "would create 8" in elsewhere.output
    assert "--project=relay-other" in elsewhere.output


def test_cli_reports_every_topology_mistake(tmp_path: Path) -> None:
    file = tmp_path / "relay.yaml"
    file.write_text("version: 1\nproject: relay-test\ntopics: {requests: []}\n")

    result = CliRunner().invoke(provision_command, ["--file", str(file)])

    assert result.exit_code == 1
    assert "topics.requests: must name at least one topic" in result.output
    assert "topics.completion: is required" in result.output
    assert "functions: is required (at least one function)" in result.output


def test_a_completion_topic_without_retention_gets_it(
    make: Callable[..., Topology],
    clients: tuple[PublisherClient, SubscriberClient],
    names: dict[str, str],
) -> None:
    topology = make()
    publisher, _ = clients
    path = f"projects/{topology.project}/topics/{names['results']}"
    publisher.create_topic(name=path)  # made by hand, without retention

    planned = provision(topology, dry_run=True, clients=clients)

    change = next(c for c in planned.changes if c.name == path)
    assert (change.action, change.details) == (
        "update",
        ("message_retention_duration: none -> 10m",),
    )
    provision(topology, clients=clients)
    assert publisher.get_topic(topic=path).message_retention_duration.total_seconds() == 600
    assert _actions(provision(topology, clients=clients))[names["results"]] == "unchanged"


def test_a_terminal_subscription_made_by_hand_gets_the_retention_and_never_expires(
    make: Callable[..., Topology],
    clients: tuple[PublisherClient, SubscriberClient],
    names: dict[str, str],
) -> None:
    topology = make()
    publisher, subscriber = clients
    topic = f"projects/{topology.project}/topics/{names['final']}"
    path = f"projects/{topology.project}/subscriptions/{names['final']}"
    publisher.create_topic(name=topic)
    # As relay would make it, but with Google's default expiry (31 days idle) and 1 day retention.
    subscriber.create_subscription(
        request={
            "name": path,
            "topic": topic,
            "ack_deadline_seconds": 60,
            "retry_policy": {
                "minimum_backoff": {"seconds": 10},
                "maximum_backoff": {"seconds": 600},
            },
            "message_retention_duration": {"seconds": 86400},
        }
    )

    planned = provision(topology, dry_run=True, clients=clients)

    change = next(c for c in planned.changes if c.name == path)
    assert (change.action, change.details) == (
        "update",
        ("message_retention_duration: 1d -> 7d", "expiration_policy: after 31d idle -> never"),
    )
    provision(topology, clients=clients)
    terminal = _subscription(subscriber, topology, names["final"])
    assert terminal.message_retention_duration.ToTimedelta().total_seconds() == 7 * 86400
    assert terminal.HasField("expiration_policy")
    assert not terminal.expiration_policy.HasField("ttl")
    assert _actions(provision(topology, clients=clients))[names["final"]] == "unchanged"


def _pull(subscriber: SubscriberClient, subscription: str, timeout: float = 10) -> list[Any]:
    """What one pull returns, waiting up to `timeout` for at least one message."""
    deadline = time.monotonic() + timeout
    while True:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10, "return_immediately": True},
            timeout=10,
        )
        if response.received_messages or time.monotonic() >= deadline:
            return list(response.received_messages)
        time.sleep(0.05)


def test_a_request_the_dead_letter_function_keeps_failing_ends_on_the_terminal_subscription(
    make: Callable[..., Topology],
    clients: tuple[PublisherClient, SubscriberClient],
    names: dict[str, str],
) -> None:
    """The loop of issue 12: what the dead-letter function cannot answer is kept, not retried."""
    topology = make(
        dead_delivery="pull", dead_push="", dead_retry="{minimum_backoff: 0s, maximum_backoff: 0s}"
    )
    provision(topology, clients=clients)
    publisher, subscriber = clients
    project = topology.project
    source = f"projects/{project}/subscriptions/{names['dead_sub']}"
    terminal = f"projects/{project}/subscriptions/{names['final']}"
    publisher.publish(
        topic=f"projects/{project}/topics/{names['dead']}",
        messages=[{"data": b"dead-lettered request", "attributes": {"ce-id": "request-1"}}],
    )

    attempts = []
    for _ in range(5):  # the dead-letter function fails every delivery (here: a raw nack)
        got = _pull(subscriber, source)
        assert len(got) == 1, attempts
        attempts.append(got[0].delivery_attempt)
        subscriber.modify_ack_deadline(
            subscription=source, ack_ids=[got[0].ack_id], ack_deadline_seconds=0
        )

    assert attempts == [1, 2, 3, 4, 5]
    kept = _pull(subscriber, terminal)
    assert len(kept) == 1
    message = kept[0].message
    assert (message.data, message.attributes["ce-id"]) == (b"dead-lettered request", "request-1")
    assert message.attributes["CloudPubSubDeadLetterSourceSubscription"] == names["dead_sub"]
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert _pull(subscriber, source, timeout=2) == []  # no sixth attempt: nothing loops
    # An operator's look without acking leaves it there for the next look.
    subscriber.modify_ack_deadline(
        subscription=terminal, ack_ids=[kept[0].ack_id], ack_deadline_seconds=0
    )
    assert [m.message.message_id for m in _pull(subscriber, terminal)] == [message.message_id]
