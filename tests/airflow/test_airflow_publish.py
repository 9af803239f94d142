"""Publishing: checks before anything is sent, retries that keep the ce-id, clean-up on failure."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relay.airflow._names import task_subscription
from relay.airflow._publish import (
    build_requests,
    correlation_ids_for,
    publish_requests,
    task_request_ids,
)
from relay.airflow.exceptions import RelayConfigError, RelayPublishError
from relay.airflow.hooks import RelayHook
from relay.protocol import EXAMPLE_ECHO, SchemaValidationError, from_message, to_binary

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
]
REPLY = "projects/relay-test/topics/results"


def requests(items: list[Any], **kwargs: Any) -> list[Any]:
    return build_requests(
        EXAMPLE_ECHO,
        items,
        source="/t",
        reply_to=REPLY,
        correlation_ids=kwargs.pop("correlation_ids", correlation_ids_for("g1", len(items), None)),
        **kwargs,
    )


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(SchemaValidationError, match=r"\$\.crash"):
        requests([{"crash": "x"}])
    with pytest.raises(RelayConfigError, match="correlation id 'a\" OR' is not valid"):
        correlation_ids_for("g1", 1, ['a" OR'])
    with pytest.raises(RelayConfigError, match=r"'abc' has no group.*<group>.<item>"):
        correlation_ids_for("g1", 1, ["abc"])
    with pytest.raises(RelayConfigError, match=r"'b\.1' is not in group 'a'"):
        correlation_ids_for("g1", 2, ["a.1", "b.1"])
    with pytest.raises(RelayConfigError, match="unique"):
        correlation_ids_for("g1", 2, ["a.1", "a.1"])
    with pytest.raises(RelayConfigError, match="one each"):
        correlation_ids_for("g1", 2, ["a.1"])
    with pytest.raises(RelayConfigError, match="one per item"):
        requests([{}, {}], ids=["x"])


def test_correlation_ids_are_the_group_and_an_index() -> None:
    assert correlation_ids_for("t0af", 3, None) == ["t0af.0", "t0af.1", "t0af.2"]
    assert correlation_ids_for("t0af", 2, ["orders.7", "orders.x.y"]) == ["orders.7", "orders.x.y"]


def test_request_ids_belong_to_the_task_instance() -> None:
    def ids(run_id: str = "r1", map_index: int = -1, count: int = 2) -> list[str]:
        ti = SimpleNamespace(dag_id="d", run_id=run_id, task_id="t", map_index=map_index)
        return task_request_ids({"ti": ti}, count)

    assert ids() == ids()  # a retry of the same task instance re-sends the same requests
    assert len(set(ids())) == 2
    assert not set(ids()) & set(ids(run_id="r2"))
    assert not set(ids()) & set(ids(map_index=0))
    (event,) = requests([{}], ids=ids(count=1))
    assert event.id == ids()[0]
    assert event.correlationid == "g1.0"


def test_publish_retries_keep_the_ce_id(
    start_broker: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project: str,
    unique: Any,
) -> None:
    own = start_broker(tmp_path / "own")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
    topic = f"projects/{project}/topics/{unique('requests')}"
    subscription = f"projects/{project}/subscriptions/{unique('function')}"
    own.publisher().create_topic(name=topic)
    own.subscriber().create_subscription(name=subscription, topic=topic)
    (event,) = requests([{"retry": True}])
    own.kill()  # the first attempts fail: nobody listens
    restart = threading.Timer(2.0, own.start)
    restart.start()
    started = time.monotonic()
    try:
        (message_id,) = RelayHook().publish(
            topic, [to_binary(event)], attempts=10, timeout=1.5, backoff=0.2
        )
    finally:
        restart.join()
    assert time.monotonic() - started > 1.5  # it did have to retry
    received = []
    deadline = time.monotonic() + 20
    while not received and time.monotonic() < deadline:
        response = own.subscriber().pull(subscription=subscription, max_messages=10, timeout=5)
        received += list(response.received_messages)
    assert received
    # however many copies the retries produced, each is the same CloudEvent
    ids = {from_message(r.message.data, dict(r.message.attributes)).id for r in received}
    assert ids == {event.id}
    assert message_id


def test_a_failed_publish_removes_the_subscription_it_created(
    broker: Any, project: str, unique: Any
) -> None:
    from google.api_core.exceptions import NotFound

    results = f"projects/{project}/topics/{unique('results')}"
    broker.publisher().create_topic(name=results)
    hook = RelayHook()
    group = unique("g")
    events = build_requests(
        EXAMPLE_ECHO,
        [{"i": 1}],
        source="/t",
        reply_to=results,
        correlation_ids=correlation_ids_for(group, 1, None),
    )
    path = task_subscription(project, results, group)
    with pytest.raises(RelayPublishError, match="could not publish"):
        publish_requests(
            hook,
            topic=f"projects/{project}/topics/{unique('missing')}",  # no such topic
            reply_topic=results,
            events=events,
            deadline=time.time() + 30,
            attempts=2,
            timeout=5,
        )
    with pytest.raises(NotFound):
        broker.subscriber().get_subscription(subscription=path, timeout=10)


def test_the_api_endpoint_comes_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pub/Sub API over TLS with real credentials (not PUBSUB_EMULATOR_HOST's anonymous one)."""
    import json

    extra = {"project": "relay-test", "api_endpoint": "127.0.0.1:8443"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELAY_TLS", json.dumps({"conn_type": "google_cloud_platform", "extra": extra})
    )
    assert RelayHook("relay_tls").get_client_options().api_endpoint == "127.0.0.1:8443"
    assert RelayHook("relay_tls").get_client_options("other:1").api_endpoint == "other:1"
    assert RelayHook().get_client_options().api_endpoint is None
