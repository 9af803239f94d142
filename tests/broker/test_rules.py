"""Google's resource rules, enforced with Google's status code and a message naming rule and value.

docs/broker.md ("Google's rules") has the table; one test per rule, each with the value just
inside the limit accepted and just outside refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2
from google.pubsub_v1 import types

DAY = 86400


def _update(subscriber: Any, name: str, paths: list[str], **fields: Any) -> Any:
    return subscriber.update_subscription(
        request={
            "subscription": {"name": name, **fields},
            "update_mask": field_mask_pb2.FieldMask(paths=paths),
        }
    )


# -- expiration policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [1, 3600, DAY - 1])
def test_expiration_ttl_below_one_day_is_refused(make_sub: Callable[..., str], ttl: int) -> None:
    words = rf"ttl: {ttl} seconds; the minimum is 1 day"
    with pytest.raises(exceptions.InvalidArgument, match=words):
        make_sub(
            expiration_policy={"ttl": {"seconds": ttl}},
            message_retention_duration={"seconds": 600},
        )


def test_expiration_ttl_of_one_day_is_accepted(
    make_sub: Callable[..., str], subscriber: Any
) -> None:
    name = make_sub(
        expiration_policy={"ttl": {"seconds": DAY}}, message_retention_duration={"seconds": DAY}
    )
    assert subscriber.get_subscription(subscription=name).expiration_policy.ttl.days == 1


def test_expiration_ttl_below_the_retention_is_refused(
    make_sub: Callable[..., str], subscriber: Any
) -> None:
    # The default retention is 7 days: a 1-day TTL alone is below it.
    with pytest.raises(exceptions.InvalidArgument, match="less than the message_retention"):
        make_sub(expiration_policy={"ttl": {"seconds": DAY}})
    name = make_sub(
        expiration_policy={"ttl": {"seconds": 2 * DAY}},
        message_retention_duration={"seconds": DAY},
    )
    with pytest.raises(exceptions.InvalidArgument, match="less than the message_retention"):
        _update(
            subscriber,
            name,
            ["message_retention_duration"],
            message_retention_duration={"seconds": 3 * DAY},
        )
    assert subscriber.get_subscription(subscription=name).message_retention_duration.days == 1


# -- retention -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [1, 599, 7 * DAY + 1, 31 * DAY])
def test_subscription_retention_outside_10_minutes_to_7_days_is_refused(
    make_sub: Callable[..., str], seconds: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=rf"{seconds} seconds; a subscription"):
        make_sub(message_retention_duration={"seconds": seconds})


@pytest.mark.parametrize("seconds", [600, 7 * DAY])
def test_subscription_retention_bounds_are_accepted(
    make_sub: Callable[..., str], subscriber: Any, seconds: int
) -> None:
    name = make_sub(message_retention_duration={"seconds": seconds})
    got = subscriber.get_subscription(subscription=name).message_retention_duration
    assert got.total_seconds() == seconds


@pytest.mark.parametrize("seconds", [1, 599, 31 * DAY + 1])
def test_topic_retention_outside_10_minutes_to_31_days_is_refused(
    publisher: Any, project: str, unique: Callable[[str], str], topic: str, seconds: int
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=rf"{seconds} seconds; a topic"):
        publisher.create_topic(
            request={
                "name": publisher.topic_path(project, unique("topic")),
                "message_retention_duration": {"seconds": seconds},
            }
        )
    with pytest.raises(exceptions.InvalidArgument, match=rf"{seconds} seconds; a topic"):
        publisher.update_topic(
            request={
                "topic": {"name": topic, "message_retention_duration": {"seconds": seconds}},
                "update_mask": field_mask_pb2.FieldMask(paths=["message_retention_duration"]),
            }
        )


def test_topic_retention_of_31_days_is_accepted(
    publisher: Any, project: str, unique: Callable[[str], str]
) -> None:
    name = publisher.topic_path(project, unique("topic"))
    created = publisher.create_topic(
        request={"name": name, "message_retention_duration": {"seconds": 31 * DAY}}
    )
    assert created.message_retention_duration.days == 31


# -- push endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://example.com/push",
        "http://10.0.0.1/push",
        "HTTPS://example.com/push",
        "https:///no-host",
        "http://[::1",
        "ftp://127.0.0.1/x",
    ],
)
def test_push_endpoints_need_https_except_loopback(
    make_sub: Callable[..., str], subscriber: Any, endpoint: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="https://") as info:
        make_sub(push_config={"push_endpoint": endpoint})
    assert repr(endpoint) in info.value.message
    pull = make_sub()
    with pytest.raises(exceptions.InvalidArgument, match="https://"):
        subscriber.modify_push_config(
            request={"subscription": pull, "push_config": {"push_endpoint": endpoint}}
        )
    with pytest.raises(exceptions.InvalidArgument, match="https://"):
        _update(subscriber, pull, ["push_config"], push_config={"push_endpoint": endpoint})
    assert subscriber.get_subscription(subscription=pull).push_config.push_endpoint == ""


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://example.com/push",
        "http://127.0.0.1:9/push",
        "http://127.0.0.2:9/push",
        "http://localhost:9/push",
        "http://[::1]:9/push",
    ],
)
def test_https_and_loopback_http_endpoints_are_accepted(
    make_sub: Callable[..., str], subscriber: Any, endpoint: str
) -> None:
    name = make_sub(push_config={"push_endpoint": endpoint})
    assert subscriber.get_subscription(subscription=name).push_config.push_endpoint == endpoint
    subscriber.modify_push_config(request={"subscription": name, "push_config": {}})


def test_exactly_once_delivery_is_for_pull_subscriptions_only(
    make_sub: Callable[..., str], subscriber: Any
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="exactly-once"):
        make_sub(
            enable_exactly_once_delivery=True,
            push_config={"push_endpoint": "https://example.com/push"},
        )
    name = make_sub(enable_exactly_once_delivery=True)
    with pytest.raises(exceptions.InvalidArgument, match="exactly-once"):
        subscriber.modify_push_config(
            request={
                "subscription": name,
                "push_config": {"push_endpoint": "https://example.com/push"},
            }
        )
    assert subscriber.get_subscription(subscription=name).enable_exactly_once_delivery


def test_push_oidc_token_needs_a_service_account(make_sub: Callable[..., str]) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="service_account_email"):
        make_sub(
            push_config={
                "push_endpoint": "https://example.com/push",
                "oidc_token": {"audience": "https://example.com"},
            }
        )


# -- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ({"Team": "relay"}, "key 'Team'"),
        ({"1team": "relay"}, "key '1team'"),
        ({"": "relay"}, "key ''"),
        ({"k" * 64: "v"}, "key 'kkk"),
        ({"team": "Relay"}, "value 'Relay'"),
        ({"team": "v" * 64}, "value 'vvv"),
        ({"team": "a b"}, "value 'a b'"),
        ({f"k{i}": "v" for i in range(65)}, "65 labels"),
    ],
    ids=["upper", "digit-first", "empty", "long-key", "upper-value", "long-value", "space", "many"],
)
def test_labels_follow_googles_rules(
    make_sub: Callable[..., str],
    publisher: Any,
    project: str,
    unique: Callable[[str], str],
    labels: dict[str, str],
    words: str,
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=words):
        make_sub(labels=labels)
    with pytest.raises(exceptions.InvalidArgument, match=words):
        publisher.create_topic(
            request={"name": publisher.topic_path(project, unique("topic")), "labels": labels}
        )


def test_valid_labels_are_accepted(make_sub: Callable[..., str], subscriber: Any) -> None:
    labels = {"team": "relay", "k" * 63: "v" * 63, "a_b-c": "", "zähler": "ünf"}
    labels.update({f"n{i}": "x" for i in range(64 - len(labels))})
    assert subscriber.get_subscription(subscription=make_sub(labels=labels)).labels == labels


# -- StreamingPull ---------------------------------------------------------------------------------


def _stream_error(broker: Any, sub: str, later: types.StreamingPullRequest) -> grpc.RpcError:
    channel = grpc.insecure_channel(broker.host)
    call = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=types.StreamingPullRequest.serialize,
        response_deserializer=types.StreamingPullResponse.deserialize,
    )
    first = types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
    try:
        with pytest.raises(grpc.RpcError) as info:
            for _ in call(iter([first, later]), timeout=10):
                pass
        return info.value
    finally:
        channel.close()


@pytest.mark.parametrize(
    "field", ["max_outstanding_messages", "max_outstanding_bytes", "subscription"]
)
def test_first_request_only_fields_end_the_stream(
    broker: Any, make_sub: Callable[..., str], field: str
) -> None:
    sub = make_sub()
    value: Any = sub if field == "subscription" else 10
    error = _stream_error(broker, sub, types.StreamingPullRequest(**{field: value}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


# -- state written under older rules ---------------------------------------------------------------


def test_subscriptions_stored_before_a_rule_are_kept(
    start_broker: Callable[..., Any], tmp_path: Path, project: str
) -> None:
    """A subscription the store holds with settings rules now refuse (a 1-hour TTL, a 1-minute
    retention, as an older broker accepted) is served after a restart, not dropped."""
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "old-rules")
    sub = subscriber.subscription_path(project, "old-rules")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    publisher.publish(topic, b"kept").result(10)
    assert broker.stop() == 0
    with sqlite3.connect(broker.data_dir / "broker.sqlite3") as db:
        (body,) = db.execute("SELECT body FROM subscriptions WHERE name = ?", (sub,)).fetchone()
        pb = types.Subscription.deserialize(body)
        pb.expiration_policy.ttl = {"seconds": 3600}
        pb.message_retention_duration = {"seconds": 60}
        db.execute(
            "UPDATE subscriptions SET body = ? WHERE name = ?",
            (types.Subscription.serialize(pb), sub),
        )
    broker.start()
    got = subscriber.get_subscription(subscription=sub)
    assert got.expiration_policy.ttl.total_seconds() == 3600
    pulled = subscriber.pull(request={"subscription": sub, "max_messages": 5}, timeout=10)
    assert [m.message.data for m in pulled.received_messages] == [b"kept"]
    publisher.stop()
    subscriber.close()


def _push_attribute(concurrency: str) -> dict[str, Any]:
    return {
        "push_endpoint": "https://example.com/push",
        "attributes": {"x-relay-push-concurrency": concurrency},
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"labels": {"k" * 20_000: "v"}},
        {"labels": {"team": "\u0000" * 20_000}},
        {"push_config": {"push_endpoint": "http://example.com/" + "x" * 20_000}},
        {"push_config": {"push_endpoint": "https://[" + "%" * 5_000}},
        {"push_config": _push_attribute("9" * 5_000)},
        {"push_config": _push_attribute("²")},
        {"expiration_policy": {"ttl": {"seconds": -(2**40)}}},
        {"message_retention_duration": {"seconds": 2**40, "nanos": -5}},
    ],
    ids=[
        "huge-label-key",
        "nul-label-value",
        "huge-endpoint",
        "broken-url",
        "huge-concurrency",
        "superscript-concurrency",
        "negative",
        "huge",
    ],
)
def test_hostile_settings_get_invalid_argument(
    make_sub: Callable[..., str], fields: dict[str, Any]
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as info:
        make_sub(**fields)
    assert len(info.value.message) < 1000
