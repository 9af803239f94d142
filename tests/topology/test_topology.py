"""relay.yaml parsing: a valid file loads into frozen dataclasses; each mistake, its own error."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.topology import (
    RetryPolicy,
    Subscription,
    Topology,
    TopologyError,
    load_topology,
    parse_duration,
    parse_topology,
)

REPO = Path(__file__).resolve().parents[2]


def _valid() -> dict[str, Any]:
    return {
        "version": 1,
        "project": "relay-test",
        "region": "europe-west1",
        "topics": {
            "requests": ["echo-requests"],
            "completion": {"name": "results", "subscriptions": {"results-audit": {}}},
            "dead_letter": ["dead-letters", "undeliverable"],
        },
        "functions": {
            "echo": {
                "source": "functions/echo",
                "entry_point": "handle",
                "topic": "echo-requests",
                "push_identity": "push",
                "runtime_identity": "runtime",
                "ack_deadline": "30s",
                "retry": {"minimum_backoff": "1s", "maximum_backoff": "1m"},
                "dead_letter_topic": "dead-letters",
                "max_delivery_attempts": 7,
                "environment": {"GREETING": "hi {project}", "COUNT": 3},
            },
            "dead-letter": {
                "source": "functions/dead_letter",
                "entry_point": "handle",
                "topic": "dead-letters",
                "delivery": "pull",
                "runtime_identity": "runtime",
                "dead_letter_topic": "undeliverable",
            },
        },
        "identities": {
            "airflow": {
                "service_account": "airflow@{project}.iam.gserviceaccount.com",
                "publishes": ["echo-requests"],
                "subscribes": ["results-audit"],
                "waits_on": ["results"],
            },
            "runtime": {
                "service_account": "runtime@{project}.iam.gserviceaccount.com",
                "publishes": ["results"],
            },
            "push": {
                "service_account": "push@relay-test.iam.gserviceaccount.com",
                "invokes": ["echo"],
            },
            "ops": {
                "member": "group:ops@example.com",
                "subscribes": ["dead-letter-pull", "undeliverable"],
            },
        },
    }


@pytest.fixture
def base(tmp_path: Path) -> Path:
    for name in ("echo", "dead_letter"):
        (tmp_path / "functions" / name).mkdir(parents=True)
        (tmp_path / "functions" / name / "main.py").write_text("def handle(request): ...\n")
    return tmp_path


def _load(base: Path, document: dict[str, Any], **kwargs: Any) -> Topology:
    path = base / "relay.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_topology(path, **kwargs)


def _issues(base: Path, document: dict[str, Any]) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        _load(base, document)
    return [str(issue) for issue in caught.value.issues]


def test_valid_file_loads_into_frozen_dataclasses(base: Path) -> None:
    topology = _load(base, _valid())

    assert topology.project == "relay-test"
    assert topology.topics == ("echo-requests", "results", "dead-letters", "undeliverable")
    assert topology.subscriptions == (
        "echo-push",
        "dead-letter-pull",
        "results-audit",
        "undeliverable",
    )
    assert topology.terminal_topics == ("undeliverable",)
    assert topology.terminal_subscriptions == (Subscription("undeliverable", "undeliverable"),)
    echo = topology.functions["echo"]
    assert echo.source == base / "functions" / "echo"
    assert echo.source_file.is_file()
    assert echo.url == "https://europe-west1-relay-test.cloudfunctions.net/echo"
    assert echo.ack_deadline_seconds == 30
    assert echo.retry == RetryPolicy(1.0, 60.0)
    assert (echo.dead_letter_topic, echo.max_delivery_attempts) == ("dead-letters", 7)
    assert dict(echo.environment) == {"GREETING": "hi relay-test", "COUNT": "3"}
    assert topology.push_service_account(echo) == "push@relay-test.iam.gserviceaccount.com"
    assert topology.functions["dead-letter"].delivery == "pull"
    assert topology.push_service_account(topology.functions["dead-letter"]) is None
    airflow = topology.identities["airflow"]
    assert airflow.member == "serviceAccount:airflow@relay-test.iam.gserviceaccount.com"
    assert airflow.waits_on == ("results",)
    assert topology.identities["ops"].service_account is None
    assert topology.path == base / "relay.yaml"
    with pytest.raises(dataclasses.FrozenInstanceError):
        echo.topic = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        topology.functions["x"] = echo  # type: ignore[index]


def test_project_override_replaces_placeholders(base: Path) -> None:
    document = _valid()
    document["identities"]["airflow"]["wait_project"] = "{project}-waits"
    topology = _load(base, document, project="other-project")

    assert topology.project == "other-project"
    assert topology.identities["airflow"].wait_project == "other-project-waits"
    assert topology.identities["runtime"].member.endswith("@other-project.iam.gserviceaccount.com")
    assert topology.functions["echo"].url.endswith("-other-project.cloudfunctions.net/echo")


def test_defaults(base: Path) -> None:
    document = _valid()
    echo = document["functions"]["echo"]
    for key in ("ack_deadline", "retry", "max_delivery_attempts"):
        del echo[key]
    document["topics"]["completion"] = "results"
    document["identities"]["airflow"]["subscribes"] = []
    document["identities"]["ops"]["subscribes"] = []
    topology = _load(base, document)

    function = topology.functions["echo"]
    assert (function.ack_deadline_seconds, function.max_delivery_attempts) == (60, 5)
    assert function.retry == RetryPolicy(10.0, 600.0)
    assert function.delivery == "push"
    assert topology.completion_subscriptions == ()


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any, **siblings: Any) -> Mutation:
    """Set `path` to `value` (and the keys `siblings` beside it)."""

    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        node[last] = value
        node.update(siblings)

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _add_last_resort(dead_letter_topic: str) -> Mutation:
    """A second dead-letter function, on `undeliverable`, dead-lettering to `dead_letter_topic`."""

    def mutate(document: dict[str, Any]) -> None:
        document["functions"]["last-resort"] = {
            "source": "functions/dead_letter",
            "entry_point": "handle",
            "topic": "undeliverable",
            "delivery": "pull",
            "runtime_identity": "runtime",
            "dead_letter_topic": dead_letter_topic,
        }
        document["identities"]["ops"]["subscribes"] = []

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    (
        "attempts below 5",
        _set("functions.echo.max_delivery_attempts", 3),
        "functions.echo.max_delivery_attempts: must be 5..100, got 3",
    ),
    (
        "attempts not an int",
        _set("functions.echo.max_delivery_attempts", "many"),
        "functions.echo.max_delivery_attempts: must be an integer 5..100, got 'many'",
    ),
    (
        "ack deadline too long",
        _set("functions.echo.ack_deadline", "11m"),
        "functions.echo.ack_deadline: must be 10s..600s, got 660s",
    ),
    (
        "bad duration",
        _set("functions.echo.retry.minimum_backoff", "soon"),
        "functions.echo.retry.minimum_backoff: must be a duration like 10s, 500ms or 2m, "
        "got 'soon'",
    ),
    (
        "backoff inverted",
        _set("functions.echo.retry", {"minimum_backoff": "30s", "maximum_backoff": "5s"}),
        "functions.echo.retry.maximum_backoff: must not be below minimum_backoff (5s < 30s)",
    ),
    (
        "unknown key",
        _set("functions.echo.retries", 3),
        "functions.echo.retries: unknown key (expected one of: source, entry_point, topic, "
        "subscription, delivery, url, push_identity, runtime_identity, ack_deadline, retry, "
        "dead_letter_topic, max_delivery_attempts, environment, region, runtime, memory, timeout, "
        "max_instances, concurrency, ingress)",
    ),
    (
        "missing source folder",
        _set("functions.echo.source", "functions/nope"),
        "functions.echo.source: folder functions/nope does not exist (relative to {base})",
    ),
    (
        "source without main.py",
        _set("functions.echo.source", "functions"),
        "functions.echo.source: functions has no main.py (what functions-framework loads)",
    ),
    (
        "entry point not an identifier",
        _set("functions.echo.entry_point", "handle-it"),
        "functions.echo.entry_point: 'handle-it' is not a Python identifier",
    ),
    (
        "entry point not defined",
        _set("functions.echo.entry_point", "main"),
        "functions.echo.entry_point: main is not defined at the top level of "
        "functions/echo/main.py",
    ),
    (
        "missing entry point",
        _delete("functions.echo.entry_point"),
        "functions.echo.entry_point: is required",
    ),
    (
        "undeclared topic",
        _set("functions.dead-letter.topic", "nowhere"),
        "functions.dead-letter.topic: nowhere is not declared in topics.requests or "
        "topics.dead_letter",
    ),
    (
        "bad delivery",
        _set("functions.echo.delivery", "carrier-pigeon"),
        "functions.echo.delivery: must be push, pull or eventarc, got 'carrier-pigeon'",
    ),
    (
        "push without identity",
        _delete("functions.echo.push_identity"),
        "functions.echo.push_identity: is required for push delivery (the service account whose "
        "OIDC token authenticates each delivery: the only caller allowed to invoke the function)",
    ),
    (
        "timeout under the ack deadline",
        _set("functions.echo.timeout", "20s"),
        "functions.echo.timeout: must be at least the ack deadline plus 10s (30s + 10s = 40s), "
        "got 20s: a function cut off before Pub/Sub's ack deadline answers 504 while its instance "
        "goes on running, and Pub/Sub redelivers, so the request runs twice",
    ),
    (
        "timeout beyond an HTTP function's",
        _set("functions.echo.timeout", "120m"),
        "functions.echo.timeout: must be 1s..3600s, got 7200s",
    ),
    (
        "unknown runtime",
        _set("functions.echo.runtime", "python3.12"),
        "functions.echo.runtime: unknown runtime 'python3.12': not a Cloud Run functions Python "
        "runtime (one of python311, python312, python313, python314)",
    ),
    (
        "runtime too old for relay",
        _set("functions.echo.runtime", "python310"),
        "functions.echo.runtime: unknown runtime 'python310': relay needs Python 3.11 or later "
        "(one of python311, python312, python313, python314)",
    ),
    (
        "two delivery paths",
        _set("functions.echo.delivery", ["push", "eventarc"]),
        "functions.echo.delivery: one delivery path per function, got ['push', 'eventarc']: push "
        "and an Eventarc trigger would each get every request, so every request would run twice",
    ),
    (
        "eventarc with a subscription of its own",
        _set("functions.echo.delivery", "eventarc", subscription="echo-sub"),
        "functions.echo.subscription: does not apply to eventarc delivery: Eventarc creates and "
        "names the trigger's subscription itself (eventarc-REGION-TRIGGER-sub-NNN)",
    ),
    (
        "eventarc past an event function's longest timeout",
        _set("functions.echo.delivery", "eventarc", ack_deadline="600s"),
        "functions.echo.ack_deadline: must be at most 530s for eventarc delivery: the function's "
        "timeout (at most 540s) must outlast it by 10s",
    ),
    (
        "memory without a unit Google knows",
        _set("functions.echo.memory", "1GB"),
        "functions.echo.memory: '1GB' is not a size with a unit of k, M, G, Mi or Gi (e.g. 256Mi, "
        "1Gi), from 128Mi to 32Gi",
    ),
    (
        "memory beyond the largest instance",
        _set("functions.echo.memory", "64Gi"),
        "functions.echo.memory: '64Gi' is not a size with a unit of k, M, G, Mi or Gi (e.g. 256Mi, "
        "1Gi), from 128Mi to 32Gi",
    ),
    (
        "concurrency out of range",
        _set("functions.echo.concurrency", 5000),
        "functions.echo.concurrency: must be 1..1000, got 5000",
    ),
    (
        "max instances zero",
        _set("functions.echo.max_instances", 0),
        "functions.echo.max_instances: must be 1..1000, got 0",
    ),
    (
        "bad region",
        _set("functions.echo.region", "Europe West"),
        "functions.echo.region: 'Europe West' is not a Google Cloud region such as europe-west1 or "
        "us-central1",
    ),
    (
        "bad ingress",
        _set("functions.echo.ingress", "public"),
        "functions.echo.ingress: must be internal, internal-and-gclb or all, got 'public'",
    ),
    (
        "reserved environment variable",
        _set("functions.echo.environment", {"K_SERVICE": "x"}),
        "functions.echo.environment.K_SERVICE: is reserved: Cloud Run functions sets it",
    ),
    (
        "pull with push identity",
        _set("functions.dead-letter.push_identity", "push"),
        "functions.dead-letter.push_identity: only applies to push delivery",
    ),
    (
        "push identity not a service account",
        _set("functions.echo.push_identity", "ops"),
        "functions.echo.push_identity: ops must be a service_account to sign OIDC tokens",
    ),
    (
        "push identity may not invoke",
        _set("identities.push.invokes", []),
        "identities.push.invokes: must include echo (it is its push_identity)",
    ),
    (
        "runtime identity cannot publish results",
        _set("identities.runtime.publishes", []),
        "identities.runtime.publishes: must include results (where echo publishes results)",
    ),
    (
        "unknown identity",
        _set("functions.echo.runtime_identity", "ghost"),
        "functions.echo.runtime_identity: ghost is not declared in identities",
    ),
    (
        "dead letter topic undeclared",
        _set("functions.echo.dead_letter_topic", "elsewhere"),
        "functions.echo.dead_letter_topic: elsewhere is not declared in topics.dead_letter",
    ),
    (
        "no dead letter topic",
        _delete("functions.echo.dead_letter_topic"),
        "functions.echo.dead_letter_topic: is required: without one, a request that echo always "
        "fails is redelivered forever (name a topic of topics.dead_letter; one that no function "
        "listens on keeps what lands there)",
    ),
    (
        "attempts without dead letter topic",
        _delete("functions.echo.dead_letter_topic"),
        "functions.echo.max_delivery_attempts: only applies with a dead_letter_topic",
    ),
    (
        "dead-letter function without its own dead letter topic",
        _delete("functions.dead-letter.dead_letter_topic"),
        "functions.dead-letter.dead_letter_topic: is required: without one, a request that "
        "dead-letter always fails is redelivered forever (name a topic of topics.dead_letter; one "
        "that no function listens on keeps what lands there)",
    ),
    (
        "dead letter topic is the function's own topic",
        _set("functions.dead-letter.dead_letter_topic", "dead-letters"),
        "functions.dead-letter.dead_letter_topic: must differ from the topic dead-letter listens "
        "on (dead-letters): Pub/Sub would hand each dead-lettered request back to the same "
        "subscription, forever",
    ),
    (
        "dead letter chain comes back",
        _add_last_resort("dead-letters"),
        "functions.dead-letter.dead_letter_topic: the dead-letter chain comes back: dead-letters "
        "(dead-letter) -> undeliverable (last-resort) -> dead-letters; a request that fails "
        "everywhere would circle forever (a chain must end at a dead-letter topic that no "
        "function listens on)",
    ),
    (
        "terminal subscription name taken",
        _set("functions.dead-letter.subscription", "undeliverable"),
        "topics.dead_letter[1]: undeliverable is terminal (no function listens on it) and its "
        "subscription, of the same name, is also used at functions.dead-letter.subscription",
    ),
    (
        "bad function name",
        _set("functions.Echo_2", {}),
        "functions.Echo_2: names are 1-63 lowercase letters, digits and hyphens, "
        "starting with a letter",
    ),
    (
        "bad topic name",
        _set("topics.requests", ["echo-requests", "goog-x"]),
        "topics.requests[1]: 'goog-x' is not a valid Pub/Sub name (3-255 characters: "
        "a letter, then "
        "letters, digits or -_.~+%; not starting with goog)",
    ),
    (
        "request topic nobody listens on",
        _set("topics.requests", ["echo-requests", "orphans"]),
        "topics.requests[1]: no function listens on orphans",
    ),
    (
        "topic declared twice",
        _set("topics.dead_letter", ["dead-letters", "echo-requests"]),
        "topics.dead_letter[1]: echo-requests is already declared at topics.requests[0]",
    ),
    (
        "completion topic reused",
        _set("topics.requests", ["echo-requests", "results"]),
        "topics.requests[1]: results is the completion topic",
    ),
    ("no completion topic", _delete("topics.completion"), "topics.completion: is required"),
    (
        "no request topics",
        _set("topics.requests", []),
        "topics.requests: must name at least one topic",
    ),
    (
        "duplicate subscription",
        _set("functions.dead-letter.subscription", "echo-push"),
        "functions.dead-letter.subscription: echo-push is also used at functions.echo.subscription",
    ),
    (
        "identity publishes undeclared topic",
        _set("identities.airflow.publishes", ["echo-requests", "typo"]),
        "identities.airflow.publishes[1]: typo is not a declared topic",
    ),
    (
        "identity invokes undeclared function",
        _set("identities.push.invokes", ["echo", "ghost"]),
        "identities.push.invokes[1]: ghost is not a declared function",
    ),
    (
        "identity subscribes to undeclared subscription",
        _set("identities.ops.subscribes", ["nope-sub"]),
        "identities.ops.subscribes[0]: nope-sub is not a declared subscription",
    ),
    (
        "identity waits on undeclared topic",
        _set("identities.airflow.waits_on", ["nope-topic"]),
        "identities.airflow.waits_on[0]: nope-topic is not a declared topic",
    ),
    (
        "wait project that is not a project id",
        _set("identities.airflow.wait_project", "Waits"),
        "identities.airflow.wait_project: 'Waits' is not a valid project id (6-30 characters: "
        "lowercase letters, digits and hyphens, starting with a letter (optionally "
        "domain-scoped: example.com:my-project))",
    ),
    (
        "wait project of an identity that does not wait",
        _set("identities.runtime.wait_project", "relay-waits"),
        "identities.runtime.wait_project: only applies with waits_on (where its task "
        "subscriptions attach)",
    ),
    (
        "wait project that is the project itself",
        _set("identities.airflow.wait_project", "{project}"),
        "identities.airflow.wait_project: relay-test is the topology's project: leave "
        "wait_project out (that is the default) or name a project of their own, where the "
        "waiter role is granted",
    ),
    (
        "bad e-mail",
        _set("identities.runtime.service_account", "not-an-email"),
        "identities.runtime.service_account: 'not-an-email' is not an e-mail address",
    ),
    (
        "bad member",
        _set("identities.ops.member", "robot:ops"),
        "identities.ops.member: 'robot:ops' must be KIND:VALUE with KIND one of user, "
        "group, domain, "
        "principal, principalSet (use service_account for service accounts)",
    ),
    (
        "both member kinds",
        _set("identities.ops.service_account", "ops@example.com"),
        "identities.ops: needs exactly one of service_account or member",
    ),
    (
        "bad project",
        _set("project", "Relay_Test"),
        "project: 'Relay_Test' is not a valid project id (6-30 characters: "
        "lowercase letters, digits "
        "and hyphens, starting with a letter (optionally domain-scoped: example.com:my-project))",
    ),
    (
        "unknown placeholder",
        _set("identities.runtime.service_account", "x@{projekt}.iam.gserviceaccount.com"),
        "identities.runtime.service_account: unknown placeholder 'projekt' (only {{project}} and "
        "{{region}})",
    ),
    ("bad version", _set("version", 2), "version: must be 1, got 2"),
    (
        "bad environment value",
        _set("functions.echo.environment", {"A": ["x"]}),
        "functions.echo.environment.A: must be a string or number, got a list",
    ),
    (
        "bad url",
        _set("functions.echo.url", "ftp://x"),
        "functions.echo.url: must be an http(s) URL, got 'ftp://x'",
    ),
    (
        "section of wrong type",
        _set("functions", ["echo"]),
        "functions: must be a mapping, got a list",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_gets_its_error(base: Path, mutate: Mutation, expected: str) -> None:
    document = _valid()
    mutate(document)

    issues = _issues(base, document)

    assert expected.format(base=base) in issues, issues


def test_a_longer_dead_letter_chain_ends_at_its_terminal_topic(base: Path) -> None:
    document = _valid()
    _add_last_resort("final")(document)
    document["topics"]["dead_letter"].append("final")

    topology = _load(base, document)

    assert topology.terminal_topics == ("final",)
    assert [sub.name for sub in topology.terminal_subscriptions] == ["final"]
    assert topology.subscriptions[-1] == "final"


def test_a_dead_letter_cycle_is_reported_once_with_every_step(base: Path) -> None:
    document = _valid()
    _add_last_resort("third")(document)
    document["topics"]["dead_letter"].append("third")
    document["functions"]["third"] = {
        **document["functions"]["last-resort"],
        "topic": "third",
        "dead_letter_topic": "dead-letters",
    }

    issues = _issues(base, document)

    assert issues == [
        "functions.dead-letter.dead_letter_topic: the dead-letter chain comes back: dead-letters "
        "(dead-letter) -> undeliverable (last-resort) -> third (third) -> dead-letters; a request "
        "that fails everywhere would circle forever (a chain must end at a dead-letter topic "
        "that no function listens on)"
    ]


def test_every_mistake_is_reported_at_once(base: Path) -> None:
    document = _valid()
    document["functions"]["echo"]["max_delivery_attempts"] = 3
    document["functions"]["echo"]["delivery"] = "smoke"
    document["identities"]["airflow"]["publishes"] = ["typo"]

    with pytest.raises(TopologyError) as caught:
        _load(base, document)

    assert [str(issue) for issue in caught.value.issues] == [
        "functions.echo.delivery: must be push, pull or eventarc, got 'smoke'",
        "functions.echo.max_delivery_attempts: must be 5..100, got 3",
        "identities.airflow.publishes[0]: typo is not a declared topic",
    ]
    message = str(caught.value)
    assert message.startswith(f"{base / 'relay.yaml'}: 3 mistakes in the topology:")
    assert "  functions.echo.max_delivery_attempts: must be 5..100, got 3" in message.splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "the file must be a mapping (project, topics, ...), got a list"),
        (
            "project: [unclosed\n",
            "not valid YAML: line 2, column 1: expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_unusable_documents(text: str, expected: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text)
    assert expected in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("x", None),
        (True, None),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_repository_topology_is_valid() -> None:
    topology = load_topology(REPO / "relay.yaml")

    assert set(topology.functions) == {"echo", "csv-profile", "dead-letter"}
    assert topology.completion_topic == "relay-results"
    # Every request has a bounded path: two dead-letter hops at most, then a terminal topic.
    assert {f.name: f.dead_letter_topic for f in topology.functions.values()} == {
        "echo": "relay-dead-letter",
        "csv-profile": "relay-dead-letter",
        "dead-letter": "relay-undeliverable",
    }
    assert topology.functions["dead-letter"].max_delivery_attempts == 5
    assert topology.terminal_topics == ("relay-undeliverable",)
