"""`relay provision` sets relay.yaml's topic and subscription IAM bindings through a real `relay
broker`'s IAM methods: read-modify-write with the etag, nothing of anyone else's lost."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from google.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from relay.provision import ProvisionError, project_grants, provision
from relay.provision._policies import ATTEMPTS
from relay.provision.cli import provision as provision_command
from relay.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[2]
NUMBER = 424242
AGENT = f"serviceAccount:service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"


def _accounts(project: str) -> tuple[str, str]:
    airflow = f"serviceAccount:relay-airflow@{project}.iam.gserviceaccount.com"
    functions = f"serviceAccount:relay-functions@{project}.iam.gserviceaccount.com"
    return airflow, functions


def _expected(project: str) -> dict[str, dict[str, list[str]]]:
    """What relay.yaml's policies hold after provisioning: path -> role -> members."""
    airflow, functions = _accounts(project)
    topics, subscriptions = f"projects/{project}/topics/", f"projects/{project}/subscriptions/"
    return {
        topics + "relay-echo-requests": {"roles/pubsub.publisher": [airflow]},
        topics + "relay-csv-profile-requests": {"roles/pubsub.publisher": [airflow]},
        topics + "relay-results": {
            "roles/pubsub.subscriber": [airflow],
            "roles/pubsub.publisher": [functions],
        },
        topics + "relay-dead-letter": {"roles/pubsub.publisher": [AGENT]},
        topics + "relay-undeliverable": {"roles/pubsub.publisher": [AGENT]},
        subscriptions + "echo-push": {"roles/pubsub.subscriber": [AGENT]},
        subscriptions + "csv-profile-push": {"roles/pubsub.subscriber": [AGENT]},
        subscriptions + "dead-letter-push": {"roles/pubsub.subscriber": [AGENT]},
    }


def _clients(host: str, interceptor: Any = None) -> tuple[PublisherClient, SubscriberClient]:
    """The stock GAPIC admin clients on an insecure channel to `host` (through `interceptor`)."""

    def channel() -> grpc.Channel:
        plain = grpc.insecure_channel(host)
        return grpc.intercept_channel(plain, interceptor) if interceptor else plain

    return (
        PublisherClient(transport=PublisherGrpcTransport(channel=channel())),
        SubscriberClient(transport=SubscriberGrpcTransport(channel=channel())),
    )


@pytest.fixture
def clients(broker: Any) -> Iterator[tuple[PublisherClient, SubscriberClient]]:
    pair = _clients(broker.host)
    yield pair
    for client in pair:
        client.transport.close()


@pytest.fixture
def topology(unique: Callable[[str], str]) -> Topology:
    """relay.yaml itself, in a project of this test's own."""
    return load_topology(REPO / "relay.yaml", project=unique("iam"))


def _policy(clients: tuple[PublisherClient, SubscriberClient], path: str) -> Any:
    publisher, subscriber = clients
    client: Any = publisher if "/topics/" in path else subscriber
    return client.get_iam_policy(request={"resource": path})


def _roles(policy: Any) -> dict[str, list[str]]:
    return {binding.role: list(binding.members) for binding in policy.bindings}


def _calls(broker: Any, method: str) -> int:
    return int(broker.stats()["rpcs"].get(method, 0))


def test_bindings_are_applied_and_visible_with_get_iam_policy(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient], broker: Any
) -> None:
    sets = _calls(broker, "SetIamPolicy")

    plan = provision(topology, clients=clients, project_number=NUMBER)

    expected = _expected(topology.project)
    assert {path: _roles(_policy(clients, path)) for path in expected} == expected
    assert {(c.resource, c.binding.role, c.binding.member) for c in plan.iam} == {
        (path, role, member)
        for path, roles in expected.items()
        for role, members in roles.items()
        for member in members
    }
    assert {c.action for c in plan.iam} == {"add"}
    assert _calls(broker, "SetIamPolicy") - sets == len(expected)  # one write per resource
    # Nothing for the push identity in Pub/Sub; nothing on the task subscriptions' project.
    push = f"serviceAccount:relay-push@{topology.project}.iam.gserviceaccount.com"
    assert all(c.binding.member != push for c in plan.iam)


def test_a_second_run_changes_nothing(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient], broker: Any
) -> None:
    provision(topology, clients=clients, project_number=NUMBER)
    etags = {path: _policy(clients, path).etag for path in _expected(topology.project)}
    sets = _calls(broker, "SetIamPolicy")

    again = provision(topology, clients=clients, project_number=NUMBER)

    assert {c.action for c in again.iam} == {"present"}
    assert len(again.iam) == 9
    assert _calls(broker, "SetIamPolicy") == sets
    assert {path: _policy(clients, path).etag for path in etags} == etags


def test_someone_elses_bindings_on_the_same_resource_are_kept(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient]
) -> None:
    provision(topology, clients=clients, iam=False)
    publisher, _ = clients
    path = f"projects/{topology.project}/topics/relay-echo-requests"
    publisher.set_iam_policy(
        request={
            "resource": path,
            "policy": {
                "bindings": [
                    {"role": "roles/pubsub.publisher", "members": ["user:ops@example.com"]},
                    {"role": "roles/pubsub.viewer", "members": ["group:audit@example.com"]},
                ]
            },
        }
    )

    provision(topology, clients=clients, project_number=NUMBER)

    airflow, _ = _accounts(topology.project)
    assert _roles(_policy(clients, path)) == {
        # relay's member joins the existing binding of the role; the other role is untouched.
        "roles/pubsub.publisher": ["user:ops@example.com", airflow],
        "roles/pubsub.viewer": ["group:audit@example.com"],
    }


class _Interloper(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """After the first GetIamPolicy of `resource` on this channel, someone else changes that
    policy (through a client of their own): the policy relay read is stale when it writes."""

    def __init__(self, resource: str, change: Callable[[], None]) -> None:
        self.resource = resource
        self.change = change
        self.changed = False

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        response = continuation(details, request)
        if (
            not self.changed
            and details.method.endswith("/GetIamPolicy")
            and request.resource == self.resource
        ):
            response.result()
            self.changed = True
            self.change()
        return response


def test_an_etag_conflict_is_retried_and_both_changes_stay(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient], broker: Any
) -> None:
    provision(topology, clients=clients, iam=False)
    publisher, _ = clients
    path = f"projects/{topology.project}/topics/relay-results"

    def someone_else() -> None:
        policy = publisher.get_iam_policy(request={"resource": path})
        policy.bindings.add(role="roles/pubsub.viewer", members=["user:ops@example.com"])
        publisher.set_iam_policy(request={"resource": path, "policy": policy})

    interloper = _Interloper(path, someone_else)
    raced = _clients(broker.host, interloper)
    sets = _calls(broker, "SetIamPolicy")
    try:
        plan = provision(topology, clients=raced, project_number=NUMBER)
    finally:
        for client in raced:
            client.transport.close()

    assert interloper.changed
    airflow, functions = _accounts(topology.project)
    assert _roles(_policy(clients, path)) == {
        "roles/pubsub.viewer": ["user:ops@example.com"],
        "roles/pubsub.subscriber": [airflow],
        "roles/pubsub.publisher": [functions],
    }
    assert {c.action for c in plan.iam if c.resource == path} == {"add"}
    # One write per resource, the other's write, and relay's write refused for its stale etag.
    assert _calls(broker, "SetIamPolicy") - sets == len(_expected(topology.project)) + 2


def test_conflicts_that_never_stop_end_in_a_clear_error(
    topology: Topology, start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    own = start_broker(tmp_path / "data", args=["--control"])
    pair = _clients(own.host)
    try:
        provision(topology, clients=pair, iam=False)
        own.control(
            {
                "fail": {
                    "method": "SetIamPolicy",
                    "code": "ABORTED",
                    "count": ATTEMPTS,
                    "message": "There were concurrent policy changes.",
                }
            }
        )

        with pytest.raises(ProvisionError) as raised:
            provision(topology, clients=pair, project_number=NUMBER)

        first = f"projects/{topology.project}/topics/relay-echo-requests"
        assert str(raised.value) == (
            f"the IAM policy of {first} kept changing while relay provision updated it: "
            f"{ATTEMPTS} writes in a row were refused as concurrent changes (ABORTED); nothing "
            "was added to it, run relay provision again"
        )
        assert own.stats()["rpcs"]["SetIamPolicy"] == ATTEMPTS
        assert _roles(_policy(pair, first)) == {}
    finally:
        for client in pair:
            client.transport.close()


def test_dry_run_reads_policies_and_sends_no_set_iam_policy(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient], broker: Any
) -> None:
    sets, gets = _calls(broker, "SetIamPolicy"), _calls(broker, "GetIamPolicy")

    fresh = provision(topology, clients=clients, dry_run=True, project_number=NUMBER)

    assert [c.action for c in fresh.iam] == ["add"] * 9  # nothing exists yet
    provision(topology, clients=clients, iam=False)
    gets = _calls(broker, "GetIamPolicy")

    existing = provision(topology, clients=clients, dry_run=True, project_number=NUMBER)

    assert [c.action for c in existing.iam] == ["add"] * 9
    assert _calls(broker, "GetIamPolicy") - gets == 8  # read, one per resource ...
    assert _calls(broker, "SetIamPolicy") == sets  # ... never written
    assert all(_roles(_policy(clients, path)) == {} for path in _expected(topology.project))


def test_without_the_project_number_the_service_agent_is_left_out(
    topology: Topology, clients: tuple[PublisherClient, SubscriberClient]
) -> None:
    plan = provision(topology, clients=clients)

    project = topology.project
    assert {c.resource.rpartition("/")[2] for c in plan.iam} == {
        "relay-echo-requests",
        "relay-csv-profile-requests",
        "relay-results",
    }
    assert _roles(_policy(clients, f"projects/{project}/topics/relay-dead-letter")) == {}
    assert _roles(_policy(clients, f"projects/{project}/subscriptions/echo-push")) == {}


def test_cli_shows_each_binding_it_would_add_then_sets_them_and_writes_the_grants(
    topology: Topology,
    clients: tuple[PublisherClient, SubscriberClient],
    broker: Any,
    tmp_path: Path,
) -> None:
    project = topology.project
    grants = tmp_path / "grants.json"
    args = ["--file", str(REPO / "relay.yaml"), "--project", project, "--project-number"]
    args += [str(NUMBER), "--provisioner", "user:ops@example.com", "--grants-file", str(grants)]
    runner = CliRunner()
    sets = _calls(broker, "SetIamPolicy")

    dry = runner.invoke(provision_command, [*args, "--dry-run"])

    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    airflow, functions = _accounts(project)
    would = [line.split() for line in lines if line.endswith("would add")]
    assert [(w[1], w[2], w[3], w[4]) for w in would] == [
        ("topic", "relay-echo-requests", "roles/pubsub.publisher", airflow),
        ("topic", "relay-csv-profile-requests", "roles/pubsub.publisher", airflow),
        ("topic", "relay-results", "roles/pubsub.subscriber", airflow),
        ("topic", "relay-results", "roles/pubsub.publisher", functions),
        ("topic", "relay-dead-letter", "roles/pubsub.publisher", AGENT),
        ("subscription", "echo-push", "roles/pubsub.subscriber", AGENT),
        ("subscription", "csv-profile-push", "roles/pubsub.subscriber", AGENT),
        ("topic", "relay-undeliverable", "roles/pubsub.publisher", AGENT),
        ("subscription", "dead-letter-push", "roles/pubsub.subscriber", AGENT),
    ]
    assert "dry run, nothing changed: would add 9" in lines
    # Each is followed by its reason.
    index = lines.index(next(line for line in lines if line.endswith("would add")))
    assert lines[index + 1].strip() == (
        "airflow publishes to relay-echo-requests (Publish needs pubsub.topics.publish on it)"
    )
    assert _calls(broker, "SetIamPolicy") == sets
    assert json.loads(grants.read_text()) == project_grants(
        topology, project_number=NUMBER, provisioner="user:ops@example.com"
    )

    applied = runner.invoke(provision_command, args)

    assert applied.exit_code == 0, applied.output
    assert "added 9" in applied.output.splitlines()
    expected = _expected(project)
    assert {path: _roles(_policy(clients, path)) for path in expected} == expected
    script = applied.output[applied.output.index("# Least-privilege IAM") :]
    assert "gcloud pubsub" not in script  # all set through Pub/Sub, none left to print

    again = runner.invoke(provision_command, args)

    assert again.exit_code == 0, again.output
    assert "present 9" in again.output.splitlines()
    assert _calls(broker, "SetIamPolicy") == sets + len(expected)


def test_cli_no_iam_touches_no_policy_and_prints_every_binding(
    topology: Topology, broker: Any
) -> None:
    gets, sets = _calls(broker, "GetIamPolicy"), _calls(broker, "SetIamPolicy")
    args = ["--file", str(REPO / "relay.yaml"), "--project", topology.project, "--no-iam"]

    result = CliRunner().invoke(provision_command, args)

    assert result.exit_code == 0, result.output
    assert (_calls(broker, "GetIamPolicy"), _calls(broker, "SetIamPolicy")) == (gets, sets)
    assert "IAM bindings set through Pub/Sub" not in result.output
    airflow, _ = _accounts(topology.project)
    assert (
        "gcloud pubsub topics add-iam-policy-binding relay-echo-requests "
        f"--project={topology.project} --member={airflow} --role=roles/pubsub.publisher"
    ) in result.output.splitlines()


def test_cli_refuses_a_provisioner_that_is_not_a_member(tmp_path: Path) -> None:
    args = ["--file", str(REPO / "relay.yaml"), "--provisioner", "ops@example.com", "--dry-run"]

    result = CliRunner().invoke(provision_command, args)

    assert result.exit_code == 2
    assert "'ops@example.com' must be KIND:VALUE with KIND one of user, serviceAccount" in (
        result.output
    )
