"""`relay deploy` onto `relay up --require-auth`: a deployed revision runs as its runtime identity.

echo and an Eventarc copy of it (echo-events) are deployed once for the module with the stock
google-cloud-functions client. Each revision then publishes its results as relay-functions, from
its own metadata server, over TLS, exactly like the functions relay up starts (one place for
that environment: relay.up._serving), and lets in only its invokers. Airflow's side is a process
of its identity (tests/_auth_client.py), with what `relay up` printed for it.

echo is deployed with RELAY_REPLY_TOPICS=projects/relay-local/topics/* so that it tries whatever
reply topic a request names: refusing a request topic is then up to the broker, as on Google.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _auth_client import Client
from _relay_up import RelayUp, id_token, post, relay_up

from relay.deploy import deploy, function_client
from relay.protocol import RESULT_SUCCEEDED, Event, from_message, new_request, to_binary
from relay.topology import load_topology

pytestmark = pytest.mark.timeout(400)

REPO = Path(__file__).resolve().parents[2]
PROJECT = "relay-local"
RESULTS = f"projects/{PROJECT}/topics/relay-results"
ECHO_REQUESTS = f"projects/{PROJECT}/topics/relay-echo-requests"
ECHO_EVENTS = f"projects/{PROJECT}/topics/relay-echo-events"
FUNCTIONS = "serviceAccount:relay-functions@relay-local.iam.gserviceaccount.com"
DEPLOYED = ("echo", "echo-events")


def _document() -> dict[str, Any]:
    """relay.yaml plus echo-events (echo's code on an Eventarc trigger of its own topic, which
    Airflow publishes to), echo allowed to try any reply topic."""
    document = yaml.safe_load((REPO / "relay.yaml").read_text())
    document["topics"]["requests"].append("relay-echo-events")
    document["functions"]["echo-events"] = {
        **document["functions"]["echo"],
        "topic": "relay-echo-events",
        "delivery": "eventarc",
    }
    document["functions"]["echo"]["environment"] = {
        "RELAY_REPLY_TOPICS": f"projects/{PROJECT}/topics/*"
    }
    document["identities"]["pubsub-push"]["invokes"].append("echo-events")
    document["identities"]["airflow"]["publishes"].append("relay-echo-events")
    return document


@dataclass
class World:
    base: Path
    up: RelayUp
    airflow: Client

    def revision_log(self, function: str) -> str:
        path = self.base / ".relay" / "cloud-functions" / "logs" / "functions" / f"{function}.log"
        return path.read_text(errors="replace")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("deploy-auth")
    shutil.copytree(REPO / "functions", base / "functions")
    file = base / "relay.yaml"
    file.write_text(yaml.safe_dump(_document(), sort_keys=False))
    with (
        relay_up(base, "--require-auth", file=file) as up,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("CLOUD_FUNCTIONS_EMULATOR_HOST", up.clients["CLOUD_FUNCTIONS_EMULATOR_HOST"])
        client = function_client()
        try:
            _, deployed = deploy(load_topology(file), DEPLOYED, client=client)
        finally:
            client.transport.close()
        assert [function.uri for function in deployed] == [up.urls[name] for name in DEPLOYED]
        airflow = Client(up.endpoint, up.environment("airflow"), base / "airflow.log")
        try:
            yield World(base, up, airflow)
        finally:
            airflow.close()


def _results(airflow: Client, subscription: str, wanted: set[str]) -> dict[str, Event]:
    """Pull (as Airflow) until results for every correlation id in `wanted` came, or 90 s."""
    found: dict[str, Event] = {}
    deadline = time.monotonic() + 90
    while set(found) != wanted and time.monotonic() < deadline:
        pulled = airflow.ok("subscriber", "pull", subscription=subscription, max_messages=10)
        for received in pulled.get("received_messages", []):
            message = received["message"]
            event = from_message(
                base64.b64decode(message.get("data", "")), message.get("attributes", {})
            )
            airflow.ok(
                "subscriber", "acknowledge", subscription=subscription, ack_ids=[received["ack_id"]]
            )
            found[str(event.correlationid)] = event
    return found


def test_deployed_revisions_answer_pushes_and_publish_as_their_identity(
    world: World, unique: Callable[[str], str]
) -> None:
    """A push subscription's and an Eventarc trigger's requests, answered by the deployed
    revisions (relay up's own echo never sees them), their results published to the completion
    topic, which only relay-functions may publish to (Airflow's own try is refused)."""
    airflow = world.airflow
    # Airflow's subscriptions live in its wait project (relay.yaml), as relay's waits create them
    wait_project = world.up.connection_extra["wait_project"]
    wait = f"projects/{wait_project}/subscriptions/{unique('wait')}"
    airflow.ok("subscriber", "create_subscription", name=wait, topic=RESULTS)
    requests = {}
    for topic in (ECHO_REQUESTS, ECHO_EVENTS):
        request = new_request(
            "dev.relay.example.echo", {"to": topic}, source="/tests/deploy", reply_to=RESULTS
        )
        message = to_binary(request)
        data = {"data": message.data.decode(), "attributes": dict(message.attributes)}
        airflow.ok("publisher", "publish", topic=topic, messages=[data])
        requests[request.id] = topic

    results = _results(airflow, wait, set(requests))

    assert {cid: (e.type, e.data) for cid, e in results.items()} == {
        cid: (RESULT_SUCCEEDED, {"to": topic}) for cid, topic in requests.items()
    }
    (by_push, by_trigger) = requests
    assert by_push in world.revision_log("echo")
    assert by_trigger in world.revision_log("echo-events")
    assert by_push not in world.up.log("echo")
    code, _ = airflow.refused("publisher", "publish", topic=RESULTS, messages=[{"data": "x"}])
    assert code == "PERMISSION_DENIED"
    airflow.ok("subscriber", "delete_subscription", subscription=wait)


def test_a_deployed_revision_cannot_publish_a_request(world: World) -> None:
    """Called directly by Airflow (its invoker) with a request whose reply topic is a request
    topic, the revision's publish, as relay-functions, is PERMISSION_DENIED by the broker."""
    echo = world.up.urls["echo"]
    request = new_request(
        "dev.relay.example.echo", {"to": "requests"}, source="/tests/deploy", reply_to=ECHO_REQUESTS
    )
    message = to_binary(request)
    headers = {
        ("Content-Type" if key == "content-type" else key): value
        for key, value in message.attributes.items()
    }

    status, answer = post(echo, id_token(world.up.metadata["airflow"], echo), message.data, headers)

    assert (status, answer["outcome"]) == (500, "retry"), answer
    assert answer["error"].startswith("PermissionDenied: "), answer
    assert f"{FUNCTIONS} lacks permission 'pubsub.topics.publish'" in answer["error"], answer
    assert f"on resource '{ECHO_REQUESTS}'" in answer["error"], answer
    assert request.id in world.revision_log("echo")


def test_a_deployed_revision_lets_in_only_its_invokers(world: World) -> None:
    echo = world.up.urls["echo"]
    status, answer = post(echo, None)
    assert (status, answer["outcome"]) == (401, "unauthorized"), answer
    status, answer = post(echo, id_token(world.up.metadata["functions"], echo))
    assert (status, answer["outcome"]) == (403, "forbidden"), answer
    status, answer = post(echo, id_token(world.up.metadata["airflow"], echo))
    assert (status, answer["outcome"]) == (400, "unanswerable"), answer
