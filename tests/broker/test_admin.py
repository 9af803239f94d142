"""Topic and subscription administration through the real client library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.api_core import exceptions
from google.protobuf import duration_pb2, field_mask_pb2


def test_topic_lifecycle(publisher: Any, project: str, unique: Callable[[str], str]) -> None:
    name = publisher.topic_path(project, unique("topic"))
    created = publisher.create_topic(request={"name": name, "labels": {"team": "relay"}})
    assert created.name == name
    assert publisher.get_topic(topic=name).labels["team"] == "relay"
    listed = [t.name for t in publisher.list_topics(project=f"projects/{project}")]
    assert name in listed
    with pytest.raises(exceptions.AlreadyExists, match="already exists"):
        publisher.create_topic(name=name)
    publisher.delete_topic(topic=name)
    with pytest.raises(exceptions.NotFound, match="not found"):
        publisher.get_topic(topic=name)
    with pytest.raises(exceptions.NotFound):
        publisher.delete_topic(topic=name)


def test_update_topic(publisher: Any, topic: str) -> None:
    updated = publisher.update_topic(
        request={
            "topic": {
                "name": topic,
                "labels": {"a": "1"},
                "message_retention_duration": duration_pb2.Duration(seconds=3600),
            },
            "update_mask": field_mask_pb2.FieldMask(paths=["labels", "message_retention_duration"]),
        }
    )
    assert updated.labels == {"a": "1"}
    assert publisher.get_topic(topic=topic).message_retention_duration.total_seconds() == 3600
    with pytest.raises(exceptions.InvalidArgument, match="update_mask"):
        publisher.update_topic(
            request={"topic": {"name": topic}, "update_mask": field_mask_pb2.FieldMask(paths=[])}
        )


def test_any_project_and_paging(publisher: Any, unique: Callable[[str], str]) -> None:
    project = unique("proj")
    names = [publisher.topic_path(project, f"t-{i:02d}") for i in range(5)]
    for name in names:
        publisher.create_topic(name=name)
    pages = publisher.list_topics(request={"project": f"projects/{project}", "page_size": 2})
    assert [t.name for t in pages] == names  # the pager follows next_page_token
    fresh = publisher.list_topics(request={"project": f"projects/{project}", "page_size": 2})
    assert [len(page.topics) for page in fresh.pages] == [2, 2, 1]


@pytest.mark.parametrize(
    "topic_id",
    ["ab", "1abc", "goog-topic", "has space", "x" * 256, "bad/slash", "ä-umlaut"],
)
def test_invalid_topic_names(publisher: Any, project: str, topic_id: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid \\[topics\\] name"):
        publisher.create_topic(name=f"projects/{project}/topics/{topic_id}")


def test_valid_unusual_topic_names(
    publisher: Any, project: str, unique: Callable[[str], str]
) -> None:
    for topic_id in [unique("a.b~c+d%e_f"), "A" + "x" * 254]:
        name = f"projects/{project}/topics/{topic_id}"
        assert publisher.create_topic(name=name).name == name
        publisher.delete_topic(topic=name)


def test_subscription_lifecycle(
    subscriber: Any, publisher: Any, topic: str, project: str, unique: Callable[[str], str]
) -> None:
    name = subscriber.subscription_path(project, unique("sub"))
    created = subscriber.create_subscription(
        request={"name": name, "topic": topic, "ack_deadline_seconds": 30, "labels": {"x": "y"}}
    )
    assert created.ack_deadline_seconds == 30
    assert created.message_retention_duration.total_seconds() == 7 * 24 * 3600
    assert created.expiration_policy.ttl.total_seconds() == 31 * 24 * 3600
    got = subscriber.get_subscription(subscription=name)
    assert got.topic == topic
    assert got.labels == {"x": "y"}
    assert name in [s.name for s in subscriber.list_subscriptions(project=f"projects/{project}")]
    assert list(publisher.list_topic_subscriptions(topic=topic)) == [name]
    with pytest.raises(exceptions.AlreadyExists):
        subscriber.create_subscription(name=name, topic=topic)
    subscriber.delete_subscription(subscription=name)
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=name)
    assert list(publisher.list_topic_subscriptions(topic=topic)) == []


def test_default_ack_deadline_and_bounds(make_sub: Callable[..., str], subscriber: Any) -> None:
    assert subscriber.get_subscription(subscription=make_sub()).ack_deadline_seconds == 10
    for bad in (5, 601):
        with pytest.raises(exceptions.InvalidArgument, match="ack_deadline_seconds"):
            make_sub(ack_deadline_seconds=bad)


def test_subscription_needs_topic(
    subscriber: Any, project: str, unique: Callable[[str], str]
) -> None:
    name = subscriber.subscription_path(project, unique("sub"))
    with pytest.raises(exceptions.NotFound, match="not found"):
        subscriber.create_subscription(name=name, topic=f"projects/{project}/topics/nope-nope")
    with pytest.raises(exceptions.InvalidArgument):
        subscriber.create_subscription(name=name, topic="not-a-topic-path")


def test_update_subscription(make_sub: Callable[..., str], subscriber: Any) -> None:
    name = make_sub()
    updated = subscriber.update_subscription(
        request={
            "subscription": {"name": name, "ack_deadline_seconds": 42, "labels": {"k": "v"}},
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds", "labels"]),
        }
    )
    assert updated.ack_deadline_seconds == 42
    assert updated.labels == {"k": "v"}
    assert subscriber.get_subscription(subscription=name).ack_deadline_seconds == 42
    for field in ("filter", "enable_message_ordering"):
        with pytest.raises(exceptions.InvalidArgument, match="cannot be updated"):
            subscriber.update_subscription(
                request={
                    "subscription": {"name": name},
                    "update_mask": field_mask_pb2.FieldMask(paths=[field]),
                }
            )
    with pytest.raises(exceptions.InvalidArgument, match="ack_deadline_seconds"):
        subscriber.update_subscription(
            request={
                "subscription": {"name": name, "ack_deadline_seconds": 1000},
                "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
            }
        )


def test_modify_push_config(make_sub: Callable[..., str], subscriber: Any) -> None:
    name = make_sub()
    subscriber.modify_push_config(
        request={"subscription": name, "push_config": {"push_endpoint": "http://127.0.0.1:9/x"}}
    )
    assert subscriber.get_subscription(subscription=name).push_config.push_endpoint.endswith("/x")
    subscriber.modify_push_config(request={"subscription": name, "push_config": {}})
    assert subscriber.get_subscription(subscription=name).push_config.push_endpoint == ""
    with pytest.raises(exceptions.InvalidArgument, match="push_endpoint"):
        subscriber.modify_push_config(
            request={"subscription": name, "push_config": {"push_endpoint": "ftp://x"}}
        )


def test_delete_topic_detaches_subscriptions(
    make_sub: Callable[..., str], subscriber: Any, publisher: Any, topic: str
) -> None:
    name = make_sub()
    publisher.publish(topic, b"before").result(10)
    publisher.delete_topic(topic=topic)
    assert subscriber.get_subscription(subscription=name).topic == "_deleted-topic_"
    response = subscriber.pull(subscription=name, max_messages=10, timeout=10)
    assert [m.message.data for m in response.received_messages] == [b"before"]


def test_invalid_subscription_settings(make_sub: Callable[..., str], topic: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filter": "attributes.x = "}, "filter"),
        ({"filter": 'attributes.k = "' + "v" * 260 + '"'}, "256"),
        (
            {"dead_letter_policy": {"dead_letter_topic": topic, "max_delivery_attempts": 4}},
            "max_delivery_attempts",
        ),
        (
            {"dead_letter_policy": {"dead_letter_topic": topic, "max_delivery_attempts": 101}},
            "max_delivery_attempts",
        ),
        ({"retry_policy": {"minimum_backoff": {"seconds": 700}}}, "retry_policy"),
        (
            {
                "retry_policy": {
                    "minimum_backoff": {"seconds": 5},
                    "maximum_backoff": {"seconds": 1},
                }
            },
            "minimum_backoff",
        ),
        ({"message_retention_duration": {"seconds": 40 * 24 * 3600}}, "retention"),
    ]
    for fields, words in cases:
        with pytest.raises(exceptions.InvalidArgument, match=words):
            make_sub(**fields)


def test_dead_letter_topic_must_exist(make_sub: Callable[..., str], project: str) -> None:
    with pytest.raises(exceptions.NotFound):
        make_sub(dead_letter_policy={"dead_letter_topic": f"projects/{project}/topics/missing-dlq"})
