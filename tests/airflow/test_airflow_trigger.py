"""RelayResultTrigger in an asyncio loop against the real broker: early results, wake-ups, restarts,
duplicates, isolation between correlation ids, timeouts and the shared hub's lifecycle."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from _airflow_responder import answer
from relay.airflow import _wakehub
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


def send(hook: RelayHook, topics: dict[str, str], *items: Any) -> tuple[list[Event], list[Published]]:
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


async def first_event(trigger: RelayResultTrigger, timeout: float = 40.0) -> dict[str, Any]:
    event = await asyncio.wait_for(anext(trigger.run()), timeout)
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


async def wait_for_hub(topic: str, timeout: float = 10.0) -> _wakehub.WakeHub:
    deadline = time.monotonic() + timeout
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
    assert time.monotonic() - started < 2.0  # woken by the hub, not by a periodic re-check
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
        finish, {}, hook, second.waits, third_payload,
        policy="collect_all", timeout=30, single=True,
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
    outcomes = await asyncio.to_thread(collect, hook, dict(make_trigger(topics, published).waits), payload)
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
    events, published = await asyncio.to_thread(send, hook, topics, *({"i": i} for i in range(count)))
    triggers = [make_trigger(topics, [p], recheck_interval=3600) for p in published]
    tasks = [asyncio.create_task(first_event(t, 60)) for t in triggers]
    hub = await wait_for_hub(topics["results"])
    await asyncio.sleep(0.5)
    publisher = broker.publisher()
    # a stranger's result on the same topic first, then every result in reverse order
    stranger = build_requests(EXAMPLE_ECHO, [{}], source="/x", reply_to=topics["results"])[0]

    def publish_all() -> dict[str, str]:
        answer(publisher, stranger, {"stranger": True})
        return {str(e.correlationid): answer(publisher, e, {"cid": e.correlationid}) for e in reversed(events)}

    sent = await asyncio.to_thread(publish_all)
    payloads = await asyncio.gather(*tasks)
    assert len(_wakehub.hubs()) <= 1 and hub.streams_opened == 1  # one shared stream for all
    for trigger, payload in zip(triggers, payloads, strict=True):
        ((cid, info),) = payload["results"].items()
        assert set(trigger.waits) == {cid}
        assert info["message_id"] == sent[cid]
    sample = [0, count // 2, count - 1]
    for index in sample:
        value = await asyncio.to_thread(
            finish, {}, hook, triggers[index].waits, payloads[index],
            policy="collect_all", timeout=30, single=True,
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
