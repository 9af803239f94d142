"""Snapshots and Seek to a snapshot, through the stock google-cloud-pubsub client."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAY = 24 * 3600


def _pull(subscriber: Any, sub: str, n: int = 100) -> list[Any]:
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": n, "return_immediately": True}, timeout=10
    )
    return list(response.received_messages)


def _drain(subscriber: Any, sub: str) -> list[bytes]:
    """Pull and ack everything; the data, sorted."""
    got = _pull(subscriber, sub)
    if got:
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    return sorted(m.message.data for m in got)


def _snapshot(subscriber: Any, project: str, unique: Callable[[str], str]) -> str:
    return subscriber.snapshot_path(project, unique("snap"))


def test_snapshot_lifecycle(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    sub = make_sub()
    name = _snapshot(subscriber, project, unique)
    created = subscriber.create_snapshot(
        request={"name": name, "subscription": sub, "labels": {"team": "relay"}}
    )
    assert created.name == name
    assert created.topic == topic
    assert created.labels == {"team": "relay"}
    # Empty backlog: the full 7 days.
    assert abs(created.expire_time.timestamp() - (time.time() + 7 * DAY)) < 60
    got = subscriber.get_snapshot(request={"snapshot": name})
    assert (got.name, got.topic, got.labels) == (name, topic, {"team": "relay"})
    listed = subscriber.list_snapshots(request={"project": f"projects/{project}"})
    assert name in [s.name for s in listed]
    assert list(publisher.list_topic_snapshots(request={"topic": topic})) == [name]
    subscriber.delete_snapshot(request={"snapshot": name})
    with pytest.raises(exceptions.NotFound, match="snapshot"):
        subscriber.get_snapshot(request={"snapshot": name})
    with pytest.raises(exceptions.NotFound):
        subscriber.delete_snapshot(request={"snapshot": name})
    assert list(publisher.list_topic_snapshots(request={"topic": topic})) == []


def test_snapshot_without_a_name_gets_one_in_the_subscriptions_project(
    subscriber: Any, make_sub: Callable[..., str], project: str, topic: str
) -> None:
    created = subscriber.create_snapshot(request={"subscription": make_sub()})
    assert created.name.startswith(f"projects/{project}/snapshots/")
    assert subscriber.get_snapshot(request={"snapshot": created.name}).topic == topic


def test_list_snapshots_pages(
    subscriber: Any, make_sub: Callable[..., str], unique: Callable[[str], str]
) -> None:
    project = unique("proj")
    sub = make_sub()
    names = [subscriber.snapshot_path(project, f"s-{i:02d}") for i in range(5)]
    for name in names:
        subscriber.create_snapshot(request={"name": name, "subscription": sub})
    pages = subscriber.list_snapshots(request={"project": f"projects/{project}", "page_size": 2})
    assert [len(page.snapshots) for page in pages.pages] == [2, 2, 1]
    listed = subscriber.list_snapshots(request={"project": f"projects/{project}", "page_size": 2})
    assert [s.name for s in listed] == names


def test_create_snapshot_refusals(
    subscriber: Any, make_sub: Callable[..., str], project: str, unique: Callable[[str], str]
) -> None:
    sub = make_sub()
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    with pytest.raises(exceptions.AlreadyExists, match="already exists"):
        subscriber.create_snapshot(request={"name": name, "subscription": sub})
    with pytest.raises(exceptions.NotFound, match="subscription"):
        subscriber.create_snapshot(
            request={
                "name": _snapshot(subscriber, project, unique),
                "subscription": f"projects/{project}/subscriptions/no-such-sub",
            }
        )


@pytest.mark.parametrize(
    "snapshot_id", ["ab", "1abc", "goog-snap", "has space", "x" * 256, "bad/slash"]
)
def test_invalid_snapshot_names(
    subscriber: Any, make_sub: Callable[..., str], project: str, snapshot_id: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid \\[snapshots\\] name"):
        subscriber.create_snapshot(
            request={
                "name": f"projects/{project}/snapshots/{snapshot_id}",
                "subscription": make_sub(),
            }
        )


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ({"Upper": "v"}, "label key 'Upper'"),
        ({"1digit": "v"}, "label key '1digit'"),
        ({"": "v"}, "label key ''"),
        ({"k" * 64: "v"}, "label key"),
        ({"k": "V"}, r"label value .* \(label 'k'\)"),
        ({"k": "v" * 64}, r"label value .* \(label 'k'\)"),
        ({"k": "a.b"}, r"label value .* \(label 'k'\)"),
        ({f"k{i}": "v" for i in range(65)}, "at most 64"),
    ],
)
def test_invalid_snapshot_labels(
    subscriber: Any,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
    labels: dict[str, str],
    words: str,
) -> None:
    name = _snapshot(subscriber, project, unique)
    with pytest.raises(exceptions.InvalidArgument, match=words):
        subscriber.create_snapshot(
            request={"name": name, "subscription": make_sub(), "labels": labels}
        )
    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(request={"snapshot": name})


def test_valid_international_and_empty_labels(
    subscriber: Any, make_sub: Callable[..., str], project: str, unique: Callable[[str], str]
) -> None:
    labels = {"équipe": "données", "empty": "", "k_-9": "v_-9"}
    created = subscriber.create_snapshot(
        request={
            "name": _snapshot(subscriber, project, unique),
            "subscription": make_sub(),
            "labels": labels,
        }
    )
    assert created.labels == labels


def test_seek_to_snapshot_brings_back_what_was_acked_after_it(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    sub = make_sub()
    publisher.publish(topic, b"acked-before").result(10)
    assert _drain(subscriber, sub) == [b"acked-before"]
    publisher.publish(topic, b"backlog-1").result(10)
    publisher.publish(topic, b"backlog-2").result(10)
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    publisher.publish(topic, b"after").result(10)
    assert _drain(subscriber, sub) == [b"after", b"backlog-1", b"backlog-2"]
    assert _pull(subscriber, sub) == []
    subscriber.seek(request={"subscription": sub, "snapshot": name})
    # The backlog at creation and everything published since; not what was acked before it.
    assert _drain(subscriber, sub) == [b"after", b"backlog-1", b"backlog-2"]


def test_seek_to_snapshot_acks_what_the_snapshot_does_not_hold(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    source, other = make_sub(), make_sub()
    publisher.publish(topic, b"old").result(10)
    assert _drain(subscriber, source) == [b"old"]
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": source})
    publisher.publish(topic, b"new").result(10)
    # `other` still has "old" unacked; the snapshot does not hold it.
    subscriber.seek(request={"subscription": other, "snapshot": name})
    assert _drain(subscriber, other) == [b"new"]


def test_seek_to_snapshot_applies_the_subscriptions_filter(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    source = make_sub()
    filtered = make_sub(filter='attributes.kind = "a"')
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": source})
    publisher.publish(topic, b"a", kind="a").result(10)
    publisher.publish(topic, b"b", kind="b").result(10)
    assert _drain(subscriber, filtered) == [b"a"]
    subscriber.seek(request={"subscription": filtered, "snapshot": name})
    assert _drain(subscriber, filtered) == [b"a"]


def test_seek_to_snapshot_of_another_topic_is_refused(
    publisher: Any,
    subscriber: Any,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    other_topic = publisher.topic_path(project, unique("topic"))
    publisher.create_topic(name=other_topic)
    other_sub = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(name=other_sub, topic=other_topic)
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": other_sub})
    with pytest.raises(exceptions.InvalidArgument, match="different from that of the snapshot"):
        subscriber.seek(request={"subscription": make_sub(), "snapshot": name})


def test_seek_replays_to_a_stream(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    sub = make_sub()
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    publisher.publish(topic, b"replayed").result(10)
    assert _drain(subscriber, sub) == [b"replayed"]
    received: list[bytes] = []

    def callback(message: Any) -> None:
        received.append(message.data)
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        subscriber.seek(request={"subscription": sub, "snapshot": name})
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        future.cancel()
    assert received == [b"replayed"]


def test_update_snapshot_labels_only(
    subscriber: Any, make_sub: Callable[..., str], project: str, unique: Callable[[str], str]
) -> None:
    name = _snapshot(subscriber, project, unique)
    created = subscriber.create_snapshot(request={"name": name, "subscription": make_sub()})
    updated = subscriber.update_snapshot(
        request={
            "snapshot": {"name": name, "labels": {"env": "test"}},
            "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
        }
    )
    assert updated.labels == {"env": "test"}
    assert subscriber.get_snapshot(request={"snapshot": name}).labels == {"env": "test"}
    for paths, words in [
        (["expire_time"], "cannot be updated"),
        (["topic"], "cannot be updated"),
        (["nonsense"], "update_mask"),
        ([], "update_mask"),
    ]:
        with pytest.raises(exceptions.InvalidArgument, match=words):
            subscriber.update_snapshot(
                request={
                    "snapshot": {"name": name, "expire_time": {"seconds": 1}},
                    "update_mask": field_mask_pb2.FieldMask(paths=paths),
                }
            )
    with pytest.raises(exceptions.InvalidArgument, match="label key"):
        subscriber.update_snapshot(
            request={
                "snapshot": {"name": name, "labels": {"BAD": "x"}},
                "update_mask": field_mask_pb2.FieldMask(paths=["labels"]),
            }
        )
    got = subscriber.get_snapshot(request={"snapshot": name})
    assert got.expire_time == created.expire_time
    assert got.labels == {"env": "test"}


def test_deleting_the_topic_leaves_snapshots_on_deleted_topic(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    sub = make_sub()
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    publisher.delete_topic(topic=topic)
    assert subscriber.get_snapshot(request={"snapshot": name}).topic == "_deleted-topic_"
    with pytest.raises(exceptions.FailedPrecondition):
        subscriber.seek(request={"subscription": sub, "snapshot": name})
    with pytest.raises(exceptions.NotFound):
        publisher.list_topic_snapshots(request={"topic": topic})
    with pytest.raises(exceptions.FailedPrecondition, match="deleted"):
        subscriber.create_snapshot(
            request={"name": _snapshot(subscriber, project, unique), "subscription": sub}
        )


def test_snapshot_keeps_what_is_published_when_no_subscription_is_left(
    publisher: Any,
    subscriber: Any,
    topic: str,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    source = make_sub()
    name = _snapshot(subscriber, project, unique)
    subscriber.create_snapshot(request={"name": name, "subscription": source})
    subscriber.delete_subscription(subscription=source)
    publisher.publish(topic, b"nobody subscribed").result(10)
    later = make_sub()
    assert _pull(subscriber, later) == []
    subscriber.seek(request={"subscription": later, "snapshot": name})
    assert _drain(subscriber, later) == [b"nobody subscribed"]


# -- durability and storage (brokers of their own) ----------------------------------------------


def _setup(broker: Any, project: str) -> tuple[Any, Any, str, str]:
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "snap-topic")
    sub = subscriber.subscription_path(project, "snap-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    return publisher, subscriber, topic, sub


def test_snapshot_survives_kill(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber, topic, sub = _setup(broker, project)
    for data in (b"b1", b"b2"):
        publisher.publish(topic, data).result(10)
    name = subscriber.snapshot_path(project, "durable-snap")
    created = subscriber.create_snapshot(
        request={"name": name, "subscription": sub, "labels": {"k": "v"}}
    )
    publisher.publish(topic, b"after").result(10)
    assert _drain(subscriber, sub) == [b"after", b"b1", b"b2"]

    broker.restart(kill=True)

    got = subscriber.get_snapshot(request={"snapshot": name})
    assert (got.topic, got.labels, got.expire_time) == (topic, {"k": "v"}, created.expire_time)
    subscriber.seek(request={"subscription": sub, "snapshot": name})
    assert _drain(subscriber, sub) == [b"after", b"b1", b"b2"]
    publisher.stop()
    subscriber.close()


def test_snapshot_holds_messages_in_the_store_until_deleted(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    """Acked messages a snapshot holds keep their stored batch; deleting the snapshot frees it."""
    broker = start_broker(tmp_path / "data")
    publisher, subscriber, topic, sub = _setup(broker, project)
    publisher.publish(topic, b"held").result(10)
    name = subscriber.snapshot_path(project, "holding-snap")
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    publisher.publish(topic, b"held-too").result(10)
    assert _drain(subscriber, sub) == [b"held", b"held-too"]
    assert broker.stop() == 0
    database = broker.data_dir / "broker.sqlite3"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (2,)
    broker.start()  # the start-up sweep must keep them too
    subscriber.seek(request={"subscription": sub, "snapshot": name})
    assert _drain(subscriber, sub) == [b"held", b"held-too"]
    subscriber.delete_snapshot(request={"snapshot": name})
    deadline = time.monotonic() + 10
    count = None
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as db:
            count = db.execute("SELECT COUNT(*) FROM batches").fetchone()
        if count == (0,):
            break
        time.sleep(0.1)
    assert count == (0,)
    publisher.stop()
    subscriber.close()


def _age_messages(database: Path, seconds: float) -> None:
    """Make every stored message `seconds` older (the broker must be stopped)."""
    with sqlite3.connect(database) as db:
        db.execute("UPDATE batches SET publish_ns = publish_ns - ?", (int(seconds * 1e9),))


def test_snapshot_lifetime_is_seven_days_minus_the_oldest_backlog_age(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber, topic, sub = _setup(broker, project)
    publisher.publish(topic, b"three days old").result(10)
    assert broker.stop() == 0
    _age_messages(broker.data_dir / "broker.sqlite3", 3 * DAY)
    broker.start()
    created = subscriber.create_snapshot(
        request={"name": subscriber.snapshot_path(project, "aged"), "subscription": sub}
    )
    assert abs(created.expire_time.timestamp() - (time.time() + 4 * DAY)) < 60
    publisher.stop()
    subscriber.close()


def test_snapshot_expiring_within_an_hour_is_refused(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber, topic, sub = _setup(broker, project)
    publisher.publish(topic, b"almost seven days old").result(10)
    assert broker.stop() == 0
    _age_messages(broker.data_dir / "broker.sqlite3", 7 * DAY - 1800)
    broker.start()
    name = subscriber.snapshot_path(project, "too-old")
    with pytest.raises(exceptions.FailedPrecondition, match="1 hour"):
        subscriber.create_snapshot(request={"name": name, "subscription": sub})
    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(request={"snapshot": name})
    publisher.stop()
    subscriber.close()


def test_snapshot_is_deleted_when_it_expires(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber, _topic, sub = _setup(broker, project)
    name = subscriber.snapshot_path(project, "expiring")
    subscriber.create_snapshot(request={"name": name, "subscription": sub})
    assert broker.stop() == 0
    with sqlite3.connect(broker.data_dir / "broker.sqlite3") as db:
        db.execute("UPDATE snapshots SET expire_ns = ?", (time.time_ns() + 3_000_000_000,))
    broker.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            subscriber.get_snapshot(request={"snapshot": name})
        except exceptions.NotFound:
            break
        time.sleep(0.1)
    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(request={"snapshot": name})
    assert broker.stop() == 0
    with sqlite3.connect(broker.data_dir / "broker.sqlite3") as db:  # deleted, not just unloaded
        assert db.execute("SELECT COUNT(*) FROM snapshots").fetchone() == (0,)
    publisher.stop()
    subscriber.close()
