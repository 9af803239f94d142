"""Seek to a time before a subscription existed, on a topic with message retention.

Google: with a topic's message_retention_duration set, "messages published to the topic in the
last message_retention_duration are always available to subscribers ... it allows any attached
subscription to seek to a timestamp that is up to message_retention_duration in the past". relay
relies on it: create a subscription, then seek it back to its creation time minus a margin, so
that what was published while it was being created is not lost.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _stamp(moment: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.fromtimestamp(moment, tz=dt.UTC))
    return stamp


def _pull(subscriber: Any, sub: str) -> list[bytes]:
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": 100, "return_immediately": True}, timeout=10
    )
    return sorted(m.message.data for m in response.received_messages)


def _topic(publisher: Any, project: str, unique: Callable[[str], str], **fields: Any) -> str:
    topic = publisher.topic_path(project, unique("topic"))
    publisher.create_topic(request={"name": topic, **fields})
    return topic


def test_seek_before_creation_replays_retained_matching_messages(
    publisher: Any, subscriber: Any, project: str, unique: Callable[[str], str]
) -> None:
    topic = _topic(publisher, project, unique, message_retention_duration={"seconds": 600})
    before = time.time() - 1
    publisher.publish(topic, b"M1", job="42").result(10)
    publisher.publish(topic, b"other job", job="7").result(10)
    sub = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "filter": 'attributes.job = "42"'}
    )
    assert _pull(subscriber, sub) == []  # published before the subscription existed
    subscriber.seek(request={"subscription": sub, "time": _stamp(before)})
    assert _pull(subscriber, sub) == [b"M1"]


def test_seek_before_creation_stops_at_the_seek_time(
    publisher: Any, subscriber: Any, project: str, unique: Callable[[str], str]
) -> None:
    topic = _topic(publisher, project, unique, message_retention_duration={"seconds": 600})
    publisher.publish(topic, b"too early").result(10)
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    publisher.publish(topic, b"in the window").result(10)
    sub = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(name=sub, topic=topic)
    subscriber.seek(request={"subscription": sub, "time": _stamp(cutoff)})
    assert _pull(subscriber, sub) == [b"in the window"]


def test_seek_before_creation_without_topic_retention_replays_nothing(
    publisher: Any,
    subscriber: Any,
    project: str,
    unique: Callable[[str], str],
    make_sub: Callable[..., str],
) -> None:
    topic = _topic(publisher, project, unique)
    holder = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(name=holder, topic=topic)  # keeps the message stored
    before = time.time() - 1
    publisher.publish(topic, b"early").result(10)
    sub = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(name=sub, topic=topic)
    subscriber.seek(request={"subscription": sub, "time": _stamp(before)})
    assert _pull(subscriber, sub) == []
    assert _pull(subscriber, holder) == [b"early"]
