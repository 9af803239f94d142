"""RelayResultTrigger in an asyncio loop against the real broker: early results, wake-ups, restarts,
duplicates, isolation between correlation ids, timeouts and the shared hub's lifecycle."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from _airflow_responder import answer

from relay.airflow import _result_trigger, _wakehub
from relay.airflow._publish import Published, build_requests, publish_requests
from relay.airflow._results import collect, conclude, finish
from relay.airflow.exceptions import RelayResultError, RelayTimeoutError
from relay.airflow.hooks import RelayHook
from relay.airflow.triggers import RelayResultTrigger
from relay.protocol import EXAMPLE_ECHO, RESULT_FAILED, RESULT_SUCCEEDED, Event

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:The return_immediately flag is deprecated"),
]


@pytest.fixture
def hook(broker: Any) -> RelayHook:
    return RelayHook()


def send(
    hook: RelayHook, topics: dict[str, str], *items: Any
) -> tuple[list[Event], list[Published]]:
    """Build and publish requests the way the operators do (subscriptions first)."""
    events = build_requests(
        EXAMPLE_ECHO, list(items), source="/tests/airflow", reply_to=topics["results"]
    )
    published = publish_requests(
        hook, topic=topics["requests"], reply_topic=topics["results"], events=events
    )
    return events, published


def make_trigger(
    topics: dict[str, str], published: list[Published], timeout: float = 30.0, **kwargs: Any
) -> RelayResultTrigger:
    return RelayResultTrigger(
        completion_topic=topics["results"],
        waits={p.correlation_id: str(p.subscription) for p in published},
        deadline=time.time() + timeout,
        linger=0.0,
        **kwargs,
    )


async def first_event(trigger: RelayResultTrigger, limit: float = 40.0) -> dict[str, Any]:
    event = await asyncio.wait_for(anext(trigger.run()), limit)
    return dict(event.payload)


def fresh(trigger: RelayResultTrigger) -> RelayResultTrigger:
    """What a new triggerer does: rebuild the trigger from its serialized form (via JSON)."""
    classpath, kwargs = trigger.serialize()
    assert classpath == "relay.airflow.triggers.RelayResultTrigger"
    return RelayResultTrigger(**json.loads(json.dumps(kwargs)))


async def test_result_published_before_the_wait_starts_is_not_lost(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], {"early": True})  # before any trigger runs
    trigger = make_trigger(topics, published, recheck_interval=3600)
    payload = await first_event(trigger)
    assert payload["status"] == "done"
    assert payload["results"][events[0].correlationid]["type"] == RESULT_SUCCEEDED
    outcomes = await asyncio.to_thread(collect, hook, trigger.waits, payload)
    assert conclude(outcomes, policy="collect_all", timeout=30, single=True) == {"early": True}


async def wait_for_hub(topic: str, limit: float = 10.0) -> _wakehub.WakeHub:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for hub in _wakehub.hubs():
            if hub.topic == topic and hub._ready.is_set():
                return hub
        await asyncio.sleep(0.01)
    raise AssertionError(f"no ready wake hub for {topic}")


async def test_a_result_wakes_the_wait_at_once(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, recheck_interval=3600)
    task = asyncio.create_task(first_event(trigger))
    await wait_for_hub(topics["results"])
    await asyncio.sleep(0.2)
    assert not task.done()
    started = time.monotonic()
    await asyncio.to_thread(answer, broker.publisher(), events[0], {"late": True})
    payload = await task
    # woken by the hub: the early re-check would come 12 s after the start, the periodic one in 1 h
    assert time.monotonic() - started < 6.0
    assert payload["status"] == "done"


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
    second = fresh(first)
    payload = await first_event(second)
    assert payload["status"] == "done"
    # The event was yielded but the triggerer died before it was handed over: a third run must
    # find the very same result, because the trigger never acks.
    third_payload = await first_event(fresh(first))
    cid = str(events[0].correlationid)
    assert third_payload["results"][cid]["message_id"] == payload["results"][cid]["message_id"]
    value = await asyncio.to_thread(
        finish,
        {},
        hook,
        second.waits,
        third_payload,
        policy="collect_all",
        timeout=30,
        single=True,
    )
    assert value == {"after": "restart"}


async def test_a_trigger_dying_while_holding_the_result_loses_nothing(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    """Died between pulling the result and releasing it: the lease expires, the re-run finds it."""
    events, published = send(hook, topics, {"n": 1})
    await asyncio.to_thread(answer, broker.publisher(), events[0], {"leased": True})
    subscriber = broker.subscriber()
    leased = subscriber.pull(
        subscription=str(published[0].subscription), max_messages=10, timeout=10
    )
    assert len(leased.received_messages) == 1  # held, never acked or released
    payload = await first_event(make_trigger(topics, published, recheck_interval=3600), 40)
    assert payload["status"] == "done"
    outcomes = await asyncio.to_thread(
        collect, hook, dict(make_trigger(topics, published).waits), payload
    )
    assert outcomes[0].data == {"leased": True}


async def test_duplicate_results_yield_the_first(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    publisher = broker.publisher()
    first_id = answer(publisher, events[0], {"copy": 1})
    answer(publisher, events[0], {"copy": 2})
    trigger = make_trigger(topics, published)
    payload = await first_event(trigger)
    cid = str(events[0].correlationid)
    assert payload["results"][cid]["message_id"] == first_id
    again = await first_event(fresh(trigger))  # a re-run decides the same way
    assert again["results"][cid]["message_id"] == first_id
    value = await asyncio.to_thread(
        finish, {}, hook, trigger.waits, again, policy="collect_all", timeout=30, single=True
    )
    assert value == {"copy": 1}


async def test_results_never_reach_another_correlation_id(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    count = 300
    events, published = await asyncio.to_thread(
        send, hook, topics, *({"i": i} for i in range(count))
    )
    triggers = [make_trigger(topics, [p], recheck_interval=3600) for p in published]
    tasks = [asyncio.create_task(first_event(t, 60)) for t in triggers]
    hub = await wait_for_hub(topics["results"])
    await asyncio.sleep(0.5)
    publisher = broker.publisher()
    # a stranger's result on the same topic first, then every result in reverse order
    stranger = build_requests(EXAMPLE_ECHO, [{}], source="/x", reply_to=topics["results"])[0]

    def publish_all() -> dict[str, str]:
        answer(publisher, stranger, {"stranger": True})
        return {
            str(e.correlationid): answer(publisher, e, {"cid": e.correlationid})
            for e in reversed(events)
        }

    sent = await asyncio.to_thread(publish_all)
    payloads = await asyncio.gather(*tasks)
    assert len(_wakehub.hubs()) <= 1
    assert hub.streams_opened == 1
    for trigger, payload in zip(triggers, payloads, strict=True):
        ((cid, info),) = payload["results"].items()
        assert set(trigger.waits) == {cid}
        assert info["message_id"] == sent[cid]
    sample = [0, count // 2, count - 1]
    for index in sample:
        value = await asyncio.to_thread(
            finish,
            {},
            hook,
            triggers[index].waits,
            payloads[index],
            policy="collect_all",
            timeout=30,
            single=True,
        )
        assert value == {"cid": events[index].correlationid}


async def test_failed_result_carries_the_error_type_and_message(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], error="disk on fire")
    trigger = make_trigger(topics, published)
    payload = await first_event(trigger)
    assert payload["results"][events[0].correlationid]["type"] == RESULT_FAILED
    with pytest.raises(RelayResultError) as raised:
        await asyncio.to_thread(
            finish, {}, hook, trigger.waits, payload, policy="collect_all", timeout=30, single=True
        )
    assert raised.value.error_type == "EchoFailure"
    assert raised.value.error_message == "disk on fire"
    assert "EchoFailure: disk on fire" in str(raised.value)


async def test_no_result_gives_a_clear_timeout(hook: RelayHook, topics: dict[str, str]) -> None:
    events, published = send(hook, topics, {"n": 1})
    trigger = make_trigger(topics, published, timeout=1.5)
    started = time.monotonic()
    payload = await first_event(trigger)
    assert 1.0 < time.monotonic() - started < 5.0
    assert payload["status"] == "timeout"
    with pytest.raises(RelayTimeoutError, match=str(events[0].correlationid)):
        await asyncio.to_thread(
            finish, {}, hook, trigger.waits, payload, policy="collect_all", timeout=1.5, single=True
        )


def subscription_exists(broker: Any, path: str) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        broker.subscriber().get_subscription(subscription=path, timeout=10)
    except NotFound:
        return False
    return True


async def test_fan_out_fail_fast_fires_at_the_first_failure(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"i": 0}, {"i": 1}, {"i": 2})
    answer(broker.publisher(), events[1], error="item 1 is bad")
    trigger = make_trigger(topics, published, policy="fail_fast")
    payload = await first_event(trigger)  # without waiting for items 0 and 2
    assert payload["status"] == "done"
    assert sorted(payload["pending"]) == sorted(
        str(e.correlationid) for e in (events[0], events[2])
    )
    with pytest.raises(RelayResultError, match="item 1 is bad"):
        await asyncio.to_thread(
            finish, {}, hook, trigger.waits, payload, policy="fail_fast", timeout=30, single=False
        )
    assert not any(subscription_exists(broker, s) for s in trigger.waits.values())


async def test_fan_out_collect_all_names_what_failed(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from relay.airflow.exceptions import RelayPartialFailureError

    events, published = send(hook, topics, {"i": 0}, {"i": 1}, {"i": 2})
    publisher = broker.publisher()
    answer(publisher, events[0], {"ok": 0})
    answer(publisher, events[1], error="item 1 is bad")
    trigger = make_trigger(topics, published, policy="collect_all", timeout=3)
    payload = await first_event(trigger)  # item 2 never answers: timeout after collecting
    assert payload["status"] == "timeout"
    with pytest.raises(RelayPartialFailureError) as raised:
        await asyncio.to_thread(
            finish, {}, hook, trigger.waits, payload, policy="collect_all", timeout=3, single=False
        )
    failed = raised.value.failed
    assert failed == {
        str(events[1].correlationid): "EchoFailure: item 1 is bad",
        str(events[2].correlationid): "no result before the timeout",
    }
    assert [o["status"] for o in raised.value.outcomes] == ["succeeded", "failed", "timeout"]
    assert raised.value.outcomes[0]["data"] == {"ok": 0}


async def test_the_shared_hub_starts_lazily_and_leaves_with_the_last_wait(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    assert not [h for h in _wakehub.hubs() if h.topic == topics["results"]]
    events, published = send(hook, topics, {"i": 0}, {"i": 1})
    tasks = [
        asyncio.create_task(first_event(make_trigger(topics, [p], recheck_interval=3600)))
        for p in published
    ]
    hub = await wait_for_hub(topics["results"])
    assert hub.waiting == 2
    assert subscription_exists(broker, hub.subscription)
    answer(broker.publisher(), events[0], {})
    await tasks[0]
    assert hub.waiting == 1
    assert not hub.closing
    answer(broker.publisher(), events[1], {})
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
    hook.delete_subscriptions([str(published[0].subscription)])
    trigger = make_trigger(topics, published)
    payload = await first_event(trigger)
    assert payload["status"] == "error"
    assert str(published[0].subscription) in payload["message"]
    with pytest.raises(RelayResultLostError, match="does not exist"):
        await asyncio.to_thread(
            finish, {}, hook, trigger.waits, payload, policy="collect_all", timeout=30, single=True
        )


def test_serialized_kwargs_hold_no_credentials(topics: dict[str, str]) -> None:
    trigger = RelayResultTrigger(
        completion_topic=topics["results"],
        waits={"abc": "projects/relay-test/subscriptions/relay-wait-x"},
        deadline=time.time() + 60,
        gcp_conn_id="google_cloud_default",
        impersonation_chain=["a@p.iam.gserviceaccount.com", "b@p.iam.gserviceaccount.com"],
    )
    classpath, kwargs = trigger.serialize()
    assert set(kwargs) == {
        "completion_topic",
        "waits",
        "deadline",
        "policy",
        "gcp_conn_id",
        "impersonation_chain",
        "recheck_interval",
        "linger",
        "not_before",
    }
    text = json.dumps(kwargs)  # JSON-serialisable, as the metadata DB needs
    for secret_marker in ("token", "Bearer", "private_key", "authorization", "credentials"):
        assert secret_marker.lower() not in text.lower()
    assert RelayResultTrigger(**json.loads(text)).serialize() == (classpath, kwargs)


async def test_the_hub_reconnects_after_the_broker_restarts(
    start_broker: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, project: str, unique: Any
) -> None:
    own = start_broker(tmp_path / "own")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
    # No early re-check: on a slow machine the restart can outlast it, and the result would then be
    # found by the re-check instead of the reconnected stream this test is about.
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
    await asyncio.to_thread(own.restart, kill=True)  # the stream breaks; data survives
    await asyncio.to_thread(answer, own.publisher(), events[0], {"after": "broker restart"})
    payload = await task
    assert payload["status"] == "done"
    assert hub.streams_opened >= 2  # woken through a new stream, not by a re-check
    value = await asyncio.to_thread(
        finish, {}, hook, trigger.waits, payload, policy="collect_all", timeout=60, single=True
    )
    assert value == {"after": "broker restart"}
    await _wakehub.close_all()


async def test_a_rerun_after_the_deadline_still_reports_a_result_that_came_in_time(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    events, published = send(hook, topics, {"n": 1})
    answer(broker.publisher(), events[0], {"in": "time"})
    late = make_trigger(topics, published, timeout=-5)  # the triggerer came back too late
    payload = await first_event(late)
    assert payload["status"] == "done"
    empty = make_trigger(topics, send(hook, topics, {"n": 2})[1], timeout=-5)
    assert (await first_event(empty))["status"] == "timeout"


def jsonb(value: Any) -> Any:
    """What PostgreSQL's JSONB does to trigger kwargs and events: object keys come back reordered
    (sorted here, which is enough to break anything that relies on key order)."""
    return json.loads(json.dumps(value, sort_keys=True))


class _RecordingTi:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


async def test_fan_out_results_keep_item_order_through_a_key_reordering_store(
    broker: Any, hook: RelayHook, topics: dict[str, str]
) -> None:
    from relay.airflow.operators import RelayFanOutOperator

    cids = ["c-zulu", "b-yankee", "a-xray", "d-whiskey"]  # sorting changes their order
    assert sorted(cids) != cids
    events = build_requests(
        EXAMPLE_ECHO,
        [{"i": i} for i in range(len(cids))],
        source="/tests/airflow",
        reply_to=topics["results"],
        correlation_ids=cids,
    )
    published = publish_requests(
        hook, topic=topics["requests"], reply_topic=topics["results"], events=events
    )
    publisher = broker.publisher()
    for event in reversed(events):
        answer(publisher, event, event.data)
    deferred = make_trigger(topics, published, recheck_interval=3600)
    _, kwargs = deferred.serialize()
    stored = jsonb(kwargs)  # the trigger row, as the triggerer reads it back
    assert [cid for cid, _ in stored["waits"]] == cids
    payload = jsonb(await first_event(RelayResultTrigger(**stored)))  # the stored event
    assert payload["status"] == "done"
    assert [cid for cid, _ in payload["waits"]] == cids
    operator = RelayFanOutOperator(
        task_id="fan",
        topic=topics["requests"],
        reply_topic=topics["results"],
        event_type=EXAMPLE_ECHO,
        items=[{"i": i} for i in range(len(cids))],
        policy="collect_all",
        deferrable=True,
    )
    ti = _RecordingTi()
    value = await asyncio.to_thread(operator.execute_complete, {"ti": ti}, payload)
    assert value == [{"i": i} for i in range(len(cids))]
    assert [o["correlation_id"] for o in ti.xcom["outcomes"]] == cids
    assert [o["data"] for o in ti.xcom["outcomes"]] == [{"i": i} for i in range(len(cids))]


def test_waits_are_checked_pairs() -> None:
    from relay.airflow._result_trigger import wait_pairs
    from relay.airflow.exceptions import RelayConfigError

    sub = "projects/relay-test/subscriptions/relay-wait-x"
    assert wait_pairs({"b": sub, "a": sub}) == [["b", sub], ["a", sub]]
    assert wait_pairs((("b", sub), ("a", sub))) == [["b", sub], ["a", sub]]
    for bad in ([["a", sub], ["a", sub]], [["a"]], ["ab"], [["bad id", sub]], [["a", ""]]):
        with pytest.raises(RelayConfigError):
            wait_pairs(bad)


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
    payload = await first_event(rebuilt)
    assert time.time() >= moment
    assert payload["status"] == "done"
    past = make_trigger(topics, published, recheck_interval=3600, not_before=time.time() - 60)
    started = time.monotonic()
    assert (await first_event(past))["status"] == "done"
    assert time.monotonic() - started < 1.5


def test_settle_defaults_to_the_heartbeat_interval_plus_a_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.airflow._settle import not_before, resolve_settle
    from relay.airflow.exceptions import RelayConfigError
    from relay.airflow.operators import RelayCallOperator

    assert resolve_settle(None) == 8.0  # [workers] min_heartbeat_interval 5 + 3
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "2")
    assert resolve_settle(None) == 5.0  # read when deferring: the worker's own config
    assert resolve_settle(0) == 0.0
    assert 4.0 < not_before(None) - time.time() <= 5.0
    with pytest.raises(RelayConfigError, match="settle"):
        RelayCallOperator(task_id="t", topic="t", reply_topic="r", event_type="e", settle=-1)
