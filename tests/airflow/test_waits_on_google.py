"""relay's waits against a broker that behaves the way Google is allowed to (`--profile google`:
short and empty pulls, acked messages delivered again, reordering, streams closed by the server,
slow admin calls) and against Google's quotas: every result arrives, no false timeout, and a task
costs at most three administrator operations whatever its fan-out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _airflow_responder import answer

from relay.airflow import _wakehub
from relay.airflow._publish import Published, build_requests, correlation_ids_for, publish_requests
from relay.airflow._result_trigger import RelayResultTrigger, wait_blocking
from relay.airflow._results import finish, take_results
from relay.airflow._wait import ResultWait
from relay.airflow.exceptions import RelayPublishError
from relay.airflow.hooks import RelayHook
from relay.protocol import EXAMPLE_ECHO, Event, succeeded, to_binary

pytestmark = [pytest.mark.timeout(300)]
PROJECT = "relay-test"


@pytest.fixture
def on(google_broker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Google-like broker as this test's Pub/Sub, with admin calls taking 200 ms."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", google_broker.host)
    google_broker.control({"admin_latency": [0.2, 0.2]})
    yield google_broker
    google_broker.control({"admin_latency": [0.05, 0.5]})


def make_topics(broker: Any) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    topics = {
        "requests": f"projects/{PROJECT}/topics/requests-{suffix}",
        "results": f"projects/{PROJECT}/topics/results-{suffix}",
    }
    publisher = broker.publisher()
    publisher.create_topic(name=topics["requests"])
    publisher.create_topic(
        request={"name": topics["results"], "message_retention_duration": {"seconds": 600}}
    )
    return topics


def send(topics: dict[str, str], count: int) -> tuple[list[Event], Published]:
    events = build_requests(
        EXAMPLE_ECHO,
        [{"i": i} for i in range(count)],
        source="/tests/google",
        reply_to=topics["results"],
        correlation_ids=correlation_ids_for(f"t{uuid.uuid4().hex[:12]}", count, None),
    )
    published = publish_requests(
        RelayHook(),
        topic=topics["requests"],
        reply_topic=topics["results"],
        events=events,
        deadline=time.time() + 120,
    )
    return events, published


def answer_all(broker: Any, events: list[Event]) -> None:
    publisher = broker.publisher()
    futures = []
    for event in events:
        message = to_binary(succeeded(event, event.data, source="/tests/google"))
        futures.append(publisher.publish(event.replyto, message.data, **message.attributes))
    for future in futures:
        future.result(60)


def wait_of(topics: dict[str, str], published: Published, timeout: float) -> ResultWait:
    return ResultWait(
        completion_topic=topics["results"],
        subscription=str(published.subscription),
        correlation_ids=published.correlation_ids,
        deadline=time.time() + timeout,
    )


def admin_ops(broker: Any) -> dict[str, int]:
    return dict(broker.stats()["admin_ops_by_method"])


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {m: after[m] - before.get(m, 0) for m in after}
    return {m: n for m, n in changed.items() if n}


async def test_a_1000_item_fan_out_gets_every_result_in_the_triggerer(on: Any) -> None:
    topics = make_topics(on)
    before = admin_ops(on)
    events, published = await asyncio.to_thread(send, topics, 1000)
    trigger = RelayResultTrigger(wait=wait_of(topics, published, 120), linger=0.0)
    waiting = asyncio.create_task(trigger.wait_woken())
    await asyncio.sleep(1.0)
    await asyncio.to_thread(answer_all, on, events[:500])  # half before, half while it waits
    await asyncio.sleep(1.0)
    await asyncio.to_thread(answer_all, on, events[500:])
    outcome = await asyncio.wait_for(waiting, 200)
    await _wakehub.close_all()
    assert outcome.status == "done", outcome.message
    assert len(outcome.found()) == 1000
    values = await asyncio.to_thread(
        finish, {}, RelayHook(), outcome, policy="collect_all", timeout=120, single=False
    )
    assert values == [{"i": i} for i in range(1000)]
    ops = spent(before, admin_ops(on))
    # the task: create, seek, delete; the triggerer's hub: create, delete
    assert ops == {"CreateSubscription": 2, "Seek": 1, "DeleteSubscription": 2}


def test_a_worker_wait_under_short_pulls_gets_every_result_with_three_admin_ops(on: Any) -> None:
    topics = make_topics(on)
    before = admin_ops(on)
    events, published = send(topics, 300)
    answer_all(on, events)
    outcome = wait_blocking(RelayResultTrigger(wait=wait_of(topics, published, 120)))
    assert outcome.status == "done", outcome.message
    values = finish({}, RelayHook(), outcome, policy="collect_all", timeout=120, single=False)
    assert values == [{"i": i} for i in range(300)]
    assert spent(before, admin_ops(on)) == {
        "CreateSubscription": 1,
        "Seek": 1,
        "DeleteSubscription": 1,
    }


async def test_no_false_timeout_when_the_results_came_in_time(on: Any) -> None:
    """Re-runs that start after their deadline (a triggerer back too late) must still report
    results that are in their subscriptions, whatever the pulls return."""
    topics = make_topics(on)
    sent = [await asyncio.to_thread(send, topics, 3) for _ in range(8)]
    for events, _ in sent:
        await asyncio.to_thread(answer_all, on, events)
    late = [RelayResultTrigger(wait=wait_of(topics, p, -1), linger=0.0) for _, p in sent]
    outcomes = await asyncio.gather(*(t.wait_woken() for t in late))
    await _wakehub.close_all()
    assert [o.status for o in outcomes] == ["done"] * len(sent)
    assert all(len(o.found()) == 3 for o in outcomes)


def test_many_results_are_taken_in_a_handful_of_pulls(on: Any) -> None:
    """1,000 results: a few pulls of up to 1,000, acks in batches of up to 2,500, one delete;
    short pulls make it some more pulls, never a pull per result."""
    topics = make_topics(on)
    events, published = send(topics, 1000)
    answer_all(on, events)
    wait = wait_of(topics, published, 120)
    outcome = wait_blocking(RelayResultTrigger(wait=wait))
    before = on.stats()["rpcs"]
    taken = take_results(RelayHook(), wait, outcome.found())
    after = on.stats()["rpcs"]
    assert len(taken) == 1000
    assert after["Pull"] - before["Pull"] < 60
    assert after["Acknowledge"] - before.get("Acknowledge", 0) <= 3


def test_quota_refusals_are_retried_and_the_task_succeeds(
    start_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = start_broker(tmp_path / "own", args=["--control"])
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
    topics = make_topics(own)
    for method in ("CreateSubscription", "Seek", "Publish", "DeleteSubscription"):
        own.control({"fail": {"method": method, "code": "RESOURCE_EXHAUSTED", "count": 2}})
    events, published = send(topics, 5)
    answer_all(own, events)
    outcome = wait_blocking(RelayResultTrigger(wait=wait_of(topics, published, 60)))
    values = finish({}, RelayHook(), outcome, policy="collect_all", timeout=60, single=False)
    assert values == [{"i": i} for i in range(5)]
    rpcs = own.stats()["rpcs"]
    assert rpcs["CreateSubscription"] == 3  # two refused, then created
    assert rpcs["DeleteSubscription"] == 3
    assert rpcs["Seek"] == 3
    assert not list(own.publisher().list_topic_subscriptions(topic=topics["results"]))


def test_a_quota_that_outlasts_the_deadline_is_a_clear_error(
    start_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = start_broker(tmp_path / "own", args=["--control"])
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
    topics = make_topics(own)
    own.control(
        {"fail": {"method": "CreateSubscription", "code": "RESOURCE_EXHAUSTED", "count": 1000}}
    )
    events = build_requests(
        EXAMPLE_ECHO,
        [{"i": 0}],
        source="/t",
        reply_to=topics["results"],
        correlation_ids=["q.0"],
    )
    with pytest.raises(RelayPublishError, match="6,000 per minute per project") as raised:
        publish_requests(
            RelayHook(),
            topic=topics["requests"],
            reply_topic=topics["results"],
            events=events,
            deadline=time.time() + 3,
        )
    assert "create subscription" in str(raised.value)
    assert own.stats()["rpcs"].get("Publish", 0) == 0  # nothing was sent without a subscription


def test_a_result_published_in_the_creation_window_is_delivered(
    broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Google promises nothing for the moment right after CreateSubscription returns: a result
    published just before the subscription got it is replayed by the Seek, from the topic's
    retention."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", broker.host)
    topics = make_topics(broker)
    group = f"t{uuid.uuid4().hex[:12]}"
    (event,) = build_requests(
        EXAMPLE_ECHO,
        [{"window": True}],
        source="/t",
        reply_to=topics["results"],
        correlation_ids=[f"{group}.0"],
    )
    message_id = answer(broker.publisher(), event, {"window": True})  # not in any subscription
    hook = RelayHook()
    subscription = hook.create_task_subscription(
        topics["results"], group, deadline=time.time() + 30
    )
    wait = ResultWait(
        completion_topic=topics["results"],
        subscription=subscription,
        correlation_ids=(f"{group}.0",),
        deadline=time.time() + 20,
    )
    outcome = wait_blocking(RelayResultTrigger(wait=wait))
    assert outcome.found() == {f"{group}.0": message_id}
    assert finish({}, hook, outcome, policy="collect_all", timeout=20, single=True) == {
        "window": True
    }
