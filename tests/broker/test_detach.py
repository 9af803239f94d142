"""DetachSubscription and export subscriptions (BigQuery, Cloud Storage, Bigtable), with the stock
client."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pull(subscriber: Any, sub: str) -> list[Any]:
    response = subscriber.pull(
        request={"subscription": sub, "max_messages": 100, "return_immediately": True}, timeout=10
    )
    return list(response.received_messages)


def test_detach_subscription(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    """The sample's flow: detach, then the subscription reads detached."""
    sub = make_sub()
    publisher.publish(topic, b"dropped").result(10)
    publisher.detach_subscription(request={"subscription": sub})
    got = subscriber.get_subscription(request={"subscription": sub})
    assert got.detached
    assert got.topic == topic
    assert sub not in list(publisher.list_topic_subscriptions(request={"topic": topic}))
    with pytest.raises(exceptions.FailedPrecondition, match="detached"):
        _pull(subscriber, sub)
    publisher.publish(topic, b"not delivered").result(10)
    with pytest.raises(exceptions.FailedPrecondition):
        _pull(subscriber, sub)
    publisher.detach_subscription(request={"subscription": sub})  # again: no error
    subscriber.delete_subscription(request={"subscription": sub})


def test_detach_ends_open_streams_and_refuses_new_ones(
    publisher: Any, subscriber: Any, make_sub: Callable[..., str]
) -> None:
    sub = make_sub()
    future = subscriber.subscribe(sub, lambda message: None)
    time.sleep(0.5)
    publisher.detach_subscription(request={"subscription": sub})
    with pytest.raises(exceptions.FailedPrecondition):
        future.result(20)
    again = subscriber.subscribe(sub, lambda message: None)
    with pytest.raises(exceptions.FailedPrecondition):
        again.result(20)


def test_detached_subscription_cannot_seek_or_snapshot(
    publisher: Any,
    subscriber: Any,
    make_sub: Callable[..., str],
    project: str,
    unique: Callable[[str], str],
) -> None:
    sub = make_sub()
    publisher.detach_subscription(request={"subscription": sub})
    with pytest.raises(exceptions.FailedPrecondition):
        subscriber.seek(request={"subscription": sub, "time": {"seconds": 1}})
    with pytest.raises(exceptions.FailedPrecondition):
        subscriber.create_snapshot(
            request={"name": subscriber.snapshot_path(project, unique("s")), "subscription": sub}
        )


def test_detached_is_not_settable(
    subscriber: Any, make_sub: Callable[..., str], topic: str, project: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="detached"):
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(project, "born-detached"),
                "topic": topic,
                "detached": True,
            }
        )
    sub = make_sub()
    with pytest.raises(exceptions.InvalidArgument, match="cannot be updated"):
        subscriber.update_subscription(
            request={
                "subscription": {"name": sub, "detached": True},
                "update_mask": field_mask_pb2.FieldMask(paths=["detached"]),
            }
        )
    assert not subscriber.get_subscription(request={"subscription": sub}).detached


@pytest.fixture
def failing_endpoint() -> Iterator[tuple[str, list[float]]]:
    """An HTTP endpoint answering 500 to every push: (url, the times of the pushes)."""
    calls: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(time.monotonic())
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", calls
    server.shutdown()
    server.server_close()


def test_detach_stops_pushes(
    publisher: Any,
    topic: str,
    make_sub: Callable[..., str],
    failing_endpoint: tuple[str, list[float]],
) -> None:
    url, calls = failing_endpoint
    sub = make_sub(
        push_config={"push_endpoint": url},
        retry_policy={"minimum_backoff": {"nanos": 100_000_000}, "maximum_backoff": {"seconds": 1}},
    )
    publisher.publish(topic, b"retried forever").result(10)
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(calls) >= 3  # the endpoint keeps failing, so the push is retried
    publisher.detach_subscription(request={"subscription": sub})
    time.sleep(0.5)  # a push already in flight may still land
    settled = len(calls)
    time.sleep(1.5)  # longer than the maximum backoff: a live subscription would push again
    assert len(calls) == settled


def test_detach_refusals(publisher: Any, project: str) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.detach_subscription(
            request={"subscription": f"projects/{project}/subscriptions/no-such-sub"}
        )
    with pytest.raises(exceptions.InvalidArgument):
        publisher.detach_subscription(request={"subscription": "not-a-subscription"})


def test_detach_survives_kill_and_drops_the_backlog(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    publisher, subscriber = broker.publisher(), broker.subscriber()
    topic = publisher.topic_path(project, "detach-topic")
    sub = subscriber.subscription_path(project, "detach-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    publisher.publish(topic, b"backlog").result(10)
    publisher.detach_subscription(request={"subscription": sub})

    broker.restart(kill=True)

    assert subscriber.get_subscription(request={"subscription": sub}).detached
    publisher.publish(topic, b"after restart").result(10)
    with pytest.raises(exceptions.FailedPrecondition):
        _pull(subscriber, sub)
    assert list(publisher.list_topic_subscriptions(request={"topic": topic})) == []
    assert broker.stop() == 0
    with sqlite3.connect(broker.data_dir / "broker.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
    publisher.stop()
    subscriber.close()


# -- export subscriptions ------------------------------------------------------------------------

_EXPORTS = [
    ("bigquery_config", {"table": "p.dataset.table", "write_metadata": True}, "BigQuery"),
    ("cloud_storage_config", {"bucket": "my-bucket"}, "Cloud Storage"),
    ("bigtable_config", {"table": "projects/p/instances/i/tables/t"}, "Bigtable"),
]


@pytest.mark.parametrize(("field", "config", "service"), _EXPORTS)
def test_export_subscriptions_are_refused(
    subscriber: Any, topic: str, project: str, field: str, config: dict[str, Any], service: str
) -> None:
    name = subscriber.subscription_path(project, f"export-{field.split('_')[0]}")
    with pytest.raises(exceptions.MethodNotImplemented, match=f"cannot deliver to {service}"):
        subscriber.create_subscription(request={"name": name, "topic": topic, field: config})
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(request={"subscription": name})


@pytest.mark.parametrize(("field", "config", "service"), _EXPORTS)
def test_export_config_cannot_be_added_later(
    subscriber: Any, make_sub: Callable[..., str], field: str, config: dict[str, Any], service: str
) -> None:
    sub = make_sub()
    with pytest.raises(exceptions.MethodNotImplemented, match=service):
        subscriber.update_subscription(
            request={
                "subscription": {"name": sub, field: config},
                "update_mask": field_mask_pb2.FieldMask(paths=[field]),
            }
        )
    assert field not in subscriber.get_subscription(request={"subscription": sub})
