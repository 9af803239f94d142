"""RelayResultTrigger in an asyncio loop against the real broker: early results, wake-ups, restarts,
duplicates, isolation between tasks, timeouts, the shared hub's lifecycle, one subscription per
task, and waits deferred by relay 0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from _airflow_responder import answer

from relay.airflow import _result_trigger, _wakehub
from relay.airflow._publish import Published, build_requests, correlation_ids_for, publish_requests
from relay.airflow._result_trigger import wait_blocking
from relay.airflow._results import collect, conclude, finish
from relay.airflow._wait import ResultWait, WaitOutcome
from relay.airflow.exceptions import RelayConfigError, RelayResultError, RelayTimeoutError
from relay.airflow.hooks import RelayHook
from relay.airflow.triggers import RelayResultTrigger
from relay.protocol import EXAMPLE_ECHO, RESULT_SUCCEEDED, Event

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def hook(broker: Any) -> RelayHook:
    return RelayHook()


def send(
    hook: RelayHook, topics: dict[str, str], *items: Any, ids: list[str] | None = None
) -> tuple[list[Event], Published]:
    """Build and publish one task's requests the way the operators do (subscription first)."""
    group = f"t{uuid.uuid4().hex[:12]}"
    events = build_requests(
        EXAMPLE_ECHO,
        list(items),
        source="/tests/airflow",
        reply_to=topics["results"],
        correlation_ids=correlation_ids_for(group, len(items), ids),
    )
    published = publish_requests(
        hook,
        topic=topics["requests"],
        reply_topic=topics["results"],
        events=events,
        deadline=time.time() + 60,
    )
    return events, published


def make_wait(
    topics: dict[str, str], published: Published, timeout: float = 30.0, policy: str = "collect_all"
) -> ResultWait:
    return ResultWait(
        completion_topic=topics["results"],
        subscription=str(published.subscription),
        correlation_ids=published.correlation_ids,
        deadline=time.time() + timeout,
        policy=policy,
    )


def make_trigger(
    topics: dict[str, str],
    published: Published,
    timeout: float = 30.0,
    policy: str = "collect_all",
    **kwargs: Any,
) -> RelayResultTrigger:
    wait = make_wait(topics, published, timeout, policy)
    return RelayResultTrigger(wait=wait, linger=0.0, **kwargs)


async def first_event(trigger: RelayResultTrigger, limit: float = 40.0) -> WaitOutcome:
    event = await asyncio.wait_for(anext(trigger.run()), limit)
    payload = jsonb(event.payload)  # what the metadata DB gives back
    return WaitOutcome.from_event(payload, completion_topic=trigger.wait.completion_topic)


def fresh(trigger: RelayResultTrigger) -> RelayResultTrigger:
    """What a new triggerer does: rebuild the trigger from its serialized form (via JSON)."""
    classpath, kwargs = trigger.serialize()
    assert classpath == "relay.airflow.triggers.RelayResultTrigger"
    return RelayResultTrigger(**jsonb(kwargs))


def jsonb(value: Any) -> Any:
    """What PostgreSQL's JSONB does to trigger kwargs and events: object keys come back reordered
    (sorted here, which is enough to break anything that relies on key order)."""
    return json.loads(json.dumps(value, sort_keys=True))


def take(hook: RelayHook, outcome: WaitOutcome, policy: str = "collect_all") -> Any:
    return finish(
        {},
        hook,
        outcome,
        policy=policy,
        timeout=30,
        single=len(outcome.wait.correlation_ids) == 1,
    )


def subscriptions_of(broker: Any, topic: str) -> list[str]:
    return list(broker.publisher().list_topic_subscriptions(topic=topic, timeout=10))


def subscription_exists(broker: Any, path: str) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        broker.subscriber().get_subscription(subscription=path, timeout=10)
    except NotFound:
        return False
    return True


async def wait_for_hub(topic: str, limit: float = 10.0) -> _wakehub.WakeHub:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for hub in _wakehub.hubs():
            if hub.topic == topic and hub.is_ready:
                return hub
        await asyncio.sleep(0.01)
    raise AssertionError(f"no ready wake hub for {topic}")


async def test_result_published_before_the_wait_starts_is_not_lost(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], {"early": True})  # before any trigger runs
    outcome = await first_event(make_trigger(topics, published, recheck_interval=3600))
    assert outcome.status == "done"
    assert list(outcome.found()) == [events[0].correlationid]
    outcomes = await asyncio.to_thread(collect, hook, outcome)
    assert conclude(outcomes, policy="collect_all", timeout=30, single=True) == {"early": True}


async def test_a_result_wakes_the_wait_at_once(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, recheck_interval=3600)
    task = asyncio.create_task(first_event(trigger))
    hub = await wait_for_hub(topics["results"])
    await asyncio.sleep(2.0)  # past the start read
    assert not task.done()
    started = time.monotonic()
    message_id = await asyncio.to_thread(answer, broker.publisher(), events[0], {"late": True})
    outcome = await task
    # heard from the hub: the early re-read comes 12 s after the start, the periodic one in 1 h
    assert time.monotonic() - started < 6.0
    assert hub.received >= 1
    assert outcome.found() == {events[0].correlationid: message_id}
    assert await asyncio.to_thread(take, hook, outcome) == {"late": True}


async def test_a_wait_queued_for_a_read_is_done_as_soon_as_the_hub_hears_its_result(
    broker: Any, hook: RelayHook, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A triggerer starting thousands of waits queues their start reads (64 at a time): a wait
    whose result the hub hears while it queues ends then, without waiting for a read slot."""
    monkeypatch.setattr(_result_trigger, "_READ_CONCURRENCY", 1)
    slots = _result_trigger._read_slots()
    await slots.semaphore.acquire()  # the other waits' reads: the one slot is never free
    events, published = send(hook, topics, {"n": 1})
    task = asyncio.create_task(first_event(make_trigger(topics, published, recheck_interval=3600)))
    await wait_for_hub(topics["results"])
    await asyncio.sleep(0.5)
    assert _result_trigger.reads_pending() == 1  # its start read, queued
    started = time.monotonic()
    message_id = await asyncio.to_thread(answer, broker.publisher(), events[0], {"queued": True})
    outcome = await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 3.0
    assert outcome.found() == {events[0].correlationid: message_id}
    assert _result_trigger.reads_pending() == 0
    slots.semaphore.release()
    assert await asyncio.to_thread(take, hook, outcome) == {"queued": True}


async def test_a_first_read_queued_past_a_lease_needs_no_early_re_read(
    broker: Any, hook: RelayHook, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early re-read covers results an earlier run of the trigger held when it died; a first
    read that began after such a lease ran out saw them, so it is the only read (a triggerer
    starting 10,000 waits reads each subscription once, not twice)."""
    monkeypatch.setattr(_result_trigger, "_READ_CONCURRENCY", 1)
    reads: list[float] = []
    read = RelayResultTrigger._read

    async def counted(self: RelayResultTrigger, *args: Any, **kwargs: Any) -> Any:
        reads.append(time.time())
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(RelayResultTrigger, "_read", counted)
    slots = _result_trigger._read_slots()
    await slots.semaphore.acquire()  # the other waits' reads, for longer than a lease
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, timeout=90, recheck_interval=3600)
    task = asyncio.create_task(first_event(trigger, limit=90))
    await asyncio.sleep(_result_trigger.WAIT_ACK_DEADLINE_SECONDS + 3)
    slots.semaphore.release()
    await asyncio.sleep(_result_trigger.WAIT_ACK_DEADLINE_SECONDS * 2 + 6)  # past any early re-read
    assert len(reads) == 1, reads
    message_id = await asyncio.to_thread(answer, broker.publisher(), events[0], {"once": True})
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.found() == {events[0].correlationid: message_id}


async def test_a_fan_out_waits_on_one_subscription(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    items = [{"i": i} for i in range(50)]
    events, published = send(hook, topics, *items)
    assert subscriptions_of(broker, topics["results"]) == [published.subscription]
    assert {str(e.correlationid).split(".")[0] for e in events} == {
        published.correlation_ids[0].split(".")[0]
    }
    publisher = broker.publisher()
    for event in events:
        answer(publisher, event, event.data)
    outcome = await first_event(make_trigger(topics, published))
    assert outcome.status == "done"
    assert await asyncio.to_thread(take, hook, outcome) == items
    assert subscriptions_of(broker, topics["results"]) == []  # deleted, the hub's too


async def test_the_worker_wait_reads_its_own_subscription_only(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1}, {"n": 2})
    answer(broker.publisher(), events[0], {"n": 1})
    seen: list[list[str]] = []

    def answer_later() -> None:
        time.sleep(1.5)
        seen.append(subscriptions_of(broker, topics["results"]))
        answer(broker.publisher(), events[1], {"n": 2})

    later = asyncio.create_task(asyncio.to_thread(answer_later))
    outcome = await asyncio.to_thread(wait_blocking, make_trigger(topics, published))
    await later
    assert outcome.status == "done"
    assert seen == [[published.subscription]]  # no wake subscription of its own
    assert await asyncio.to_thread(take, hook, outcome) == [{"n": 1}, {"n": 2}]


async def test_a_triggerer_dying_mid_wait_loses_nothing(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    first = make_trigger(topics, published, recheck_interval=3600)
    task = asyncio.create_task(first_event(first))
    await wait_for_hub(topics["results"])
    task.cancel()  # the triggerer dies: its run() generator and the process-wide hub go away
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wakehub.close_all()
    await asyncio.to_thread(answer, broker.publisher(), events[0], {"after": "restart"})
    second = await first_event(fresh(first))
    assert second.status == "done"
    # The event was yielded but the triggerer died before it was handed over: a third run must
    # find the very same result, because the trigger never acks.
    third = await first_event(fresh(first))
    assert third.found() == second.found()
    assert await asyncio.to_thread(take, hook, third) == {"after": "restart"}


async def test_a_trigger_dying_while_holding_the_result_loses_nothing(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    """Died between pulling the result and releasing it: the lease expires, the re-run finds it."""
    events, published = send(hook, topics, {"n": 1})
    await asyncio.to_thread(answer, broker.publisher(), events[0], {"leased": True})
    leased: list[Any] = []
    while not leased:  # a pull may come back short (a broker behaving as Google may)
        response = broker.subscriber().pull(
            subscription=str(published.subscription), max_messages=10, timeout=20
        )
        leased = list(response.received_messages)
    assert len(leased) == 1  # held, never acked or released
    outcome = await first_event(make_trigger(topics, published, recheck_interval=3600), 40)
    assert outcome.status == "done"
    assert await asyncio.to_thread(take, hook, outcome) == {"leased": True}


async def test_duplicate_results_yield_one_of_them(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    """Two results for one request: the wait reports one (Pub/Sub delivers without order, so which
    one may differ between runs), and the worker takes exactly the one reported."""
    events, published = send(hook, topics, {"n": 1})
    publisher = broker.publisher()
    copies = {answer(publisher, events[0], {"copy": n}): n for n in (1, 2)}
    trigger = make_trigger(topics, published)
    outcome = await first_event(trigger)
    cid = str(events[0].correlationid)
    assert outcome.found()[cid] in copies
    again = await first_event(fresh(trigger))  # a re-run finds both copies still there
    reported = again.found()[cid]
    assert reported in copies
    assert await asyncio.to_thread(take, hook, again) == {"copy": copies[reported]}


@pytest.mark.timeout(300)
async def test_results_never_reach_another_task(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    count = 200

    def send_all() -> list[tuple[list[Event], Published]]:
        with ThreadPoolExecutor(8) as pool:  # admin calls are round trips (slow on Google)
            return list(pool.map(lambda i: send(hook, topics, {"i": i}), range(count)))

    sent_tasks = await asyncio.to_thread(send_all)
    triggers = [make_trigger(topics, p, recheck_interval=3600) for _, p in sent_tasks]
    tasks = [asyncio.create_task(first_event(t, 60)) for t in triggers]
    hub = await wait_for_hub(topics["results"])
    await asyncio.sleep(2.0)
    publisher = broker.publisher()
    # a stranger's result on the same topic first, then every result in reverse order
    (stranger,) = build_requests(
        EXAMPLE_ECHO, [{}], source="/x", reply_to=topics["results"], correlation_ids=["other.0"]
    )

    def publish_all() -> dict[str, str]:
        answer(publisher, stranger, {"stranger": True})
        with ThreadPoolExecutor(8) as pool:
            ids = pool.map(
                lambda sent: answer(publisher, sent[0][0], sent[0][0].data), reversed(sent_tasks)
            )
            return {
                str(events[0].correlationid): mid
                for (events, _), mid in zip(reversed(sent_tasks), ids, strict=True)
            }

    sent = await asyncio.to_thread(publish_all)
    outcomes = await asyncio.gather(*tasks)
    assert len(_wakehub.hubs()) <= 1
    # one shared stream for 200 waits (a broker behaving as Google may close it now and then)
    assert hub.streams_opened < 10
    for (events, _), outcome in zip(sent_tasks, outcomes, strict=True):
        cid = str(events[0].correlationid)
        assert outcome.found() == {cid: sent[cid]}
    for index in (0, count // 2, count - 1):
        assert await asyncio.to_thread(take, hook, outcomes[index]) == {"i": index}


async def test_failed_result_carries_the_error_type_and_message(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], error="disk on fire")
    outcome = await first_event(make_trigger(topics, published))
    assert outcome.status == "done"
    with pytest.raises(RelayResultError) as raised:
        await asyncio.to_thread(take, hook, outcome)
    assert raised.value.error_type == "EchoFailure"
    assert raised.value.error_message == "disk on fire"
    assert "EchoFailure: disk on fire" in str(raised.value)


async def test_no_result_gives_a_clear_timeout_after_a_quiet_last_look(
    hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, timeout=1.5)
    started = time.monotonic()
    outcome = await first_event(trigger)
    elapsed = time.monotonic() - started
    # the last look reads for longer than a lease past the deadline before it says "no result"
    assert 1.5 + _result_trigger.FINAL_QUIET_SECONDS <= elapsed < 30
    assert outcome.status == "timeout"
    with pytest.raises(RelayTimeoutError, match=str(events[0].correlationid)):
        await asyncio.to_thread(take, hook, outcome)


async def test_fan_out_fail_fast_fires_at_the_first_failure(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"i": 0}, {"i": 1}, {"i": 2})
    answer(broker.publisher(), events[1], error="item 1 is bad")
    outcome = await first_event(make_trigger(topics, published, policy="fail_fast"))
    assert outcome.status == "done"  # without waiting for items 0 and 2
    assert list(outcome.found()) == [events[1].correlationid]
    with pytest.raises(RelayResultError, match="item 1 is bad"):
        await asyncio.to_thread(take, hook, outcome, "fail_fast")
    assert not subscription_exists(broker, str(published.subscription))


async def test_fan_out_collect_all_names_what_failed(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from relay.airflow.exceptions import RelayPartialFailureError

    events, published = send(hook, topics, {"i": 0}, {"i": 1}, {"i": 2})
    publisher = broker.publisher()
    answer(publisher, events[0], {"ok": 0})
    answer(publisher, events[1], error="item 1 is bad")
    outcome = await first_event(make_trigger(topics, published, timeout=3))
    assert outcome.status == "timeout"  # item 2 never answers: timeout after collecting
    with pytest.raises(RelayPartialFailureError) as raised:
        await asyncio.to_thread(take, hook, outcome)
    assert raised.value.failed == {
        str(events[1].correlationid): "EchoFailure: item 1 is bad",
        str(events[2].correlationid): "no result before the timeout",
    }
    assert [o["status"] for o in raised.value.outcomes] == ["succeeded", "failed", "timeout"]
    assert raised.value.outcomes[0]["data"] == {"ok": 0}


async def test_the_shared_hub_starts_lazily_and_leaves_with_the_last_wait(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    assert not [h for h in _wakehub.hubs() if h.topic == topics["results"]]
    sent = [send(hook, topics, {"i": 0}), send(hook, topics, {"i": 1})]
    tasks = [
        asyncio.create_task(first_event(make_trigger(topics, p, recheck_interval=3600)))
        for _, p in sent
    ]
    hub = await wait_for_hub(topics["results"])
    assert hub.waiting == 2
    assert subscription_exists(broker, hub.subscription)
    answer(broker.publisher(), sent[0][0][0], {})
    await tasks[0]
    assert hub.waiting == 1
    assert not hub.closing
    answer(broker.publisher(), sent[1][0][0], {})
    await tasks[1]
    assert hub.closing
    assert hub not in _wakehub.hubs()
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(hub._task, return_exceptions=True), 10)  # type: ignore[arg-type]
    assert not subscription_exists(broker, hub.subscription)


async def test_a_vanished_subscription_is_a_clear_error(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from relay.airflow.exceptions import RelayResultLostError

    _, published = send(hook, topics, {"i": 0})
    hook.delete_subscriptions([str(published.subscription)])
    outcome = await first_event(make_trigger(topics, published))
    assert outcome.status == "error"
    assert str(published.subscription) in outcome.message
    with pytest.raises(RelayResultLostError, match="does not exist"):
        await asyncio.to_thread(take, hook, outcome)


def test_serialized_kwargs_hold_no_credentials_and_stay_small(topics: dict[str, str]) -> None:
    sub = "projects/relay-test/subscriptions/relay-task-x"
    wait = ResultWait(
        completion_topic=topics["results"],
        subscription=sub,
        correlation_ids=tuple(f"t1.{i}" for i in range(10_000)),
        deadline=time.time() + 60,
    )
    trigger = RelayResultTrigger(
        wait=wait,
        gcp_conn_id="google_cloud_default",
        impersonation_chain=["a@p.iam.gserviceaccount.com", "b@p.iam.gserviceaccount.com"],
    )
    classpath, kwargs = trigger.serialize()
    assert set(kwargs) == {
        "wait",
        "gcp_conn_id",
        "impersonation_chain",
        "recheck_interval",
        "linger",
        "not_before",
    }
    text = json.dumps(kwargs)  # JSON-serialisable, as the metadata DB needs
    assert len(text) < 1_000  # 10,000 default ids travel as their group and count
    for secret_marker in ("token", "Bearer", "private_key", "authorization", "credentials"):
        assert secret_marker.lower() not in text.lower()
    rebuilt = RelayResultTrigger(**json.loads(text))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.wait == wait


def test_a_wait_is_checked_once_when_built() -> None:
    topic = "projects/relay-test/topics/results"
    sub = "projects/relay-test/subscriptions/relay-task-x"

    def wait(ids: tuple[str, ...], **kwargs: Any) -> ResultWait:
        fields: dict[str, Any] = {
            "completion_topic": topic,
            "subscription": sub,
            "correlation_ids": ids,
            "deadline": 1.0,
        }
        return ResultWait(**{**fields, **kwargs})

    for bad, message in (
        ((), "at least one"),
        (("a.1", "a.1"), "twice"),
        (("a.1", "b.1"), "share one group"),
        (("nogroup",), "has no group"),
        (('a." OR 1',), "not valid"),
    ):
        with pytest.raises(RelayConfigError, match=message):
            wait(bad)
    with pytest.raises(RelayConfigError, match="policy"):
        wait(("a.1",), policy="sometimes")
    with pytest.raises(RelayConfigError, match="subscription"):
        wait(("a.1",), subscription="relay-task-x")
    custom = wait(("orders.z", "orders.a"))
    assert ResultWait.from_json(jsonb(custom.to_json())) == custom  # order kept through JSONB
    with pytest.raises(RelayConfigError, match="not a relay wait"):
        ResultWait.from_json({"topic": topic})


async def test_the_hub_reconnects_after_the_broker_restarts(
    start_broker: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, project: str, unique: Any
) -> None:
    own = start_broker(tmp_path / "own")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
    # No early re-read: on a slow machine the restart can outlast it, and the result would then be
    # found by the re-read instead of the reconnected stream this test is about.
    monkeypatch.setattr(_result_trigger, "WAIT_ACK_DEADLINE_SECONDS", 3600)
    topics = {
        "requests": f"projects/{project}/topics/{unique('requests')}",
        "results": f"projects/{project}/topics/{unique('results')}",
    }
    for path in topics.values():
        own.publisher().create_topic(name=path)
    hook = RelayHook()
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, timeout=60, recheck_interval=3600)
    task = asyncio.create_task(first_event(trigger, 60))
    hub = await wait_for_hub(topics["results"])
    await asyncio.sleep(2.0)  # past the start read
    await asyncio.to_thread(own.restart, kill=True)  # the stream breaks; data survives
    await asyncio.to_thread(answer, own.publisher(), events[0], {"after": "broker restart"})
    outcome = await task
    assert outcome.status == "done"
    assert hub.streams_opened >= 2  # heard through a new stream, not by a re-read
    assert await asyncio.to_thread(take, hook, outcome) == {"after": "broker restart"}
    await _wakehub.close_all()


async def test_a_rerun_after_the_deadline_still_reports_a_result_that_came_in_time(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], {"in": "time"})
    late = make_trigger(topics, published, timeout=-5)  # the triggerer came back too late
    assert (await first_event(late)).status == "done"
    empty = make_trigger(topics, send(hook, topics, {"n": 2})[1], timeout=-5)
    assert (await first_event(empty)).status == "timeout"


class _RecordingTi:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


async def test_fan_out_results_keep_item_order_through_a_key_reordering_store(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from relay.airflow.operators import RelayFanOutOperator

    ids = ["o.zulu", "o.yankee", "o.xray", "o.whiskey"]  # sorting changes their order
    events, published = send(hook, topics, *({"i": i} for i in range(len(ids))), ids=ids)
    publisher = broker.publisher()
    for event in reversed(events):
        answer(publisher, event, event.data)
    _, kwargs = make_trigger(topics, published, recheck_interval=3600).serialize()
    event = await asyncio.wait_for(anext(RelayResultTrigger(**jsonb(kwargs)).run()), 40)
    payload = jsonb(event.payload)  # the stored event
    operator = RelayFanOutOperator(
        task_id="fan",
        topic=topics["requests"],
        reply_topic=topics["results"],
        event_type=EXAMPLE_ECHO,
        items=[{"i": i} for i in range(len(ids))],
        policy="collect_all",
        deferrable=True,
    )
    ti = _RecordingTi()
    value = await asyncio.to_thread(operator.execute_complete, {"ti": ti}, payload)
    assert value == [{"i": i} for i in range(len(ids))]
    assert [o["correlation_id"] for o in ti.xcom["outcomes"]] == ids
    assert [o["data"] for o in ti.xcom["outcomes"]] == [{"i": i} for i in range(len(ids))]


def _legacy_subscription(broker: Any, topic: str, cid: str) -> str:
    """The subscription relay 0.1 created for one request (its name and filter rule)."""
    digest = hashlib.sha256(f"{topic}\0{cid}".encode()).hexdigest()[:40]
    path = f"projects/relay-test/subscriptions/relay-wait-{digest}"
    broker.subscriber().create_subscription(
        request={
            "name": path,
            "topic": topic,
            "filter": f'attributes.ce-correlationid = "{cid}"',
            "ack_deadline_seconds": 10,
        }
    )
    return path


async def test_a_wait_deferred_by_relay_0_1_resumes(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    """An upgrade while a fan-out is deferred: its trigger row holds 0.1's kwargs (one
    subscription per request), and the resumed task gets 0.1's event."""
    from relay.airflow.operators import RelayFanOutOperator

    events = build_requests(
        EXAMPLE_ECHO,
        [{"i": 0}, {"i": 1}],
        source="/tests",
        reply_to=topics["results"],
        correlation_ids=[str(uuid.uuid4()), str(uuid.uuid4())],  # 0.1: the ce-ids
    )
    cids = [str(e.correlationid) for e in events]
    pairs = [[cid, _legacy_subscription(broker, topics["results"], cid)] for cid in cids]
    publisher = broker.publisher()
    for event in events:
        answer(publisher, event, event.data)
    old_kwargs = {
        "completion_topic": topics["results"],
        "waits": pairs,
        "deadline": time.time() + 30,
        "policy": "collect_all",
        "gcp_conn_id": "google_cloud_default",
        "impersonation_chain": None,
        "recheck_interval": 300.0,
        "linger": 0.0,
        "not_before": 0.0,
    }
    outcome = await first_event(RelayResultTrigger(**jsonb(old_kwargs)))
    assert outcome.status == "done"
    assert set(outcome.found()) == {cid for cid, _ in pairs}
    operator = RelayFanOutOperator(
        task_id="fan",
        topic=topics["requests"],
        reply_topic=topics["results"],
        event_type=EXAMPLE_ECHO,
        items=[{"i": 0}, {"i": 1}],
        policy="collect_all",
        deferrable=True,
    )
    old_event = {  # 0.1's event payload, fired before the upgrade
        "status": "done",
        "waits": pairs,
        "results": {
            cid: {"type": RESULT_SUCCEEDED, "message_id": mid, "publish_time": "", "ce_id": ""}
            for cid, mid in outcome.found().items()
        },
        "pending": [],
        "message": "",
    }
    value = await asyncio.to_thread(
        operator.execute_complete, {"ti": _RecordingTi()}, jsonb(old_event)
    )
    assert value == [{"i": 0}, {"i": 1}]
    assert not any(subscription_exists(broker, sub) for _, sub in pairs)


def test_non_retryable_failures_fail_without_airflow_retries() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from relay.airflow._results import FAILED, SUCCEEDED, TIMEOUT, Outcome
    from relay.airflow.exceptions import (
        RelayNonRetryablePartialFailureError,
        RelayNonRetryableResultError,
        RelayPartialFailureError,
    )

    def failure(cid: str, retryable: bool) -> Outcome:
        error = {"type": "Boom", "message": "m", "retryable": retryable, "attempt": 3}
        return Outcome(cid, FAILED, error=error)

    with pytest.raises(RelayNonRetryableResultError) as final:
        conclude([failure("a", False)], policy="collect_all", timeout=1, single=True)
    assert isinstance(final.value, RelayResultError)
    assert isinstance(final.value, AirflowFailException)
    assert "Boom: m (retryable=False, attempt=3)" in str(final.value)
    name, args, kwargs = final.value.serialize()  # Airflow rebuilds it as cls(*args, **kwargs)
    assert name == "relay.airflow.exceptions.RelayNonRetryableResultError"
    assert str(RelayNonRetryableResultError(*args, **kwargs)) == str(final.value)
    with pytest.raises(RelayResultError) as retried:
        conclude([failure("a", True)], policy="fail_fast", timeout=1, single=False)
    assert not isinstance(retried.value, AirflowFailException)
    ok = Outcome("ok", SUCCEEDED, data=1)
    with pytest.raises(RelayNonRetryablePartialFailureError) as partial:
        conclude([ok, failure("b", False)], policy="collect_all", timeout=1, single=False)
    assert isinstance(partial.value, AirflowFailException)
    name, args, kwargs = partial.value.serialize()
    assert str(RelayNonRetryablePartialFailureError(*args, **kwargs)) == str(partial.value)
    retryable_too = [failure("b", False), failure("c", True)]
    timed_out_too = [failure("b", False), Outcome("t", TIMEOUT)]
    for mixed in (retryable_too, timed_out_too):
        with pytest.raises(RelayPartialFailureError) as raised:
            conclude([ok, *mixed], policy="collect_all", timeout=1, single=False)
        assert not isinstance(raised.value, AirflowFailException)


async def test_the_event_is_not_yielded_before_not_before(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    """apache/airflow#72716: a result already there still waits for the deferral's settle moment,
    and only for that: a trigger whose moment is past (re-run after a restart) fires at once."""
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], {"early": True})
    moment = time.time() + 2.0
    settled = make_trigger(topics, published, recheck_interval=3600, not_before=moment)
    rebuilt = fresh(settled)  # not_before survives serialization
    assert rebuilt.not_before == moment
    outcome = await first_event(rebuilt)
    assert time.time() >= moment
    assert outcome.status == "done"
    past = make_trigger(topics, published, recheck_interval=3600, not_before=time.time() - 60)
    started = time.monotonic()
    assert (await first_event(past)).status == "done"
    assert time.monotonic() - started < 5.0  # not held back (the settled one waited 2 s)


def test_settle_defaults_to_the_heartbeat_interval_plus_a_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.airflow._settle import not_before, resolve_settle
    from relay.airflow.operators import RelayCallOperator

    assert resolve_settle(None) == 8.0  # [workers] min_heartbeat_interval 5 + 3
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "2")
    assert resolve_settle(None) == 5.0  # read when deferring: the worker's own config
    assert resolve_settle(0) == 0.0
    assert 4.0 < not_before(None) - time.time() <= 5.0
    with pytest.raises(RelayConfigError, match="settle"):
        RelayCallOperator(task_id="t", topic="t", reply_topic="r", event_type="e", settle=-1)


def test_subscription_lifetimes_outside_googles_bounds_are_refused() -> None:
    from datetime import timedelta

    from relay.airflow.operators import RelayFanOutOperator

    def build(**kwargs: Any) -> Any:
        return RelayFanOutOperator(
            task_id="t", topic="t", reply_topic="r", event_type="e", items=[], **kwargs
        )

    for kwargs, message in (
        ({"subscription_ttl": timedelta(hours=23)}, "below Google's minimum of 1 day"),
        ({"subscription_retention": timedelta(minutes=5)}, "10 minutes to 7 days"),
        ({"subscription_retention": timedelta(days=8)}, "10 minutes to 7 days"),
        (
            {"subscription_ttl": timedelta(days=1), "subscription_retention": timedelta(days=2)},
            "above its expiration",
        ),
        ({"timeout": timedelta(days=2)}, "longer than subscription_retention"),
    ):
        with pytest.raises(RelayConfigError, match=message):
            build(**kwargs)
    build(subscription_ttl=None, subscription_retention=timedelta(days=7), timeout=3600)
