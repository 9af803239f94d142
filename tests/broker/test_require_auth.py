"""`relay broker --require-auth`: TLS, tokens from the broker's token service, Google's permissions.

Every client here is a process of one identity (tests/_auth_client.py): the stock GAPIC clients
over TLS with google-auth's Compute Engine credentials from that identity's metadata server, as
on Cloud Run. Grants come from the --grants file (project and service-account bindings) and from
IAM policies an admin identity sets through SetIamPolicy.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from _auth_client import Client, access_token, auth_broker_fields, client_environment
from google.pubsub_v1 import types

PROJECT = "relay-test"


def _sa(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


ADMIN, ALICE, BOB = _sa("admin"), _sa("alice"), _sa("bob")
PUSHER_A, PUSHER_B = _sa("pusher-a"), _sa("pusher-b")
WAITER = f"projects/{PROJECT}/roles/waiter"
PUSH_ENDPOINT = "http://127.0.0.1:9/"
INVOKED = "http://127.0.0.1:10"  # a function called directly only (--id-token-audiences)


def _binding(resource: str, role: str, *emails: str) -> dict[str, Any]:
    return {"resource": resource, "role": role, "members": [f"serviceAccount:{e}" for e in emails]}


GRANTS = {
    "roles": {WAITER: ["pubsub.subscriptions.create", "pubsub.topics.create"]},
    "bindings": [
        _binding(f"projects/{PROJECT}", "roles/pubsub.admin", ADMIN),
        _binding(f"projects/{PROJECT}", "roles/iam.serviceAccountUser", ADMIN),
        _binding(f"projects/{PROJECT}", WAITER, ALICE),
        _binding(
            f"projects/{PROJECT}/serviceAccounts/{PUSHER_A}", "roles/iam.serviceAccountUser", ALICE
        ),
    ],
}


@dataclass
class AuthBroker:
    """A --require-auth broker and one client process per identity."""

    process: Any
    ca: Path
    metadata: dict[str, str]
    logs: Path
    clients: dict[str, Client] = field(default_factory=dict)

    def client(self, email: str) -> Client:
        if email not in self.clients:
            environment = client_environment(self.metadata[email], self.ca)
            log = self.logs / f"{email}.log"
            self.clients[email] = Client(self.process.host, environment, log)
        return self.clients[email]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def _start(start: Callable[..., Any], root: Path, grants: Any, *args: str) -> AuthBroker:
    root.mkdir(parents=True, exist_ok=True)
    (root / "grants.json").write_text(json.dumps(grants))
    identities = [arg for email in (ADMIN, ALICE, BOB) for arg in ("--identity", email)]
    process = start(
        root / "data",
        args=["--require-auth", "--grants", str(root / "grants.json"), *identities, *args],
    )
    ca, metadata = auth_broker_fields(process.log_text())
    return AuthBroker(process, ca, metadata, root)


@pytest.fixture(scope="module")
def auth(
    start_module_broker: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthBroker]:
    broker = _start(
        start_module_broker,
        tmp_path_factory.mktemp("auth"),
        GRANTS,
        "--push-audiences",
        PUSH_ENDPOINT,
        "--id-token-audiences",
        INVOKED,
    )
    yield broker
    broker.close()


def _denied(refusal: tuple[str, str], email: str, *missing: tuple[str, str]) -> None:
    """PERMISSION_DENIED naming the principal and exactly the missing (permission, resource)."""
    code, message = refusal
    assert code == "PERMISSION_DENIED", refusal
    assert message.startswith("User not authorized to perform this action"), message
    assert f"serviceAccount:{email} lacks" in message, message
    for permission, resource in missing:
        assert f"permission '{permission}' on resource '{resource}'" in message, message
    assert message.count("permission '") == len(missing), message


def _grant(auth: AuthBroker, resource: str, role: str, email: str) -> None:
    """Add `role` for `email` to the IAM policy of `resource` (as the admin, read-modify-write)."""
    admin = auth.client(ADMIN)
    client = "schema" if "/schemas/" in resource else "publisher"
    policy = admin.ok(client, "get_iam_policy", resource=resource)
    bindings = policy.get("bindings", [])
    bindings.append({"role": role, "members": [f"serviceAccount:{email}"]})
    admin.ok(
        client,
        "set_iam_policy",
        resource=resource,
        policy={"bindings": bindings, "etag": policy.get("etag", "")},
    )


@pytest.fixture
def topic(auth: AuthBroker, unique: Callable[[str], str]) -> str:
    name = f"projects/{PROJECT}/topics/{unique('topic')}"
    auth.client(ADMIN).ok("publisher", "create_topic", name=name)
    return name


@pytest.fixture
def sub(auth: AuthBroker, topic: str, unique: Callable[[str], str]) -> str:
    name = f"projects/{PROJECT}/subscriptions/{unique('sub')}"
    auth.client(ADMIN).ok("subscriber", "create_subscription", name=name, topic=topic)
    return name


# -- authentication -----------------------------------------------------------------------------


def _get_topic(auth: AuthBroker, topic: str, token: str | None, scheme: str = "Bearer") -> Any:
    """GetTopic over TLS with exactly this authorization (or none): grpc's own call."""
    channel = grpc.secure_channel(
        auth.process.host, grpc.ssl_channel_credentials(root_certificates=auth.ca.read_bytes())
    )
    call = channel.unary_unary(
        "/google.pubsub.v1.Publisher/GetTopic",
        request_serializer=types.GetTopicRequest.pb().SerializeToString,
        response_deserializer=types.Topic.pb().FromString,
    )
    metadata = [] if token is None else [("authorization", f"{scheme} {token}")]
    try:
        return call(types.GetTopicRequest.pb()(topic=topic), metadata=metadata, timeout=10)
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("token", "scheme", "reason"),
    [
        (None, "Bearer", "missing required authentication credential.* no authorization"),
        ("ya29.a0AfB_byC-not-ours", "Bearer", "invalid.* not issued by this broker"),
        ("ya29.relay.eyJzdWIiOiJ4In0.AAAA", "Bearer", "invalid.* signature does not match"),
        ("anything", "Basic", "invalid.* not 'Bearer <token>'"),
    ],
)
def test_calls_without_a_token_of_the_broker_are_unauthenticated(
    auth: AuthBroker, topic: str, token: str | None, scheme: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _get_topic(auth, topic, token, scheme)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = refused.value.details() or ""
    assert details.endswith(")"), details
    assert "Expected OAuth 2 access token, login cookie or other valid" in details
    assert re.search(reason, details, re.IGNORECASE), details
    # The same call with a token of the broker goes through (the test can fail).
    assert _get_topic(auth, topic, access_token(auth.metadata[ADMIN])).name == topic


def test_a_token_of_another_broker_is_unauthenticated(
    auth: AuthBroker,
    topic: str,
    start_broker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    other = _start(start_broker, tmp_path / "other", GRANTS)
    with pytest.raises(grpc.RpcError) as refused:
        _get_topic(auth, topic, access_token(other.metadata[ADMIN]))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature does not match" in (refused.value.details() or "")


def test_an_expired_token_is_unauthenticated(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    broker = _start(start_broker, tmp_path, GRANTS, "--control", "--token-lifetime", "60")
    try:
        admin = broker.client(ADMIN)
        topic = f"projects/{PROJECT}/topics/expiring"
        admin.ok("publisher", "create_topic", name=topic)
        token = access_token(broker.metadata[ADMIN])
        assert _get_topic(broker, topic, token).name == topic
        broker.process.control({"advance_seconds": 61})
        with pytest.raises(grpc.RpcError) as refused:
            _get_topic(broker, topic, token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details = refused.value.details() or ""
        assert re.search(rf"the access token of {ADMIN} expired [12] s ago\)$", details), details
        # google-auth fetches a new token before every call whose token has less than 3 min 45 s
        # left (all of a 60 s token's life): its next call goes through on the moved clock.
        assert admin.ok("publisher", "get_topic", topic=topic)["name"] == topic
    finally:
        broker.close()


# -- permissions, method by method --------------------------------------------------------------


def test_publish_needs_topics_publish_on_the_topic(auth: AuthBroker, topic: str) -> None:
    message = {"messages": [{"data": "hello"}]}
    refusal = auth.client(ALICE).refused("publisher", "publish", topic=topic, **message)
    _denied(refusal, ALICE, ("pubsub.topics.publish", topic))
    assert "roles/pubsub.publisher" in refusal[1]
    _grant(auth, topic, "roles/pubsub.publisher", ALICE)
    assert auth.client(ALICE).ok("publisher", "publish", topic=topic, **message)["message_ids"]
    # A binding names its member: bob still may not.
    refusal = auth.client(BOB).refused("publisher", "publish", topic=topic, **message)
    _denied(refusal, BOB, ("pubsub.topics.publish", topic))


def test_pull_acknowledge_and_modify_ack_deadline_need_consume(
    auth: AuthBroker, topic: str, sub: str
) -> None:
    auth.client(ADMIN).ok("publisher", "publish", topic=topic, messages=[{"data": "m"}])
    alice = auth.client(ALICE)
    pull = {"subscription": sub, "max_messages": 10}
    _denied(
        alice.refused("subscriber", "pull", **pull), ALICE, ("pubsub.subscriptions.consume", sub)
    )
    _grant(auth, sub, "roles/pubsub.subscriber", ALICE)
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not received and time.monotonic() < deadline:
        received = alice.ok("subscriber", "pull", **pull).get("received_messages", [])
    ack_id = received[0]["ack_id"]
    for method, request in (
        ("modify_ack_deadline", {"ack_ids": [ack_id], "ack_deadline_seconds": 30}),
        ("acknowledge", {"ack_ids": [ack_id]}),
    ):
        refusal = auth.client(BOB).refused("subscriber", method, subscription=sub, **request)
        _denied(refusal, BOB, ("pubsub.subscriptions.consume", sub))
        alice.ok("subscriber", method, subscription=sub, **request)


def test_streaming_pull_needs_consume(auth: AuthBroker, topic: str, sub: str) -> None:
    alice = auth.client(ALICE)
    ended = alice.subscribe(sub, count=1, timeout=20)
    assert ended["error"] is not None, ended
    _denied(
        (ended["error"]["code"], ended["error"]["message"]),
        ALICE,
        ("pubsub.subscriptions.consume", sub),
    )
    _grant(auth, sub, "roles/pubsub.subscriber", ALICE)
    auth.client(ADMIN).ok("publisher", "publish", topic=topic, messages=[{"data": "streamed"}])
    assert alice.subscribe(sub, count=1, timeout=30) == {
        "ok": True,
        "data": ["streamed"],
        "error": None,
        "seconds": pytest.approx(0, abs=30),
    }


def test_create_subscription_needs_create_on_the_project_and_attach_on_the_topic(
    auth: AuthBroker, topic: str, unique: Callable[[str], str]
) -> None:
    name = f"projects/{PROJECT}/subscriptions/{unique('sub')}"
    request = {"name": name, "topic": topic}
    _denied(
        auth.client(BOB).refused("subscriber", "create_subscription", **request),
        BOB,
        ("pubsub.subscriptions.create", f"projects/{PROJECT}"),
        ("pubsub.topics.attachSubscription", topic),
    )
    alice = auth.client(ALICE)  # the custom role of --grants: subscriptions.create on the project
    _denied(
        alice.refused("subscriber", "create_subscription", **request),
        ALICE,
        ("pubsub.topics.attachSubscription", topic),
    )
    _grant(auth, topic, "roles/pubsub.subscriber", ALICE)
    assert alice.ok("subscriber", "create_subscription", **request)["name"] == name


def test_a_subscription_in_another_project_than_its_topic_is_authorized_and_charged_as_on_google(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    """Google: creating a subscription in project B on a topic of project A needs
    pubsub.subscriptions.create on B and pubsub.topics.attachSubscription on the topic; consume
    and delete are checked on the subscription (so on B); administrator operations are charged to
    the project of the caller's credentials, not to the resource's."""
    waits = f"{PROJECT}-waits"
    waiter = f"projects/{waits}/roles/waiter"
    grants = {
        "roles": {
            waiter: [
                "pubsub.subscriptions.create",
                "pubsub.subscriptions.consume",
                "pubsub.subscriptions.delete",
            ]
        },
        "bindings": [
            _binding(f"projects/{PROJECT}", "roles/pubsub.admin", ADMIN),
            _binding(f"projects/{waits}", waiter, ALICE),
        ],
    }
    broker = _start(start_broker, tmp_path, grants)
    try:
        admin, alice = broker.client(ADMIN), broker.client(ALICE)
        topic = f"projects/{PROJECT}/topics/results"
        theirs = f"projects/{PROJECT}/subscriptions/theirs"
        admin.ok("publisher", "create_topic", name=topic)
        admin.ok("subscriber", "create_subscription", name=theirs, topic=topic)
        wait = f"projects/{waits}/subscriptions/wait"
        create = {"name": wait, "topic": topic}
        _denied(
            broker.client(BOB).refused("subscriber", "create_subscription", **create),
            BOB,
            ("pubsub.subscriptions.create", f"projects/{waits}"),
            ("pubsub.topics.attachSubscription", topic),
        )
        _denied(
            alice.refused("subscriber", "create_subscription", **create),
            ALICE,
            ("pubsub.topics.attachSubscription", topic),
        )
        _grant(broker, topic, "roles/pubsub.subscriber", ALICE)
        before = broker.process.stats()["admin_ops"]
        alice.ok("subscriber", "create_subscription", **create)
        assert broker.process.stats()["admin_ops"] == {
            **before,
            PROJECT: before.get(PROJECT, 0) + 1,
        }
        # The topic lists it; its messages reach it; its owner seeks, pulls, acks and deletes it.
        listed = admin.ok("publisher", "list_topic_subscriptions", topic=topic)
        assert sorted(listed) == sorted([theirs, wait])
        admin.ok("publisher", "publish", topic=topic, messages=[{"data": "result"}])
        alice.ok("subscriber", "seek", subscription=wait, time={"seconds": 1_700_000_000})
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            pulled = alice.ok("subscriber", "pull", subscription=wait, max_messages=10)
            received = pulled.get("received_messages", [])
        assert [m["message"]["data"] for m in received] == ["cmVzdWx0"]  # b"result"
        alice.ok("subscriber", "acknowledge", subscription=wait, ack_ids=[received[0]["ack_id"]])
        # The waiter role is on the wait project only: the topic project's subscriptions stay shut.
        _denied(
            alice.refused("subscriber", "pull", subscription=theirs, max_messages=1),
            ALICE,
            ("pubsub.subscriptions.consume", theirs),
        )
        alice.ok("subscriber", "delete_subscription", subscription=wait)
        stats = broker.process.stats()["admin_ops"]
        assert waits not in stats, stats  # every call of alice's was charged to her project
    finally:
        broker.close()


def test_a_push_subscription_with_a_token_needs_act_as_on_its_service_account(
    auth: AuthBroker, topic: str, unique: Callable[[str], str]
) -> None:
    _grant(auth, topic, "roles/pubsub.subscriber", ALICE)
    alice = auth.client(ALICE)

    def push(email: str) -> dict[str, Any]:
        return {"push_endpoint": PUSH_ENDPOINT, "oidc_token": {"service_account_email": email}}

    name = f"projects/{PROJECT}/subscriptions/{unique('push')}"
    request = {"name": name, "topic": topic, "push_config": push(PUSHER_B)}
    _denied(
        alice.refused("subscriber", "create_subscription", **request),
        ALICE,
        ("iam.serviceAccounts.actAs", f"projects/{PROJECT}/serviceAccounts/{PUSHER_B}"),
    )
    # --grants: serviceAccountUser on PUSHER_A for alice (a service-account binding).
    request["push_config"] = push(PUSHER_A)
    alice.ok("subscriber", "create_subscription", **request)
    # Changing the push config: subscriptions.update, and actAs on the new account.
    refusal = alice.refused(
        "subscriber", "modify_push_config", subscription=name, push_config=push(PUSHER_B)
    )
    _denied(
        refusal,
        ALICE,
        ("pubsub.subscriptions.update", name),
        ("iam.serviceAccounts.actAs", f"projects/{PROJECT}/serviceAccounts/{PUSHER_B}"),
    )
    update = {
        "subscription": {"name": name, "push_config": push(PUSHER_B)},
        "update_mask": {"paths": ["push_config"]},
    }
    _grant(auth, name, "roles/pubsub.editor", ALICE)
    _denied(
        alice.refused("subscriber", "update_subscription", **update),
        ALICE,
        ("iam.serviceAccounts.actAs", f"projects/{PROJECT}/serviceAccounts/{PUSHER_B}"),
    )
    # The admin holds serviceAccountUser on the project: actAs on every account in it.
    auth.client(ADMIN).ok("subscriber", "update_subscription", **update)


def test_create_topic_needs_create_on_the_project_and_attach_on_its_schema(
    auth: AuthBroker, unique: Callable[[str], str]
) -> None:
    name = f"projects/{PROJECT}/topics/{unique('topic')}"
    _denied(
        auth.client(BOB).refused("publisher", "create_topic", name=name),
        BOB,
        ("pubsub.topics.create", f"projects/{PROJECT}"),
    )
    schema_id = unique("schema")
    schema = f"projects/{PROJECT}/schemas/{schema_id}"
    auth.client(ADMIN).ok(
        "schema",
        "create_schema",
        parent=f"projects/{PROJECT}",
        schema_id=schema_id,
        schema={"type_": "AVRO", "definition": json.dumps({"type": "string"})},
    )
    alice = auth.client(ALICE)  # topics.create through the custom role
    with_schema = {"name": name, "schema_settings": {"schema": schema, "encoding": "JSON"}}
    _denied(
        alice.refused("publisher", "create_topic", **with_schema),
        ALICE,
        ("pubsub.schemas.attach", schema),
    )
    _grant(auth, schema, "roles/pubsub.editor", ALICE)
    assert alice.ok("publisher", "create_topic", **with_schema)["name"] == name


# (client, method, request(topic, sub), permission, the resource it is on, a role that has it)
RESOURCE_METHODS = [
    (
        "publisher",
        "get_topic",
        lambda t, s: {"topic": t},
        "pubsub.topics.get",
        "topic",
        "roles/pubsub.viewer",
    ),
    (
        "publisher",
        "update_topic",
        lambda t, s: {
            "topic": {"name": t, "labels": {"a": "b"}},
            "update_mask": {"paths": ["labels"]},
        },
        "pubsub.topics.update",
        "topic",
        "roles/pubsub.editor",
    ),
    (
        "publisher",
        "list_topic_subscriptions",
        lambda t, s: {"topic": t},
        "pubsub.topics.get",
        "topic",
        "roles/pubsub.viewer",
    ),
    (
        "publisher",
        "detach_subscription",
        lambda t, s: {"subscription": s},
        "pubsub.topics.detachSubscription",
        "topic",
        "roles/pubsub.editor",
    ),
    (
        "publisher",
        "delete_topic",
        lambda t, s: {"topic": t},
        "pubsub.topics.delete",
        "topic",
        "roles/pubsub.editor",
    ),
    (
        "subscriber",
        "get_subscription",
        lambda t, s: {"subscription": s},
        "pubsub.subscriptions.get",
        "sub",
        "roles/pubsub.viewer",
    ),
    (
        "subscriber",
        "update_subscription",
        lambda t, s: {
            "subscription": {"name": s, "ack_deadline_seconds": 20},
            "update_mask": {"paths": ["ack_deadline_seconds"]},
        },
        "pubsub.subscriptions.update",
        "sub",
        "roles/pubsub.editor",
    ),
    (
        "subscriber",
        "seek",
        lambda t, s: {"subscription": s, "time": {"seconds": 1_700_000_000}},
        "pubsub.subscriptions.consume",
        "sub",
        "roles/pubsub.subscriber",
    ),
    (
        "subscriber",
        "delete_subscription",
        lambda t, s: {"subscription": s},
        "pubsub.subscriptions.delete",
        "sub",
        "roles/pubsub.editor",
    ),
    (
        "publisher",
        "get_iam_policy",
        lambda t, s: {"resource": t},
        "pubsub.topics.getIamPolicy",
        "topic",
        "roles/pubsub.admin",
    ),
    (
        "subscriber",
        "get_iam_policy",
        lambda t, s: {"resource": s},
        "pubsub.subscriptions.getIamPolicy",
        "sub",
        "roles/pubsub.admin",
    ),
    (
        "publisher",
        "set_iam_policy",
        lambda t, s: {
            "resource": t,
            "policy": {"bindings": [{"role": "roles/pubsub.viewer", "members": ["allUsers"]}]},
        },
        "pubsub.topics.setIamPolicy",
        "topic",
        "roles/pubsub.admin",
    ),
]


@pytest.mark.parametrize(
    ("client", "method", "request_of", "permission", "on", "role"),
    RESOURCE_METHODS,
    ids=[f"{row[1]}:{row[3]}" for row in RESOURCE_METHODS],
)
def test_each_method_needs_its_permission_on_its_resource(
    auth: AuthBroker,
    topic: str,
    sub: str,
    client: str,
    method: str,
    request_of: Callable[[str, str], dict[str, Any]],
    permission: str,
    on: str,
    role: str,
) -> None:
    resource = topic if on == "topic" else sub
    bob = auth.client(BOB)
    _denied(bob.refused(client, method, **request_of(topic, sub)), BOB, (permission, resource))
    _grant(auth, resource, role, BOB)
    bob.ok(client, method, **request_of(topic, sub))


@pytest.mark.parametrize(
    ("client", "method", "fields", "permission"),
    [
        ("publisher", "list_topics", {"project": f"projects/{PROJECT}"}, "pubsub.topics.list"),
        (
            "subscriber",
            "list_subscriptions",
            {"project": f"projects/{PROJECT}"},
            "pubsub.subscriptions.list",
        ),
        (
            "subscriber",
            "list_snapshots",
            {"project": f"projects/{PROJECT}"},
            "pubsub.snapshots.list",
        ),
        ("schema", "list_schemas", {"parent": f"projects/{PROJECT}"}, "pubsub.schemas.list"),
        (
            "schema",
            "validate_schema",
            {
                "parent": f"projects/{PROJECT}",
                "schema": {"type_": "AVRO", "definition": '"string"'},
            },
            "pubsub.schemas.validate",
        ),
    ],
)
def test_project_level_methods_need_a_project_grant(
    auth: AuthBroker, client: str, method: str, fields: dict[str, Any], permission: str
) -> None:
    _denied(
        auth.client(BOB).refused(client, method, **fields),
        BOB,
        (permission, f"projects/{PROJECT}"),
    )
    auth.client(ADMIN).ok(client, method, **fields)  # roles/pubsub.admin on the project (--grants)


def test_snapshots_need_create_on_the_project_consume_and_seek(
    auth: AuthBroker, topic: str, sub: str, unique: Callable[[str], str]
) -> None:
    alice = auth.client(ALICE)
    snapshot = f"projects/{PROJECT}/snapshots/{unique('snap')}"
    _grant(auth, sub, "roles/pubsub.subscriber", ALICE)
    _denied(
        alice.refused("subscriber", "create_snapshot", name=snapshot, subscription=sub),
        ALICE,
        ("pubsub.snapshots.create", f"projects/{PROJECT}"),
    )
    auth.client(ADMIN).ok("subscriber", "create_snapshot", name=snapshot, subscription=sub)
    _denied(
        alice.refused("subscriber", "seek", subscription=sub, snapshot=snapshot),
        ALICE,
        ("pubsub.snapshots.seek", snapshot),
    )
    _denied(
        alice.refused("subscriber", "get_snapshot", snapshot=snapshot),
        ALICE,
        ("pubsub.snapshots.get", snapshot),
    )
    _grant(auth, snapshot, "roles/pubsub.editor", ALICE)
    alice.ok("subscriber", "seek", subscription=sub, snapshot=snapshot)
    assert alice.ok("subscriber", "get_snapshot", snapshot=snapshot)["name"] == snapshot
    _denied(
        auth.client(BOB).refused("subscriber", "delete_snapshot", snapshot=snapshot),
        BOB,
        ("pubsub.snapshots.delete", snapshot),
    )
    alice.ok("subscriber", "delete_snapshot", snapshot=snapshot)


def test_schemas_need_their_permissions(auth: AuthBroker, unique: Callable[[str], str]) -> None:
    bob = auth.client(BOB)
    schema_id = unique("schema")
    schema = f"projects/{PROJECT}/schemas/{schema_id}"
    create = {
        "parent": f"projects/{PROJECT}",
        "schema_id": schema_id,
        "schema": {"type_": "AVRO", "definition": '"string"'},
    }
    _denied(
        bob.refused("schema", "create_schema", **create),
        BOB,
        ("pubsub.schemas.create", f"projects/{PROJECT}"),
    )
    revision = auth.client(ADMIN).ok("schema", "create_schema", **create)["revision_id"]
    _denied(
        bob.refused("schema", "get_schema", name=f"{schema}@{revision}"),
        BOB,
        ("pubsub.schemas.get", schema),
    )
    _denied(
        bob.refused("schema", "list_schema_revisions", name=schema),
        BOB,
        ("pubsub.schemas.listRevisions", schema),
    )
    _grant(auth, schema, "roles/pubsub.viewer", BOB)
    assert bob.ok("schema", "get_schema", name=f"{schema}@{revision}")["name"] == schema
    bob.ok("schema", "list_schema_revisions", name=schema)
    _denied(
        bob.refused("schema", "delete_schema", name=schema), BOB, ("pubsub.schemas.delete", schema)
    )


def test_test_iam_permissions_needs_none_and_answers_what_the_caller_holds(
    auth: AuthBroker, topic: str
) -> None:
    asked = ["pubsub.topics.publish", "pubsub.topics.get", "pubsub.topics.delete"]

    def held(email: str) -> list[str]:
        answer = auth.client(email).ok(
            "publisher", "test_iam_permissions", resource=topic, permissions=asked
        )
        return sorted(answer.get("permissions", []))

    assert held(BOB) == []
    _grant(auth, topic, "roles/pubsub.publisher", BOB)
    assert held(BOB) == ["pubsub.topics.publish"]
    assert held(ADMIN) == sorted(asked)


# -- tokens on long streams ---------------------------------------------------------------------


def test_a_subscriber_keeps_receiving_across_token_lifetimes(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    """Tokens of 2 s, a stream of 8 s: the broker closes it when its token expires, the stock
    client reconnects with a fresh one from google-auth, nothing is lost. A client holding one
    token (the negative control) is refused on its first reconnect."""
    grants = {
        "roles": GRANTS["roles"],
        "bindings": [
            *GRANTS["bindings"],
            _binding(f"projects/{PROJECT}", "roles/pubsub.subscriber", BOB),
        ],
    }
    broker = _start(start_broker, tmp_path, grants, "--token-lifetime", "2")
    try:
        admin = broker.client(ADMIN)
        topic, sub = f"projects/{PROJECT}/topics/long", f"projects/{PROJECT}/subscriptions/long"
        admin.ok("publisher", "create_topic", name=topic)
        admin.ok("subscriber", "create_subscription", name=sub, topic=topic)
        count = 10
        result: dict[str, Any] = {}
        reader = threading.Thread(
            target=lambda: result.update(broker.client(BOB).subscribe(sub, count, timeout=60))
        )
        reader.start()
        for n in range(count):
            admin.ok("publisher", "publish", topic=topic, messages=[{"data": str(n)}])
            time.sleep(0.8)
        reader.join(60)
        assert result["error"] is None, result
        assert sorted(map(int, result["data"])) == list(range(count))
        stats = broker.process.stats()
        streams = stats["rpcs"]["StreamingPull"]
        # (at least 3 openings, 2 of them after a close at expiry: reconnects back off under load)
        assert streams >= 3, f"the stream was opened {streams} times in 8 s of 2 s tokens"
        # GET /stats says why: the broker closed it at token expiry, and each reopening came
        # with a new token.
        auth = stats["auth"]
        assert auth["streams_ended_at_token_expiry"].get(BOB, 0) >= 2, auth
        assert auth["tokens_minted"][BOB] >= streams, auth
        assert auth["calls"][BOB] >= streams, auth
        refused_before = auth["refused"].get("UNAUTHENTICATED", 0)

        fixed = client_environment(broker.metadata[BOB], broker.ca)
        fixed["AUTH_CLIENT_FIXED_TOKEN"] = access_token(broker.metadata[BOB])
        holder = Client(broker.process.host, fixed, tmp_path / "fixed-token.log")
        try:
            ended = holder.subscribe(sub, count=1, timeout=30)
        finally:
            holder.close()
        assert ended["error"] is not None, ended
        assert ended["error"]["code"] == "UNAUTHENTICATED", ended
        assert f"the access token of {BOB} expired" in ended["error"]["message"]
        refused = broker.process.stats()["auth"]["refused"]["UNAUTHENTICATED"]
        assert refused > refused_before, refused
    finally:
        broker.close()


# -- pushes, ID tokens, configuration ----------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    pushes: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).pushes.append((self.headers.get("Authorization", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pushes_go_on_after_the_creator_lost_act_as(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    """Google checks actAs when a push config is set; its service agent then signs the tokens
    with its own Token Creator role, so pushes continue when the creator loses actAs."""
    from google.auth import jwt

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
    broker = _start(start_broker, tmp_path, GRANTS)
    try:
        admin = broker.client(ADMIN)
        topic, sub = f"projects/{PROJECT}/topics/pushed", f"projects/{PROJECT}/subscriptions/pushed"
        push_config = {"push_endpoint": endpoint, "oidc_token": {"service_account_email": PUSHER_B}}
        admin.ok("publisher", "create_topic", name=topic)
        admin.ok(
            "subscriber", "create_subscription", name=sub, topic=topic, push_config=push_config
        )
        broker.close()
        without = {
            "roles": GRANTS["roles"],
            "bindings": [
                b for b in GRANTS["bindings"] if b["role"] != "roles/iam.serviceAccountUser"
            ],
        }
        (tmp_path / "grants.json").write_text(json.dumps(without))
        broker.process.restart()
        broker.ca, broker.metadata = auth_broker_fields(broker.process.log_text())
        admin = broker.client(ADMIN)
        admin.ok("publisher", "publish", topic=topic, messages=[{"data": "still pushed"}])
        deadline = time.monotonic() + 20
        while not _Receiver.pushes and time.monotonic() < deadline:
            time.sleep(0.1)
        authorization, _ = _Receiver.pushes[0]
        with urllib.request.urlopen(broker.process.certs_url, timeout=10) as response:
            certs = json.load(response)
        claims = jwt.decode(authorization.removeprefix("Bearer "), certs=certs, audience=endpoint)  # type: ignore[no-untyped-call]
        assert claims["email"] == PUSHER_B
        # Setting that push config again now needs the actAs the admin no longer holds.
        _denied(
            admin.refused(
                "subscriber", "modify_push_config", subscription=sub, push_config=push_config
            ),
            ADMIN,
            ("iam.serviceAccounts.actAs", f"projects/{PROJECT}/serviceAccounts/{PUSHER_B}"),
        )
    finally:
        broker.close()
        server.shutdown()


def test_metadata_servers_sign_id_tokens_only_for_push_and_invoked_audiences(
    auth: AuthBroker, unique: Callable[[str], str]
) -> None:
    """ID tokens for a push endpoint or a function called directly (--id-token-audiences), for
    nothing else; a directly called function's URL is still no push audience."""
    from google.auth import jwt

    def identity(audience: str) -> urllib.request.Request:
        return urllib.request.Request(
            f"http://{auth.metadata[ALICE]}/computeMetadata/v1/instance/service-accounts/"
            f"default/identity?audience={audience}",
            headers={"Metadata-Flavor": "Google"},
        )

    with urllib.request.urlopen(auth.process.certs_url, timeout=10) as response:
        certs = json.load(response)
    for audience in (PUSH_ENDPOINT, INVOKED):
        with urllib.request.urlopen(identity(audience), timeout=10) as response:
            token = response.read().decode()
        claims = jwt.decode(token, certs=certs, audience=audience)  # type: ignore[no-untyped-call]
        assert (claims["email"], claims["exp"] - claims["iat"]) == (ALICE, 3600)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(identity("https://elsewhere.example/"), timeout=10)
    assert refused.value.code == 403
    says = refused.value.read().decode()
    assert f"--push-audiences: {PUSH_ENDPOINT}; --id-token-audiences: {INVOKED}" in says

    admin = auth.client(ADMIN)
    topic = f"projects/{PROJECT}/topics/{unique('invoked')}"
    sub = f"projects/{PROJECT}/subscriptions/{unique('invoked')}"
    admin.ok("publisher", "create_topic", name=topic)
    push_config = {"push_endpoint": INVOKED, "oidc_token": {"service_account_email": PUSHER_A}}
    code, message = admin.refused(
        "subscriber", "create_subscription", name=sub, topic=topic, push_config=push_config
    )
    assert code == "PERMISSION_DENIED"
    assert f"audience {INVOKED!r} (the endpoint) is not one of" in message, message


def test_the_tls_material_is_private_and_reused(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    broker = _start(start_broker, tmp_path, GRANTS)
    data = tmp_path / "data"
    certificates = ("tls-ca.pem", "tls-server.pem", "tls-iamcredentials.pem")
    files = {name: (data / name).read_bytes() for name in certificates}
    assert {p.name: p.stat().st_mode & 0o777 for p in data.glob("*key*")} == {
        "tls-ca-key.pem": 0o600,
        "tls-server-key.pem": 0o600,
        "tls-iamcredentials-key.pem": 0o600,
        "token-key": 0o600,
        "oidc-key.pem": 0o600,
    }
    broker.process.restart()
    assert {name: (data / name).read_bytes() for name in files} == files
    assert broker.ca == data / "tls-ca.pem"


@pytest.mark.parametrize(
    ("cert", "key", "name"),
    [
        ("tls-server.pem", "tls-server-key.pem", "127.0.0.1"),
        ("tls-iamcredentials.pem", "tls-iamcredentials-key.pem", "iamcredentials.googleapis.com"),
    ],
)
def test_the_certificates_pass_strict_verification(
    auth: AuthBroker, cert: str, key: str, name: str
) -> None:
    """OpenSSL's strict (RFC 5280) checks, which urllib3 turns on from Python 3.13: the key
    identifiers on the CA and the server certificates."""
    data = auth.ca.parent
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(data / cert, data / key)
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with server.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(auth.ca))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version()
    finally:
        thread.join(10)
        listener.close()
    assert not errors, errors


@pytest.mark.parametrize(
    ("grants", "says"),
    [
        (
            {
                "bindings": [
                    {
                        "resource": f"projects/{PROJECT}",
                        "role": "roles/nope",
                        "members": [f"serviceAccount:{ADMIN}"],
                    }
                ]
            },
            "bindings[0].role: 'roles/nope' is neither",
        ),
        (
            {
                "bindings": [
                    {"resource": "topics/x", "role": "roles/pubsub.admin", "members": ["allUsers"]}
                ]
            },
            "bindings[0].resource: 'topics/x' is not",
        ),
        (
            {
                "bindings": [
                    {
                        "resource": f"projects/{PROJECT}",
                        "role": "roles/pubsub.admin",
                        "members": ["bob"],
                    }
                ]
            },
            "bindings[0].members: 'bob' is not a member",
        ),
        ({"roles": {WAITER: ["publish"]}}, f"roles[{WAITER!r}]: 'publish' is not a permission"),
        ({"grants": []}, "unknown key(s) 'grants'"),
    ],
)
def test_a_bad_grants_file_stops_the_broker_naming_the_mistake(
    tmp_path: Path, grants: Any, says: str
) -> None:
    path = tmp_path / "grants.json"
    path.write_text(json.dumps(grants))
    argv = [sys.executable, "-m", "relay.broker", "--port", "0", "--data-dir", str(tmp_path / "d")]
    done = subprocess.run(
        [*argv, "--require-auth", "--grants", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert f"cannot start the broker: {path}: {says}" in done.stderr, done.stderr


def test_auth_options_need_require_auth_and_a_service_account(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "relay.broker", "--port", "0", "--data-dir", str(tmp_path)]
    without = subprocess.run(
        [*argv, "--identity", ADMIN], capture_output=True, text=True, timeout=60
    )
    assert without.returncode == 2
    assert "--identity take(s) effect only with --require-auth" in without.stderr
    bad = subprocess.run(
        [*argv, "--require-auth", "--identity", "bob@example.com"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "'bob@example.com' is not NAME@PROJECT.iam.gserviceaccount.com" in bad.stderr
