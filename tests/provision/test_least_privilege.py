"""Least privilege applied and enforced: `relay provision --api-endpoint` as its own identity
against `relay broker --require-auth`, and every grant provisioning applies or writes for
relay.yaml proven needed.

Each grant gets one test: with it, the call it exists for succeeds as the identity it is for;
without exactly that grant (every other one in place), the same call is PERMISSION_DENIED naming
the principal, the permission and the resource. The grants are read from what relay produces
(`iam_bindings`, `project_grants`), so a new one is a new case; a grant of a kind no call is
known for fails `test_every_grant_relay_produces_is_proven_or_named_here`.

Every identity is a process of its own (tests/_auth_client.py: the stock clients, google-auth's
Compute Engine credentials from its metadata server); `relay provision` runs as the provisioner
the same way, with only GCE_METADATA_HOST, the CA and --api-endpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _auth_client import Client, auth_broker_fields, client_environment

from relay.provision import iam_bindings, project_grants, service_agent, topic_path
from relay.provision._iam import PROVISIONER_ROLE, WAITER_PERMISSIONS, settable, waiter_role
from relay.provision._policies import resource_path
from relay.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[2]
PROJECT = "relay-local"
PROVISIONER = f"relay-provisioner@{PROJECT}.iam.gserviceaccount.com"
PROVISIONER_MEMBER = f"serviceAccount:{PROVISIONER}"
NUMBER = 424242
AGENT = service_agent(NUMBER)


def _topology_file(root: Path) -> Path:
    """relay.yaml with each function's URL on a closed local port (pushes go nowhere) and its
    source folder absolute: the file `relay provision` runs on."""
    document = yaml.safe_load((REPO / "relay.yaml").read_text())
    for name, function in document["functions"].items():
        function["url"] = f"http://127.0.0.1:9/{name}"
        function["source"] = str(REPO / function["source"])
    path = root / "relay.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


TOPOLOGY: Topology = load_topology(REPO / "relay.yaml")


@dataclass(frozen=True)
class Grant:
    """One member's role on one resource, as relay applies it (`applied`: through SetIamPolicy)
    or writes it (the --grants file)."""

    kind: str
    resource: str
    """Full name: projects/P/topics/T, projects/P, projects/P/serviceAccounts/EMAIL."""
    role: str
    member: str
    applied: bool

    @property
    def id(self) -> str:
        who = self.member.partition(":")[2].partition("@")[0]
        where = self.resource.rpartition("/")[2].partition("@")[0]
        return f"{self.role.rpartition('/')[2]}:{who}:{where}"

    def __str__(self) -> str:
        return f"{self.role} for {self.member} on {self.resource}"


def _produced(topology: Topology) -> list[Grant]:
    """Every grant relay's provisioning applies (topic and subscription bindings) or writes (the
    grants file), with the service agent's (a project number) and the provisioner's."""
    bindings = iam_bindings(topology, project_number=NUMBER, provisioner=PROVISIONER_MEMBER)
    grants = [
        Grant(b.kind, resource_path(topology.project, b), b.role, b.member, applied=True)
        for b in bindings
        if settable(b)
    ]
    body = project_grants(topology, project_number=NUMBER, provisioner=PROVISIONER_MEMBER)
    for entry in body["bindings"]:
        kind = "project" if entry["resource"].count("/") == 1 else "service_account"
        grants.extend(
            Grant(kind, entry["resource"], entry["role"], member, applied=False)
            for member in entry["members"]
        )
    return grants


# The Pub/Sub service agent's grants (dead-letter topics, the subscriptions it acks dead-lettered
# messages on, Token Creator on the push accounts) are for Google's own deliveries: the broker
# forwards dead letters and signs push tokens itself, as no caller (docs/broker.md), so no call of
# a local identity needs them and none can be refused for their lack.
SERVICE_AGENTS = [grant for grant in _produced(TOPOLOGY) if grant.member == AGENT]
PROVEN = [grant for grant in _produced(TOPOLOGY) if grant.member != AGENT]


def _email(member: str) -> str:
    kind, _, email = member.partition(":")
    assert kind == "serviceAccount", member
    return email


def _without(body: dict[str, Any], grant: Grant) -> dict[str, Any]:
    """The grants file body without exactly `grant` (its member, in its binding)."""
    bindings = []
    for entry in body["bindings"]:
        members = list(entry["members"])
        if (entry["resource"], entry["role"]) == (grant.resource, grant.role):
            members.remove(grant.member)
        if members:
            bindings.append({**entry, "members": members})
    return {**body, "bindings": bindings}


@dataclass
class Outcome:
    """How a call ended: ok, or the status and the message; for a `relay provision` run, its
    exit code and its output (stdout, then stderr)."""

    ok: bool
    code: str = ""
    message: str = ""


@dataclass
class Stack:
    """A --require-auth broker for relay.yaml's identities and the provisioner, and clients."""

    process: Any
    ca: Path
    metadata: dict[str, str]
    root: Path
    topology_file: Path
    provisioned: Outcome = field(default_factory=lambda: Outcome(False, "", "not provisioned"))
    clients: dict[str, Client] = field(default_factory=dict)

    def client(self, email: str) -> Client:
        if email not in self.clients:
            environment = client_environment(self.metadata[email], self.ca)
            log = self.root / f"{email}.log"
            self.clients[email] = Client(self.process.host, environment, log)
        return self.clients[email]

    def provision(self, *args: str, env: dict[str, str] | None = None) -> Outcome:
        """`relay provision --api-endpoint` as the provisioner, in a process of its own."""
        argv = [sys.executable, "-c", "from relay.cli import main; main()", "provision"]
        argv += ["--file", str(self.topology_file), "--api-endpoint", self.process.host, *args]
        environment = env or client_environment(self.metadata[PROVISIONER], self.ca)
        done = subprocess.run(
            argv,
            env={**environment, "COLUMNS": "300"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        (self.root / "provision.log").write_text(done.stdout + done.stderr)
        return Outcome(done.returncode == 0, str(done.returncode), done.stdout + done.stderr)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def _accounts() -> list[str]:
    emails = [i.service_account for i in TOPOLOGY.identities.values() if i.service_account]
    return [*emails, PROVISIONER]


def _start(
    start: Callable[..., Any], root: Path, grants: dict[str, Any], *, provision: bool = True
) -> Stack:
    """A broker with `grants` as its --grants file; with `provision`, provisioned by the
    provisioner (its outcome in `provisioned`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "grants.json").write_text(json.dumps(grants))
    identities = [arg for email in _accounts() for arg in ("--identity", email)]
    process = start(
        root / "data", args=["--require-auth", "--grants", str(root / "grants.json"), *identities]
    )
    ca, metadata = auth_broker_fields(process.log_text())
    stack = Stack(process, ca, metadata, root, _topology_file(root))
    if provision:
        stack.provisioned = stack.provision()
    return stack


def _all_grants() -> dict[str, Any]:
    return project_grants(TOPOLOGY, provisioner=PROVISIONER_MEMBER)


@pytest.fixture(scope="module")
def full(
    start_module_broker: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Every grant in place, provisioned from scratch by the provisioner."""
    stack = _start(start_module_broker, tmp_path_factory.mktemp("full"), _all_grants())
    yield stack
    stack.close()


# -- relay provision --api-endpoint --------------------------------------------------------------


def test_provision_as_the_provisioner_over_tls_sets_every_binding(full: Stack) -> None:
    assert full.provisioned.ok, full.provisioned.message
    output = full.provisioned.message.splitlines()
    assert output[0].endswith(
        f"into the Pub/Sub API at {full.process.host} (TLS, Application Default Credentials)"
    ), output[0]
    assert any(line.startswith("created ") for line in output), output
    applied = [grant for grant in PROVEN if grant.applied]
    assert f"added {len(applied)}" in output, output
    # What the provisioner set is what IAM policies now hold (read as the provisioner).
    client = full.client(PROVISIONER)
    for grant in applied:
        kind = "publisher" if grant.kind == "topic" else "subscriber"
        policy = client.ok(kind, "get_iam_policy", resource=grant.resource)
        members = {
            member
            for binding in policy.get("bindings", [])
            if binding["role"] == grant.role
            for member in binding["members"]
        }
        assert grant.member in members, (grant, policy)

    again = full.provision()

    assert again.ok, again.message
    assert f"present {len(applied)}" in again.message.splitlines(), again.message


def test_provision_refuses_an_api_endpoint_beside_pubsub_emulator_host(full: Stack) -> None:
    env = {**client_environment(full.metadata[PROVISIONER], full.ca)}
    env["PUBSUB_EMULATOR_HOST"] = "127.0.0.1:1"

    refused = full.provision("--dry-run", env=env)

    assert not refused.ok
    assert refused.message.strip().splitlines()[-1] == (
        f"Error: an API endpoint ({full.process.host}) and PUBSUB_EMULATOR_HOST (127.0.0.1:1) "
        "are both set; the client libraries would take PUBSUB_EMULATOR_HOST (no TLS, "
        "anonymous): unset one"
    )


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "https://127.0.0.1:8085", "host:0", ":80"])
def test_provision_refuses_an_api_endpoint_that_is_not_host_port(endpoint: str) -> None:
    from click.testing import CliRunner

    from relay.provision.cli import provision

    result = CliRunner().invoke(provision, ["--api-endpoint", endpoint, "--dry-run"])

    assert result.exit_code == 2
    assert f"'{endpoint}' must be HOST:PORT" in result.output


# -- each grant, needed ---------------------------------------------------------------------------


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Call:
    """The call a grant exists for: who makes it, what it is, and what its refusal names."""

    who: str
    """The caller's email."""
    action: str
    """publish | attach | pull | wait | provision."""
    target: str
    permission: str
    resource: str


def _call_for(grant: Grant) -> Call:
    """The call `grant` exists for, as the identity it is for (AssertionError for a grant of a
    kind no call is known for: add it here)."""
    who = _email(grant.member)
    identity = next((i for i in TOPOLOGY.identities.values() if i.member == grant.member), None)
    if grant.kind == "topic" and grant.role == "roles/pubsub.publisher":
        return Call(who, "publish", grant.resource, "pubsub.topics.publish", grant.resource)
    if grant.kind == "topic" and grant.role == "roles/pubsub.subscriber":
        assert identity is not None, grant
        return Call(
            who, "attach", grant.resource, "pubsub.topics.attachSubscription", grant.resource
        )
    if grant.kind == "subscription" and grant.role == "roles/pubsub.subscriber":
        return Call(who, "pull", grant.resource, "pubsub.subscriptions.consume", grant.resource)
    if grant.kind == "project" and grant.role == waiter_role(grant.resource.partition("/")[2]):
        assert identity is not None, grant
        topic = topic_path(TOPOLOGY.project, identity.waits_on[0])
        return Call(who, "wait", topic, "pubsub.subscriptions.create", grant.resource)
    if grant.kind == "project" and grant.role == PROVISIONER_ROLE:
        first = topic_path(TOPOLOGY.project, TOPOLOGY.topics[0])
        return Call(who, "provision", "", "pubsub.topics.get", first)
    if grant.kind == "service_account" and grant.role == "roles/iam.serviceAccountUser":
        # the resource as the broker names it in its refusal: relay writes the same name
        return Call(who, "provision", "", "iam.serviceAccounts.actAs", grant.resource)
    raise AssertionError(f"no call is known that {grant} exists for: add one to _call_for")


def _wait_project(email: str) -> str:
    identity = next(i for i in TOPOLOGY.identities.values() if i.service_account == email)
    return identity.wait_project or TOPOLOGY.project


def _answer(answer: dict[str, Any]) -> Outcome:
    return Outcome(bool(answer["ok"]), answer.get("code", ""), answer.get("message", ""))


def _wait_cycle(client: Client, project: str, topic: str) -> Outcome:
    """What a relay wait does in its wait project: create a task subscription on the completion
    topic, Seek it back (pubsub.subscriptions.consume, as its pulls and acks), delete it; the
    first refusal, or ok."""
    name = f"projects/{project}/subscriptions/{_unique('wait')}"
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("subscriber", "create_subscription", {"name": name, "topic": topic}),
        ("subscriber", "seek", {"subscription": name, "time": {"seconds": int(time.time()) - 5}}),
        ("subscriber", "delete_subscription", {"subscription": name}),
    ]
    for kind, method, request in steps:
        outcome = _answer(client.call(kind, method, **request))
        if not outcome.ok:
            return outcome
    return Outcome(True)


def _perform(stack: Stack, call: Call) -> Outcome:
    if call.action == "provision":
        return stack.provision()
    client = stack.client(call.who)
    if call.action == "publish":
        return _answer(
            client.call("publisher", "publish", topic=call.target, messages=[{"data": "x"}])
        )
    if call.action == "pull":
        pull = {"subscription": call.target, "max_messages": 1, "return_immediately": True}
        return _answer(client.call("subscriber", "pull", **pull))
    # attach, wait: a task subscription in the identity's wait project, on the topic
    return _wait_cycle(client, _wait_project(call.who), call.target)


def _assert_denied(outcome: Outcome, call: Call) -> None:
    """PERMISSION_DENIED naming the principal, the permission and the resource, and only it;
    from `relay provision`, on one line and without a traceback."""
    named = f"permission '{call.permission}' on resource '{call.resource}'"
    if call.action == "provision":
        assert outcome.code == "1", outcome
        assert "Traceback" not in outcome.message, outcome.message
        error = [line for line in outcome.message.splitlines() if line.startswith("Error:")]
        assert len(error) == 1, outcome.message
        assert outcome.message.rstrip().endswith(error[0]), outcome.message  # the last line
        message = error[0]
        assert "PERMISSION_DENIED: User not authorized to perform this action" in message
    else:
        assert outcome.code == "PERMISSION_DENIED", outcome
        message = outcome.message
    assert f"serviceAccount:{call.who} lacks {named}" in message, message
    assert message.count("permission '") == 1, message


def _policy_change(stack: Stack, grant: Grant, *, add: bool) -> None:
    """Take `grant`'s member out of (or put it back into) its role in the resource's IAM
    policy, read-modify-write as the provisioner."""
    client = stack.client(PROVISIONER)
    kind = "publisher" if grant.kind == "topic" else "subscriber"
    policy = client.ok(kind, "get_iam_policy", resource=grant.resource)
    bindings = [b for b in policy.get("bindings", []) if b["role"] != grant.role]
    members = [
        member
        for b in policy.get("bindings", [])
        if b["role"] == grant.role
        for member in b["members"]
        if member != grant.member
    ]
    if add:
        members.append(grant.member)
    if members:
        bindings.append({"role": grant.role, "members": members})
    client.ok(
        kind,
        "set_iam_policy",
        resource=grant.resource,
        policy={"bindings": bindings, "etag": policy.get("etag", "")},
    )


@pytest.mark.parametrize("grant", PROVEN, ids=[grant.id for grant in PROVEN])
def test_each_grant_is_needed_for_the_call_it_exists_for(
    grant: Grant, full: Stack, start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    call = _call_for(grant)
    assert full.provisioned.ok, full.provisioned.message
    if call.action != "provision":  # (provisioning from scratch with it: the `full` fixture)
        with_it = _perform(full, call)
        assert with_it.ok, (grant, with_it)

    if grant.applied:
        _policy_change(full, grant, add=False)
        try:
            _assert_denied(_perform(full, call), call)
        finally:
            _policy_change(full, grant, add=True)
        assert _perform(full, call).ok, grant  # and back
        return
    stack = _start(
        start_broker,
        tmp_path,
        _without(_all_grants(), grant),
        provision=call.action != "provision",
    )
    try:
        assert call.action == "provision" or stack.provisioned.ok, stack.provisioned.message
        _assert_denied(_perform(stack, call), call)
    finally:
        stack.close()


@pytest.mark.parametrize("permission", WAITER_PERMISSIONS)
def test_each_permission_of_the_waiter_role_is_needed(
    permission: str, full: Stack, start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    """The custom role holds nothing a wait can do without: drop one permission and the wait
    fails at the call that needs it."""
    airflow = next(i for i in TOPOLOGY.identities.values() if i.waits_on)
    assert airflow.service_account is not None
    assert airflow.wait_project is not None
    topic = topic_path(TOPOLOGY.project, airflow.waits_on[0])
    assert _wait_cycle(full.client(airflow.service_account), airflow.wait_project, topic).ok
    grants = _all_grants()
    role = waiter_role(airflow.wait_project)
    grants["roles"][role] = [p for p in grants["roles"][role] if p != permission]
    stack = _start(start_broker, tmp_path, grants)
    try:
        assert stack.provisioned.ok, stack.provisioned.message
        refused = _wait_cycle(stack.client(airflow.service_account), airflow.wait_project, topic)
    finally:
        stack.close()
    assert refused.code == "PERMISSION_DENIED", refused
    on = f"projects/{airflow.wait_project}"
    if permission != "pubsub.subscriptions.create":
        on += "/subscriptions/wait-"  # the task subscription itself (its name goes on)
    assert f"{airflow.member} lacks permission '{permission}' on resource '{on}" in (
        refused.message
    ), refused.message


def test_every_grant_relay_produces_is_proven_or_named_here() -> None:
    """Every grant is in PROVEN (a call for it is known: a grant of a new kind fails here until
    one is) or the service agent's, which are exactly the ones Google's own deliveries need."""
    for grant in PROVEN:
        _call_for(grant)
    assert {(g.kind, g.resource.rpartition("/")[2], g.role) for g in SERVICE_AGENTS} == {
        ("topic", "relay-dead-letter", "roles/pubsub.publisher"),
        ("topic", "relay-undeliverable", "roles/pubsub.publisher"),
        ("subscription", "echo-push", "roles/pubsub.subscriber"),
        ("subscription", "csv-profile-push", "roles/pubsub.subscriber"),
        ("subscription", "dead-letter-push", "roles/pubsub.subscriber"),
        (
            "service_account",
            f"relay-push@{PROJECT}.iam.gserviceaccount.com",
            "roles/iam.serviceAccountTokenCreator",
        ),
    }
    # The waiter role on the wait project, nothing of it on the topology's project.
    assert [g.resource for g in PROVEN if g.role.endswith("/relayWaiter")] == [
        f"projects/{PROJECT}-waits"
    ]
