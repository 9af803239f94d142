"""Google's administrator-operation quota: per project, per rolling minute, RESOURCE_EXHAUSTED."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.api_core import retry as retries
from google.protobuf import field_mask_pb2

from relay.broker._admin import ADMIN_METHODS

_NO_RETRY = retries.Retry(predicate=lambda exc: False)


@pytest.fixture
def small_quota(start_broker: Callable[..., Any], tmp_path: Path) -> Any:
    """A broker of its own allowing 5 administrator operations per project per minute."""
    return start_broker(tmp_path / "data", args=["--admin-ops-per-minute", "5", "--control"])


def test_admin_operations_past_the_quota_are_refused(small_quota: Any, project: str) -> None:
    publisher, subscriber = small_quota.publisher(), small_quota.subscriber()
    topic = publisher.topic_path(project, "quota-topic")
    publisher.create_topic(name=topic)  # 1
    sub = subscriber.subscription_path(project, "quota-sub")
    subscriber.create_subscription(name=sub, topic=topic)  # 2
    publisher.get_topic(topic=topic)  # 3: reads count too
    list(publisher.list_topics(project=f"projects/{project}"))  # 4
    subscriber.get_subscription(subscription=sub)  # 5
    with pytest.raises(exceptions.ResourceExhausted, match="Quota exceeded") as info:
        subscriber.create_subscription(
            name=subscriber.subscription_path(project, "one-too-many"), topic=topic, retry=_NO_RETRY
        )
    assert "Administrator operations" in info.value.message
    assert f"project:{project}" in info.value.message
    # Data-plane calls are not administrator operations.
    publisher.publish(topic, b"still flows").result(10)
    pulled = subscriber.pull(request={"subscription": sub, "max_messages": 5}, timeout=10)
    assert [m.message.data for m in pulled.received_messages] == [b"still flows"]
    stats = small_quota.stats()
    assert stats["admin_ops"] == {project: 5}
    assert stats["admin_ops_refused"] == {project: 1}
    assert stats["admin_ops_by_method"]["CreateSubscription"] == 1  # the refused one not charged
    assert stats["rpcs"]["CreateSubscription"] == 2
    assert stats["rpcs"]["Publish"] == 1
    small_quota.control({"advance_seconds": 61})  # a fresh minute: the refused one was not made
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(
            subscription=subscriber.subscription_path(project, "one-too-many"), retry=_NO_RETRY
        )
    publisher.stop()
    subscriber.close()


def test_the_budget_is_per_project_and_per_rolling_minute(small_quota: Any) -> None:
    publisher = small_quota.publisher()
    for index in range(5):
        publisher.create_topic(name=publisher.topic_path("project-a", f"topic-{index}"))
    with pytest.raises(exceptions.ResourceExhausted):
        publisher.get_topic(topic=publisher.topic_path("project-a", "topic-0"), retry=_NO_RETRY)
    publisher.create_topic(name=publisher.topic_path("project-b", "topic-0"))  # its own budget
    small_quota.control({"advance_seconds": 59})
    with pytest.raises(exceptions.ResourceExhausted):
        publisher.get_topic(topic=publisher.topic_path("project-a", "topic-0"), retry=_NO_RETRY)
    small_quota.control({"advance_seconds": 1.5})  # the first five are a minute old now
    assert publisher.get_topic(topic=publisher.topic_path("project-a", "topic-0")).name
    publisher.stop()


def test_the_quota_project_header_is_charged(small_quota: Any, project: str) -> None:
    """Google charges the caller's project (x-goog-user-project), not the resource's."""
    publisher = small_quota.publisher()
    topic = publisher.topic_path(project, "charged-elsewhere")
    publisher.create_topic(name=topic, metadata=[("x-goog-user-project", "billing-project")])
    assert small_quota.stats()["admin_ops"] == {"billing-project": 1}
    publisher.stop()


def test_every_served_admin_method_is_charged(
    broker: Any,
    publisher: Any,
    subscriber: Any,
    project: str,
    unique: Callable[[str], str],
) -> None:
    before = broker.stats()["admin_ops_by_method"]
    topic = publisher.topic_path(project, unique("topic"))
    sub = subscriber.subscription_path(project, unique("sub"))
    publisher.create_topic(name=topic)
    publisher.get_topic(topic=topic)
    publisher.update_topic(
        request={
            "topic": {"name": topic, "labels": {"a": "b"}},
            "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
        }
    )
    # one page each, however many topics and subscriptions the session broker holds by now
    list(publisher.list_topics(request={"project": f"projects/{project}", "page_size": 100_000}))
    subscriber.create_subscription(name=sub, topic=topic)
    list(publisher.list_topic_subscriptions(topic=topic))
    subscriber.get_subscription(subscription=sub)
    subscriber.update_subscription(
        request={
            "subscription": {"name": sub, "ack_deadline_seconds": 20},
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
        }
    )
    list(
        subscriber.list_subscriptions(
            request={"project": f"projects/{project}", "page_size": 100_000}
        )
    )
    subscriber.modify_push_config(request={"subscription": sub, "push_config": {}})
    subscriber.seek(request={"subscription": sub, "time": dt.datetime.now(dt.UTC)})
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)
    after = broker.stats()["admin_ops_by_method"]
    served = {
        "CreateTopic", "GetTopic", "UpdateTopic", "ListTopics", "ListTopicSubscriptions",
        "DeleteTopic", "CreateSubscription", "GetSubscription", "UpdateSubscription",
        "ListSubscriptions", "DeleteSubscription", "ModifyPushConfig", "Seek",
    }  # fmt: skip
    assert served <= ADMIN_METHODS
    assert {m: after.get(m, 0) - before.get(m, 0) for m in served} == dict.fromkeys(served, 1)
    # The set also names what Google counts that other parts of the broker serve or will.
    assert {"CreateSnapshot", "UpdateSnapshot", "DeleteSnapshot", "DetachSubscription"} <= (
        ADMIN_METHODS
    )
    assert not {"Publish", "Pull", "StreamingPull", "Acknowledge", "ModifyAckDeadline"} & (
        ADMIN_METHODS
    )
