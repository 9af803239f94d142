"""IAM policies on topics, subscriptions and snapshots (google.iam.v1.IAMPolicy), stock client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.pubsub_v1 import types

EMPTY_ETAG = b"\x00\x20\x01"  # "ACAB": what Google returns for a resource without a policy


def _policy(*bindings: tuple[str, list[str]], etag: bytes = b"") -> policy_pb2.Policy:
    policy = policy_pb2.Policy(etag=etag)
    for role, members in bindings:
        policy.bindings.add(role=role, members=members)
    return policy


def _bindings(policy: Any) -> dict[str, list[str]]:
    return {b.role: list(b.members) for b in policy.bindings}


def test_topic_policy_as_the_samples_set_it(publisher: Any, topic: str) -> None:
    """get_topic_policy / set_topic_policy: read, add two bindings, write."""
    policy = publisher.get_iam_policy(request={"resource": topic})
    assert list(policy.bindings) == []
    assert policy.etag == EMPTY_ETAG
    policy.bindings.add(role="roles/pubsub.viewer", members=["allUsers"])
    policy.bindings.add(role="roles/pubsub.publisher", members=["group:cloud-logs@google.com"])
    stored = publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert _bindings(stored) == {
        "roles/pubsub.viewer": ["allUsers"],
        "roles/pubsub.publisher": ["group:cloud-logs@google.com"],
    }
    assert stored.etag not in (b"", EMPTY_ETAG)
    assert stored.version == 1
    again = publisher.get_iam_policy(request={"resource": topic})
    assert _bindings(again) == _bindings(stored)
    assert again.etag == stored.etag


def test_subscription_policy_as_the_samples_set_it(
    subscriber: Any, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    policy = subscriber.get_iam_policy(request={"resource": sub})
    policy.bindings.add(role="roles/pubsub.viewer", members=["allUsers"])
    policy.bindings.add(role="roles/editor", members=["group:cloud-logs@google.com"])
    subscriber.set_iam_policy(request={"resource": sub, "policy": policy})
    assert _bindings(subscriber.get_iam_policy(request={"resource": sub})) == {
        "roles/pubsub.viewer": ["allUsers"],
        "roles/editor": ["group:cloud-logs@google.com"],
    }


def test_snapshot_policy(
    subscriber: Any, make_sub: Callable[..., str], project: str, unique: Callable[[str], str]
) -> None:
    name = subscriber.snapshot_path(project, unique("snap"))
    subscriber.create_snapshot(request={"name": name, "subscription": make_sub()})
    policy = _policy(("roles/pubsub.subscriber", ["serviceAccount:a@p.iam.gserviceaccount.com"]))
    subscriber.set_iam_policy(request={"resource": name, "policy": policy})
    assert _bindings(subscriber.get_iam_policy(request={"resource": name})) == {
        "roles/pubsub.subscriber": ["serviceAccount:a@p.iam.gserviceaccount.com"]
    }
    subscriber.delete_snapshot(request={"snapshot": name})
    with pytest.raises(exceptions.NotFound):
        subscriber.get_iam_policy(request={"resource": name})


def test_test_iam_permissions_as_the_samples_call_it(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    wanted = ["pubsub.topics.publish", "pubsub.topics.update"]
    granted = publisher.test_iam_permissions(request={"resource": topic, "permissions": wanted})
    assert list(granted.permissions) == wanted
    sub = make_sub()
    wanted = ["pubsub.subscriptions.consume", "pubsub.subscriptions.update"]
    granted = subscriber.test_iam_permissions(request={"resource": sub, "permissions": wanted})
    assert list(granted.permissions) == wanted


@pytest.mark.parametrize(
    ("permission", "words"),
    [
        ("pubsub.topics.*", "wildcards"),
        ("*", "wildcards"),
        ("pubsub.topics.fly", "pubsub.topics.fly"),
        ("pubsub.subscriptions.consume", "pubsub.subscriptions.consume"),  # not a topic's
        ("pubsub.topics.create", "pubsub.topics.create"),  # granted on the project only
        ("storage.objects.get", "storage.objects.get"),
    ],
)
def test_test_iam_permissions_refuses_invalid_permissions(
    publisher: Any, topic: str, permission: str, words: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=words.replace("*", r"\*")):
        publisher.test_iam_permissions(
            request={"resource": topic, "permissions": ["pubsub.topics.get", permission]}
        )


def test_test_iam_permissions_on_a_missing_resource_is_empty(
    publisher: Any, project: str
) -> None:
    """iam_policy.proto: "If the resource does not exist, this will return an empty set of
    permissions, not a NOT_FOUND error"."""
    granted = publisher.test_iam_permissions(
        request={
            "resource": f"projects/{project}/topics/no-such-topic",
            "permissions": ["pubsub.topics.publish"],
        }
    )
    assert list(granted.permissions) == []


def test_stale_etag_is_aborted(publisher: Any, topic: str) -> None:
    first = publisher.get_iam_policy(request={"resource": topic})
    first.bindings.add(role="roles/pubsub.viewer", members=["user:a@example.com"])
    written = publisher.set_iam_policy(request={"resource": topic, "policy": first})
    stale = _policy(("roles/pubsub.admin", ["user:b@example.com"]), etag=first.etag)
    with pytest.raises(exceptions.Aborted, match="concurrent policy changes"):
        publisher.set_iam_policy(request={"resource": topic, "policy": stale})
    current = publisher.get_iam_policy(request={"resource": topic})
    assert _bindings(current) == {"roles/pubsub.viewer": ["user:a@example.com"]}
    assert current.etag == written.etag
    # Without an etag the write is unconditional.
    unconditional = _policy(("roles/pubsub.admin", ["user:b@example.com"]))
    publisher.set_iam_policy(request={"resource": topic, "policy": unconditional})
    assert _bindings(publisher.get_iam_policy(request={"resource": topic})) == {
        "roles/pubsub.admin": ["user:b@example.com"]
    }


def test_update_mask_limits_what_changes(publisher: Any, topic: str) -> None:
    publisher.set_iam_policy(
        request={"resource": topic, "policy": _policy(("roles/viewer", ["user:a@example.com"]))}
    )
    # Only the etag path: the bindings stay as they were.
    publisher.set_iam_policy(
        request={
            "resource": topic,
            "policy": _policy(("roles/owner", ["user:x@example.com"])),
            "update_mask": {"paths": ["etag"]},
        }
    )
    assert _bindings(publisher.get_iam_policy(request={"resource": topic})) == {
        "roles/viewer": ["user:a@example.com"]
    }
    with pytest.raises(exceptions.InvalidArgument, match="update_mask"):
        publisher.set_iam_policy(
            request={"resource": topic, "policy": _policy(), "update_mask": {"paths": ["owner"]}}
        )


def test_bindings_of_one_role_are_merged(publisher: Any, topic: str) -> None:
    policy = _policy(
        ("roles/pubsub.viewer", ["user:a@example.com", "user:a@example.com"]),
        ("roles/pubsub.viewer", ["user:b@example.com"]),
    )
    stored = publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    merged = ["user:a@example.com", "user:b@example.com"]
    assert _bindings(stored) == {"roles/pubsub.viewer": merged}


@pytest.mark.parametrize(
    "member",
    [
        "user:not-an-email",
        "alice@example.com",
        "users:a@example.com",
        "domain:",
        "allusers",
        "serviceAccount:",
        "deleted:user:a@example.com",
        "group:a@example.com" + "x" * 2000,
        "",
    ],
)
def test_invalid_members_are_refused(publisher: Any, topic: str, member: str) -> None:
    policy = _policy(("roles/pubsub.viewer", [member]))
    with pytest.raises(exceptions.InvalidArgument, match="Invalid member"):
        publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert list(publisher.get_iam_policy(request={"resource": topic}).bindings) == []


@pytest.mark.parametrize(
    "member",
    [
        "allUsers",
        "allAuthenticatedUsers",
        "user:alice@example.com",
        "serviceAccount:svc@p.iam.gserviceaccount.com",
        "group:team@example.com",
        "domain:example.com",
        "deleted:user:alice@example.com?uid=123456789012345678901",
        "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/s",
        "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/*",
    ],
)
def test_valid_members_are_accepted(publisher: Any, topic: str, member: str) -> None:
    policy = _policy(("roles/pubsub.viewer", [member]))
    stored = publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert _bindings(stored) == {"roles/pubsub.viewer": [member]}


@pytest.mark.parametrize(
    "role", ["roles/storage.admin", "roles/reader", "pubsub.viewer", "roles/pubsub.flyer", ""]
)
def test_invalid_roles_are_refused(publisher: Any, topic: str, role: str) -> None:
    policy = _policy((role, ["user:a@example.com"]))
    with pytest.raises(exceptions.InvalidArgument, match="not supported for this resource"):
        publisher.set_iam_policy(request={"resource": topic, "policy": policy})


def test_custom_roles_are_accepted(publisher: Any, topic: str, project: str) -> None:
    role = f"projects/{project}/roles/relayPublisher"
    stored = publisher.set_iam_policy(
        request={"resource": topic, "policy": _policy((role, ["user:a@example.com"]))}
    )
    assert _bindings(stored) == {role: ["user:a@example.com"]}


def test_policy_rules(publisher: Any, topic: str) -> None:
    cases: list[tuple[Any, str]] = []
    empty_binding = _policy(("roles/pubsub.viewer", []))
    cases.append((empty_binding, "no members"))
    conditional = _policy(("roles/pubsub.viewer", ["user:a@example.com"]))
    conditional.version = 3
    conditional.bindings[0].condition.expression = "request.time < timestamp('2030-01-01')"
    cases.append((conditional, "conditional"))
    bad_version = _policy()
    bad_version.version = 2
    cases.append((bad_version, "version"))
    crowded = _policy(("roles/pubsub.viewer", [f"user:u{i}@example.com" for i in range(1501)]))
    cases.append((crowded, "at most 1500"))
    for policy, words in cases:
        with pytest.raises(exceptions.InvalidArgument, match=words):
            publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    audited = _policy()
    audited.audit_configs.add(service="allServices")
    with pytest.raises(exceptions.InvalidArgument, match="audit_configs"):
        publisher.set_iam_policy(
            request={
                "resource": topic,
                "policy": audited,
                "update_mask": {"paths": ["bindings", "audit_configs"]},
            }
        )
    with pytest.raises(exceptions.InvalidArgument, match="requested_policy_version"):
        publisher.get_iam_policy(
            request={"resource": topic, "options": {"requested_policy_version": 2}}
        )


def test_resources_that_are_missing_or_not_pubsub(publisher: Any, project: str) -> None:
    missing = f"projects/{project}/topics/no-such-topic"
    with pytest.raises(exceptions.NotFound):
        publisher.get_iam_policy(request={"resource": missing})
    with pytest.raises(exceptions.NotFound):
        publisher.set_iam_policy(request={"resource": missing, "policy": _policy()})
    with pytest.raises(exceptions.InvalidArgument, match="type project"):
        publisher.get_iam_policy(request={"resource": f"projects/{project}"})
    for resource in ("topics/t", f"projects/{project}/buckets/abc", f"projects/{project}/topics/x"):
        with pytest.raises(exceptions.InvalidArgument):
            publisher.get_iam_policy(request={"resource": resource})


def test_policies_go_away_with_their_resource(
    publisher: Any, subscriber: Any, project: str, unique: Callable[[str], str]
) -> None:
    topic = publisher.topic_path(project, unique("topic"))
    sub = subscriber.subscription_path(project, unique("sub"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    policy = _policy(("roles/pubsub.viewer", ["allUsers"]))
    for client, resource in ((publisher, topic), (subscriber, sub)):
        client.set_iam_policy(request={"resource": resource, "policy": policy})
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    for client, resource in ((publisher, topic), (subscriber, sub)):
        recreated = client.get_iam_policy(request={"resource": resource})
        assert list(recreated.bindings) == []
        assert recreated.etag == EMPTY_ETAG


def test_policies_survive_kill(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "iam-topic")
    sub = subscriber.subscription_path(project, "iam-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    topic_policy = publisher.set_iam_policy(
        request={"resource": topic, "policy": _policy(("roles/pubsub.publisher", ["allUsers"]))}
    )
    sub_policy = subscriber.set_iam_policy(
        request={"resource": sub, "policy": _policy(("roles/pubsub.subscriber", ["allUsers"]))}
    )

    broker.restart(kill=True)

    written_policies = ((publisher, topic, topic_policy), (subscriber, sub, sub_policy))
    for client, resource, written in written_policies:
        got = client.get_iam_policy(request={"resource": resource})
        assert _bindings(got) == _bindings(written)
        assert got.etag == written.etag
    # A stale etag is still refused after the restart.
    with pytest.raises(exceptions.Aborted):
        publisher.set_iam_policy(
            request={"resource": topic, "policy": _policy(etag=EMPTY_ETAG)}
        )
    publisher.stop()
    subscriber.close()


_HUGE = "a" * 100_000


@pytest.mark.parametrize(
    ("method", "request_message", "response_class"),
    [
        (
            "/google.iam.v1.IAMPolicy/GetIamPolicy",
            iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/p/topics/{_HUGE}"),
            policy_pb2.Policy,
        ),
        (
            "/google.iam.v1.IAMPolicy/GetIamPolicy",
            iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{_HUGE}"),
            policy_pb2.Policy,
        ),
        (
            "/google.iam.v1.IAMPolicy/TestIamPermissions",
            iam_policy_pb2.TestIamPermissionsRequest(
                resource="projects/p/topics/abc", permissions=[_HUGE, f"*{_HUGE}"]
            ),
            iam_policy_pb2.TestIamPermissionsResponse,
        ),
        (
            "/google.iam.v1.IAMPolicy/TestIamPermissions",
            iam_policy_pb2.TestIamPermissionsRequest(
                resource="projects/p/topics/abc", permissions=[f"*{_HUGE}"]
            ),
            iam_policy_pb2.TestIamPermissionsResponse,
        ),
        (
            "/google.pubsub.v1.Subscriber/CreateSnapshot",
            types.CreateSnapshotRequest.pb()(
                name=f"projects/p/snapshots/{_HUGE}", subscription="projects/p/subscriptions/abc"
            ),
            types.Snapshot.pb(),
        ),
        (
            "/google.pubsub.v1.Subscriber/ListSnapshots",
            types.ListSnapshotsRequest.pb()(project=f"projects/{_HUGE}/x"),
            types.ListSnapshotsResponse.pb(),
        ),
    ],
)
def test_huge_values_are_invalid_argument(
    broker: Any, method: str, request_message: Any, response_class: Any
) -> None:
    """Raw gRPC (the stock client refuses to send such names in its routing header): the error
    message quotes a bounded part of the value, so the status itself can be sent."""
    with grpc.insecure_channel(broker.host) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=type(request_message).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request_message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details()) < 2_000


def test_schema_policy_is_stored_and_goes_with_its_schema(
    schema_client: Any, project: str, unique: Callable[[str], str]
) -> None:
    from google.pubsub_v1.types import Schema

    schema = schema_client.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(
                type_=Schema.Type.AVRO,
                definition='{"type": "record", "name": "R", "fields": '
                '[{"name": "a", "type": "int"}]}',
            ),
            "schema_id": unique("schema"),
        }
    )
    policy = _policy(("roles/pubsub.viewer", ["allUsers"]))
    schema_client.set_iam_policy(request={"resource": schema.name, "policy": policy})
    stored = schema_client.get_iam_policy(request={"resource": schema.name})
    assert _bindings(stored) == {"roles/pubsub.viewer": ["allUsers"]}
    schema_client.delete_schema(request={"name": schema.name})
    with pytest.raises(exceptions.NotFound):
        schema_client.get_iam_policy(request={"resource": schema.name})
