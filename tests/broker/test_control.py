"""The broker's HTTP control: GET /stats, POST /control (faults, behaviour, the clock)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.api_core import retry as retries
from google.pubsub_v1 import types

_NO_RETRY = retries.Retry(predicate=lambda exc: False)


def test_control_is_served_only_with_the_flag(
    start_broker: Callable[..., Any], tmp_path: Path
) -> None:
    plain = start_broker(tmp_path / "data")
    with pytest.raises(ValueError, match="HTTP 404"):
        plain.control({"advance_seconds": 1})
    assert plain.stats()["rpcs"] == {}  # /stats is always there
    assert plain.stats()["behaviour"]["short_pull_rate"] == 0.0


def test_injected_faults_fail_the_next_calls_of_a_method(
    broker: Any, subscriber: Any, topic: str, project: str, unique: Callable[[str], str]
) -> None:
    settings = broker.control(
        {"fail": {"method": "CreateSubscription", "code": "RESOURCE_EXHAUSTED", "count": 2}}
    )
    assert settings["faults"] == [
        {"method": "CreateSubscription", "code": "RESOURCE_EXHAUSTED", "count": 2}
    ]
    admin_before = sum(broker.stats()["admin_ops"].values())
    names = [subscriber.subscription_path(project, unique("sub")) for _ in range(3)]
    for name in names[:2]:
        with pytest.raises(exceptions.ResourceExhausted, match="Injected"):
            subscriber.create_subscription(name=name, topic=topic, retry=_NO_RETRY)
    assert subscriber.create_subscription(name=names[2], topic=topic).name == names[2]
    stats = broker.stats()
    assert stats["faults"] == []
    assert sum(stats["admin_ops"].values()) == admin_before + 1  # injected failures cost nothing
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=names[0])


def test_injected_fault_on_streaming_pull(broker: Any, make_sub: Callable[..., str]) -> None:
    sub = make_sub()
    broker.control({"fail": [{"method": "StreamingPull", "code": "UNAVAILABLE"}]})
    channel = grpc.insecure_channel(broker.host)
    call = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=types.StreamingPullRequest.serialize,
        response_deserializer=types.StreamingPullResponse.deserialize,
    )
    first = types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call(iter([first]), timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Injected" in (info.value.details() or "")
    channel.close()


@pytest.mark.parametrize(
    "body",
    [
        {"short_pull_rate": 2},
        {"short_pull_rate": "high"},
        {"stream_lifetime": [30, 5]},
        {"no_such_setting": 1},
        {"profile": "aws"},
        {"fail": {"method": "NoSuchMethod", "code": "UNAVAILABLE"}},
        {"fail": {"method": "Publish", "code": "NOT_A_CODE"}},
        {"fail": {"method": "Publish", "code": "OK"}},
        {"fail": {"method": "Publish", "code": "UNAVAILABLE", "count": 0}},
        {"advance_seconds": -1},
        {"advance_seconds": "a day"},
        {"admin_ops_per_minute": 0},
        {"seed": 1.5},
        [],
    ],
)
def test_bad_control_bodies_are_refused_and_change_nothing(broker: Any, body: Any) -> None:
    before = broker.stats()
    with pytest.raises(ValueError, match="HTTP 400"):
        broker.control({"reorder_rate": 0.5, **body} if isinstance(body, dict) else body)
    after = broker.stats()
    for key in ("behaviour", "faults", "clock_offset_seconds", "admin_ops_per_minute"):
        assert after[key] == before[key]


def test_a_body_that_is_not_json_is_refused(broker: Any) -> None:
    request = urllib.request.Request(
        f"{broker.http_url}/control",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert "not JSON" in json.load(info.value)["error"]


def test_behaviour_changes_at_run_time(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--control"])
    settings = broker.control({"profile": "google", "seed": 9, "stream_lifetime": None})
    assert settings["behaviour"]["seed"] == 9
    assert settings["behaviour"]["short_pull_rate"] == 0.5
    assert settings["behaviour"]["stream_lifetime"] is None
    assert broker.stats()["behaviour"] == settings["behaviour"]
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "runtime")
    sub = subscriber.subscription_path(project, "runtime")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    broker.control({"profile": "off", "short_pull_rate": 1.0})
    publisher.publish(topic, b"a").result(10)
    publisher.publish(topic, b"b").result(10)
    request = {"subscription": sub, "max_messages": 10, "return_immediately": True}
    with pytest.warns(DeprecationWarning, match="return_immediately"):
        sizes = [len(subscriber.pull(request=request, timeout=10).received_messages)]
    assert sizes[0] < 2  # every short pull returns fewer than the two ready
    broker.control({"short_pull_rate": 0.0})
    with pytest.warns(DeprecationWarning, match="return_immediately"):
        got = subscriber.pull(request=request, timeout=10).received_messages
    assert len(got) == 2 - sizes[0]
    publisher.stop()
    subscriber.close()


def test_advancing_the_clock_expires_leases(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data", args=["--control"])
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "leases")
    sub = subscriber.subscription_path(project, "leases")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=600)
    publisher.publish(topic, b"leased").result(10)
    first = subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=10)
    assert len(first.received_messages) == 1
    assert broker.control({"advance_seconds": 601})["clock_offset_seconds"] == 601
    again = subscriber.pull(request={"subscription": sub, "max_messages": 1}, timeout=10)
    assert [m.message.data for m in again.received_messages] == [b"leased"]
    assert again.received_messages[0].ack_id != first.received_messages[0].ack_id
    # publish_time stays real time: what the client sees is not shifted by the advance
    stamp = again.received_messages[0].message.publish_time
    assert stamp == first.received_messages[0].message.publish_time
    publisher.stop()
    subscriber.close()
