"""`relay deploy` against `relay up`'s control plane, with the stock google-cloud-functions client:
the three example functions plus one on an Eventarc trigger, deployed once for the module, then
requests through the deployed archives, no-op and one-field redeploys, and what the control plane
refuses as Google does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api_core import exceptions
from google.cloud import functions_v2, pubsub_v1

from relay.deploy import (
    DeployError,
    PackageError,
    deploy,
    function_client,
)
from relay.protocol import RESULT_SUCCEEDED, new_request, to_binary
from relay.provision import admin_clients, configure_triggers, provision
from relay.topology import Topology, load_topology
from relay.up import CompletionMonitor, Stack, stack_up

REPO = Path(__file__).resolve().parents[2]
PROJECT = "relay-local"
LOCATION = f"projects/{PROJECT}/locations/europe-west1"
NAMES = ("echo", "csv-profile", "dead-letter", "echo-events")


def _document(base: Path) -> dict[str, Any]:
    """relay.yaml plus `echo-events`: echo's code on an Eventarc trigger of its own topic."""
    document = yaml.safe_load((REPO / "relay.yaml").read_text())
    document["topics"]["requests"].append("relay-echo-events")
    document["functions"]["echo-events"] = {
        "source": "functions/echo",
        "entry_point": "echo",
        "topic": "relay-echo-events",
        "delivery": "eventarc",
        "push_identity": "pubsub-push",
        "runtime_identity": "functions",
        "ack_deadline": "60s",
        "retry": {"minimum_backoff": "1s", "maximum_backoff": "60s"},
        "dead_letter_topic": "relay-dead-letter",
        "max_delivery_attempts": 5,
    }
    document["functions"]["csv-profile"]["environment"] = {
        "CSV_PROFILE_SOURCES": str(base / "data")
    }
    document["identities"]["pubsub-push"]["invokes"].append("echo-events")
    document["identities"]["airflow"]["publishes"].append("relay-echo-events")
    return document


def _write(base: Path, document: dict[str, Any], name: str = "relay.yaml") -> Topology:
    path = base / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_topology(path)


@dataclass
class World:
    base: Path
    topology: Topology
    stack: Stack
    client: Any
    first: Any
    """The first deploy's plan."""

    def operations(self) -> int:
        from google.longrunning import operations_pb2

        response = self.client.list_operations(operations_pb2.ListOperationsRequest(name=LOCATION))
        return len(response.operations)

    def get(self, name: str) -> Any:
        return self.client.get_function(request={"name": f"{LOCATION}/functions/{name}"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("deploy")
    shutil.copytree(REPO / "functions", base / "functions")
    (base / "data").mkdir()
    topology = _write(base, _document(base))
    with stack_up(topology, data_dir=base / ".relay", broker_port=0) as stack:
        client = function_client()
        plan, _ = deploy(topology, client=client)
        configure_triggers(topology, ["echo-events"])
        yield World(base, topology, stack, client, plan)
        client.transport.close()


def _round_trip(topic: str, data: dict[str, Any], monitor_name: str) -> Any:
    request = new_request(
        "dev.relay.example.echo",
        data,
        source="/tests/deploy",
        reply_to=f"projects/{PROJECT}/topics/relay-results",
    )
    message = to_binary(request)
    with CompletionMonitor(PROJECT, "relay-results", subscription=monitor_name) as monitor:
        publisher = pubsub_v1.PublisherClient()
        publisher.publish(
            f"projects/{PROJECT}/topics/{topic}", message.data, **message.attributes
        ).result(timeout=30)
        seen = monitor.wait_for(lambda observed: observed.correlation_id == request.id, timeout=90)
    assert seen.event is not None
    return seen, request


def test_the_first_deploy_creates_each_function_as_google_shows_it(world: World) -> None:
    assert [(c.desired.function_id, c.action) for c in world.first.changes] == [
        (name, "create") for name in NAMES
    ]
    listed = world.client.list_functions(request={"parent": f"projects/{PROJECT}/locations/-"})
    by_name = {function.name.rpartition("/")[2]: function for function in listed}
    assert set(NAMES) <= set(by_name)
    for name in NAMES:
        function = by_name[name]
        assert function.state == functions_v2.Function.State.ACTIVE
        # served at the URL relay up gave it (its push subscription's), from its own build
        assert function.service_config.uri == world.stack.functions[name].url
        assert function.url == function.service_config.uri
        assert function.build_config.build.startswith(f"{LOCATION}/builds/")
        assert function.service_config.revision.startswith(f"{name}-00001-")
        assert function.service_config.environment_variables["LOG_EXECUTION_ID"] == "true"
        assert function.environment == functions_v2.Environment.GEN_2
        assert world.get(name) == function
    assert not by_name["echo"].event_trigger.trigger
    trigger = by_name["echo-events"].event_trigger
    assert trigger.trigger.startswith(f"{LOCATION}/triggers/echo-events-")
    assert trigger.pubsub_topic == f"projects/{PROJECT}/topics/relay-echo-events"
    with pytest.raises(exceptions.NotFound):
        world.get("nobody")


def test_a_push_request_is_answered_by_the_deployed_archive(world: World) -> None:
    seen, request = _round_trip("relay-echo-requests", {"via": "push"}, "deploy-test-push")

    assert seen.event.type == RESULT_SUCCEEDED
    assert seen.event.data == {"via": "push"}
    revision_log = world.base / ".relay" / "cloud-functions" / "logs" / "functions" / "echo.log"
    assert request.id in revision_log.read_text()
    # the deployed revision runs the relay it was uploaded with, not this checkout's
    build = world.get("echo").build_config.build.rpartition("/")[2]
    site = world.base / ".relay" / "cloud-functions" / "functions" / "echo" / build / "site"
    assert (site / "relay" / "functions" / "__init__.py").is_file()
    source_log = (world.base / ".relay" / "logs" / "echo.log").read_text()
    assert request.id not in source_log


def test_an_eventarc_trigger_is_the_only_path_and_provision_agrees(world: World) -> None:
    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    attached = list(
        publisher.list_topic_subscriptions(
            request={"topic": f"projects/{PROJECT}/topics/relay-echo-events"}
        )
    )
    assert len(attached) == 1, attached  # Eventarc's, and no push subscription of relay's
    (name,) = attached
    assert name.startswith(f"projects/{PROJECT}/subscriptions/eventarc-europe-west1-echo-events-")
    subscription = subscriber.get_subscription(request={"subscription": name})
    assert subscription.push_config.push_endpoint == world.get("echo-events").service_config.uri
    assert subscription.dead_letter_policy.dead_letter_topic == (
        f"projects/{PROJECT}/topics/relay-dead-letter"
    )
    assert subscription.dead_letter_policy.max_delivery_attempts == 5
    assert subscription.retry_policy.maximum_backoff.total_seconds() == 60
    assert subscription.ack_deadline_seconds == 60

    plan = provision(world.stack.topology, dry_run=True)  # the local URLs
    assert plan.pending == (), [(c.short_name, c.action, c.details) for c in plan.pending]

    seen, _ = _round_trip("relay-echo-events", {"via": "eventarc"}, "deploy-test-eventarc")
    assert seen.event.type == RESULT_SUCCEEDED
    assert seen.event.data == {"via": "eventarc"}


def test_redeploys_send_only_what_changed(world: World) -> None:
    before = world.operations()

    plan, _ = deploy(world.topology, client=world.client)

    assert {change.action for change in plan.changes} == {"unchanged"}
    assert world.operations() == before  # no operation at all

    document = _document(world.base)
    document["functions"]["echo"]["environment"] = {"GREETING": "hello"}
    changed = _write(world.base, document, "changed.yaml")
    revision = world.get("echo").service_config.revision
    try:
        plan, _ = deploy(changed, client=world.client)
        actions = {change.desired.function_id: change.action for change in plan.changes}
        assert actions == {name: "update" if name == "echo" else "unchanged" for name in NAMES}
        (update,) = plan.pending
        assert update.mask == ("service_config.environment_variables",)
        assert world.operations() == before + 1
        echo = world.get("echo")
        assert echo.service_config.environment_variables["GREETING"] == "hello"
        assert echo.service_config.revision != revision
        assert echo.service_config.uri == world.stack.functions["echo"].url  # the URL stays

        (world.base / "functions" / "echo" / "main.py").write_text(
            (REPO / "functions" / "echo" / "main.py").read_text() + "\n# changed\n"
        )
        plan, _ = deploy(changed, ["echo"], client=world.client)
        assert plan.pending[0].mask == ("build_config.source", "labels")
        seen, _ = _round_trip("relay-echo-requests", {"after": "update"}, "deploy-test-update")
        assert seen.event.type == RESULT_SUCCEEDED
    finally:
        shutil.copy(REPO / "functions" / "echo" / "main.py", world.base / "functions" / "echo")
        deploy(world.topology, ["echo"], client=world.client)
    assert not world.get("echo").service_config.environment_variables.get("GREETING")


def _request(**function: Any) -> Any:
    """A CreateFunctionRequest, right but for what the caller changes."""
    body: dict[str, Any] = {
        "build_config": {
            "runtime": "python312",
            "entry_point": "echo",
            "source": {"storage_source": {"bucket": "b", "object_": "o.zip"}},
        },
        "service_config": {},
    }
    for path, value in function.items():
        section, _, key = path.partition("__")
        body.setdefault(section, {})[key] = value
    return functions_v2.CreateFunctionRequest(
        parent=LOCATION, function_id="probe", function=functions_v2.Function(body)
    )


def test_the_control_plane_refuses_what_google_refuses(world: World) -> None:
    client = world.client
    before = [function.name for function in client.list_functions(request={"parent": LOCATION})]
    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: client.get_function(request={"name": "echo"}), exceptions.InvalidArgument, "name"),
        (
            lambda: client.list_functions(request={"parent": "projects/relay-local"}),
            exceptions.InvalidArgument,
            "parent",
        ),
        (
            lambda: client.create_function(
                request=functions_v2.CreateFunctionRequest(
                    parent=LOCATION, function_id="Bad_Id", function=_request().function
                )
            ),
            exceptions.InvalidArgument,
            "function_id",
        ),
        (
            lambda: client.create_function(request=_request()),
            exceptions.InvalidArgument,
            "does not exist (upload the archive",
        ),
        (
            lambda: client.create_function(request=_request(build_config__runtime="python27")),
            exceptions.InvalidArgument,
            "build_config.runtime",
        ),
        (
            lambda: client.create_function(
                request=_request(service_config__max_instance_request_concurrency=4)
            ),
            exceptions.InvalidArgument,
            "needs at least 1 vCPU",
        ),
        (
            lambda: client.create_function(request=_request(service_config__timeout_seconds=3601)),
            exceptions.InvalidArgument,
            "timeout_seconds",
        ),
        (
            lambda: client.create_function(
                request=_request(service_config__environment_variables={"K_SERVICE": "x"})
            ),
            exceptions.InvalidArgument,
            "K_SERVICE: is reserved",
        ),
        (
            lambda: client.create_function(
                request=_request(
                    event_trigger__event_type="google.cloud.pubsub.topic.v1.messagePublished",
                    event_trigger__pubsub_topic="relay-echo-events",
                )
            ),
            exceptions.InvalidArgument,
            "pubsub_topic",
        ),
        (
            lambda: client.update_function(
                request={
                    "function": {"name": f"{LOCATION}/functions/echo"},
                    "update_mask": {"paths": ["state"]},
                }
            ),
            exceptions.InvalidArgument,
            "update_mask",
        ),
        (
            lambda: client.update_function(
                request={
                    "function": {
                        "name": f"{LOCATION}/functions/echo",
                        "event_trigger": {
                            "event_type": "google.cloud.pubsub.topic.v1.messagePublished",
                            "pubsub_topic": f"projects/{PROJECT}/topics/relay-echo-requests",
                        },
                    },
                    "update_mask": {"paths": ["event_trigger"]},
                }
            ),
            exceptions.InvalidArgument,
            "trigger type",
        ),
        (
            lambda: client.update_function(
                request={"function": {"name": f"{LOCATION}/functions/ghost"}}
            ),
            exceptions.NotFound,
            "ghost",
        ),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as caught:
            call()
        assert words in str(caught.value.message), caught.value.message
    after = [function.name for function in client.list_functions(request={"parent": LOCATION})]
    assert after == before

    target = client.generate_upload_url(request={"parent": LOCATION})
    wrong = urllib.request.Request(
        target.upload_url, data=b"PK", headers={"Content-Type": "text/plain"}, method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 403


def test_a_failed_build_shows_googles_error_and_its_log(world: World) -> None:
    broken = world.base / "functions" / "broken"
    shutil.copytree(REPO / "functions" / "echo", broken)
    requirements = broken / "requirements.txt"
    requirements.write_text(requirements.read_text() + "no-such-package-for-relay>=1\n")
    document = _document(world.base)
    document["functions"] = {"broken": {**document["functions"]["echo"], "source": str(broken)}}
    document["topics"]["requests"] = ["relay-echo-requests"]
    document["identities"]["pubsub-push"]["invokes"] = ["broken"]
    document["identities"]["airflow"]["publishes"] = ["relay-echo-requests"]
    document["identities"]["airflow"]["invokes"] = []
    topology = _write(world.base, document, "broken.yaml")

    with pytest.raises(DeployError) as failed:
        deploy(topology, client=world.client)

    message = str(failed.value)
    assert "Build failed" in message
    assert "no-such-package-for-relay is not installed" in message
    link = message.rpartition("build log: ")[2].strip()
    with urllib.request.urlopen(link, timeout=10) as response:
        log = response.read().decode()
    assert "build failed" in log
    assert "relay-0.1.0-py3-none-any.whl: installed" in log
    function = world.get("broken")
    assert function.state == functions_v2.Function.State.FAILED
    assert "Build failed" in function.state_messages[0].message
    world.client.delete_function(request={"name": function.name}).result(timeout=60)
    with pytest.raises(exceptions.NotFound):
        world.get("broken")


def test_deploy_refuses_before_sending_anything(world: World) -> None:
    before = world.operations()
    with pytest.raises(DeployError, match="not in the topology: nope"):
        deploy(world.topology, ["nope"], client=world.client)

    document = _document(world.base)
    document["functions"]["echo"]["delivery"] = "eventarc"
    switched = _write(world.base, document, "switched.yaml")
    with pytest.raises(DeployError, match="keeps its trigger type, and two delivery paths"):
        deploy(switched, client=world.client)

    (world.base / "functions" / "nowheel").mkdir(exist_ok=True)
    for file in ("main.py",):
        shutil.copy(REPO / "functions" / "echo" / file, world.base / "functions" / "nowheel")
    (world.base / "functions" / "nowheel" / "requirements.txt").write_text("functions-framework\n")
    document = _document(world.base)
    document["functions"]["echo"]["source"] = "functions/nowheel"
    unpackable = _write(world.base, document, "nowheel.yaml")
    with pytest.raises(PackageError, match="does not name"):
        deploy(unpackable, client=world.client)

    assert world.operations() == before
    assert not world.get("echo").event_trigger.trigger


def test_the_example_pipeline_passes_against_the_deployed_functions(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    for key in ("PUBSUB_EMULATOR_HOST", "CLOUD_FUNCTIONS_EMULATOR_HOST"):
        env.pop(key, None)
    argv = [sys.executable, "-m", "relay.demo", "--files", "6", "--data-dir", str(tmp_path)]

    result = subprocess.run(
        [*argv, "--deploy"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "demo passed" in output
    (run_dir,) = tmp_path.glob("run-*")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["summary"]["files"] == 6
    deployed = run_dir / "stack" / "cloud-functions" / "logs" / "functions" / "csv-profile.log"
    assert deployed.read_text().count('"succeeded"') >= 6
    from_source = (run_dir / "stack" / "logs" / "csv-profile.log").read_text()
    assert from_source.count('"succeeded"') == 0  # every request ran in the deployed archive


def test_relay_deploy_on_the_command_line_uses_the_emulator_variable(world: World) -> None:
    from click.testing import CliRunner

    from relay.deploy.cli import deploy as deploy_command

    before = world.operations()
    runner = CliRunner()
    file = str(world.base / "relay.yaml")

    dry = runner.invoke(
        deploy_command, ["--file", file, "--dry-run", "echo"], env={"COLUMNS": "300"}
    )
    unchanged = runner.invoke(deploy_command, ["--file", file], env={"COLUMNS": "300"})

    assert dry.exit_code == 0, dry.output
    assert f"relay up's control plane at {world.stack.control_plane.host}" in dry.output
    assert "= echo" in dry.output
    assert "dry run, nothing deployed" in dry.output
    assert unchanged.exit_code == 0, unchanged.output
    for name in NAMES:
        assert f"= {name}" in unchanged.output
    assert world.operations() == before
    document = _document(world.base)
    document["functions"]["echo"]["environment"] = {"GREETING": "dry"}
    _write(world.base, document, "dry.yaml")
    dry = runner.invoke(
        deploy_command,
        ["--file", str(world.base / "dry.yaml"), "--dry-run", "echo"],
        env={"COLUMNS": "300"},
    )
    assert dry.exit_code == 0, dry.output
    assert "~ echo" in dry.output
    assert '> UpdateFunction {"function": {' in dry.output
    # (a FieldMask's JSON form: the one path, camel-cased)
    assert '"update_mask": "serviceConfig.environmentVariables"}' in dry.output
    assert "GenerateUploadUrl" not in dry.output
    assert world.operations() == before
    bad = runner.invoke(deploy_command, ["--file", file, "ghost"])
    assert bad.exit_code != 0
    assert "not in the topology: ghost" in bad.output


def test_relay_up_provisioned_the_trigger_as_pending_and_no_push_subscription(
    world: World,
) -> None:
    pending = [change for change in world.stack.plan.changes if change.action == "pending"]

    assert [change.name for change in pending] == [
        f"projects/{PROJECT}/subscriptions/eventarc-europe-west1-echo-events-*"
    ]
    names = {change.short_name for change in world.stack.plan.changes}
    assert "echo-events-eventarc" not in names
    assert "echo-events-push" not in names


def test_a_trigger_beside_a_push_subscription_is_a_conflict(world: World) -> None:
    """What `gcloud functions deploy --trigger-topic` next to relay's push subscription makes:
    every request twice. provision refuses it, naming the subscription."""
    with admin_clients() as (_, subscriber):
        stray = f"projects/{PROJECT}/subscriptions/eventarc-europe-west1-echo-123456-sub-456"
        subscriber.create_subscription(
            request={"name": stray, "topic": f"projects/{PROJECT}/topics/relay-echo-requests"}
        )
        try:
            plan = provision(world.stack.topology, dry_run=True)
            (conflict,) = plan.conflicts
            assert conflict.name == stray
            assert "would get every request twice" in conflict.details[0]
        finally:
            subscriber.delete_subscription(request={"subscription": stray})


def test_the_iam_script_grants_the_trigger_subscription_by_lookup(world: World) -> None:
    from relay.provision import gcloud_script

    script = gcloud_script(world.topology)

    assert (
        'gcloud pubsub subscriptions add-iam-policy-binding "$(gcloud pubsub topics '
        "list-subscriptions relay-echo-events --project=relay-local --format='value(.)' | "
        'grep -m1 /eventarc-europe-west1-echo-events-)"'
    ) in script
