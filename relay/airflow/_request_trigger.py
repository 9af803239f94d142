"""RelayRequestTrigger: a whole relay call, fan-out, direct-path invoke or result wait run in the
triggerer, for tasks started there (`start_in_triggerer=True`, Airflow's `start_from_trigger`).

Airflow hands the trigger the task's raw arguments (templates unrendered, an XComArg as a marker)
and a template context; the trigger renders them itself (StrictUndefined, native when the DAG
says so), resolves XComArg markers, and then, for a call or fan-out, builds the requests with the
task instance's deterministic ce-ids, creates the task subscription and publishes (off the loop; a
re-run after a triggerer failover re-sends the same ce-ids into the same subscription); an invoke
builds its request the same way, creates the subscription when it waits for the result, and POSTs
it to the function's URL with an ID token minted here (it ends with the function's HTTP answer when
it does not wait); a sensor's wait publishes nothing and reads the subscription its ids' publisher
created. It waits with
RelayResultTrigger's wake-hub wait (no settle delay: no worker exits, so apache/airflow#72716
cannot happen), takes and decodes the results, pushes today's XComs and ends the task with
TaskSuccessEvent, TaskFailedEvent or (a sensor's soft_fail / never_fail) TaskSkippedEvent. A
non-retryable failure of a task that has retries yields a plain TriggerEvent instead: the task
resumes on a worker only to raise it (Airflow has no fail-without-retry event).

Nothing heavy is imported at module import time (the triggerer imports trigger classes on its
event loop): the Google clients are loaded in a worker thread on first use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import (
    BaseTrigger,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)

from relay.airflow._http import HttpPolicy, http_answer, http_failure, http_parts, post_async
from relay.airflow._result_trigger import RelayResultTrigger
from relay.airflow._trigger_hooks import trigger_hook
from relay.airflow._wait import TIMEOUT, ResultWait, published_wait

if TYPE_CHECKING:
    from relay.airflow._http_invoke import Invocation
    from relay.airflow._publish import Published
    from relay.airflow.hooks import RelayHook

CLASSPATH = "relay.airflow.triggers.RelayRequestTrigger"
# The kinds of task: RelayCallOperator, RelayFanOutOperator, RelayHttpInvokeOperator,
# RelayResultSensor.
CALL, FAN_OUT, INVOKE, WAIT = "call", "fan_out", "invoke", "wait"
# The marker an XComArg of the task's inputs travels as in the trigger kwargs.
XCOM_MARKER = "__relay_xcom__"
# Key of the plain TriggerEvent that makes execute_complete raise a non-retryable error.
NON_RETRYABLE_EVENT = "relay_non_retryable"


class RelayRequestTrigger(BaseTrigger):
    """Runs one relay task (call, fan-out, invoke or sensor) in the triggerer, from its start to
    its end.

    :param spec: the task as relay.airflow._native.native_start wrote it at parse time: "kind"
        ("call", "fan_out", "invoke" or "wait"), "inputs" (templated, XComArgs as markers) and the
        plain settings.
    """

    def __init__(self, *, spec: Mapping[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spec = dict(spec)
        self._context: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs: the spec the operator wrote (names and data, never credentials)."""
        return CLASSPATH, {"spec": self.spec}

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Keep the context Airflow passes: run() renders the inputs itself (StrictUndefined,
        native when the DAG says so), turning a render error into a failed task."""
        self._context = context

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Publish, wait, end the task; exactly one event, never an exception."""
        try:
            event = await self._run_task()
        except Exception as exc:  # the trigger log is the task's only log: say why there
            self.log.error("relay task failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            event = TaskFailedEvent()
        yield event

    async def _run_task(self) -> TriggerEvent:
        ti = self.task_instance
        if ti is None:
            raise RuntimeError("RelayRequestTrigger runs only for a task started in the triggerer")
        context = self._context if self._context is not None else ti.get_template_context()
        try:
            inputs = await self._render_inputs(ti, context)
        except Exception as exc:
            self.log.error("could not render the task's inputs: %s: %s", type(exc).__name__, exc)
            return TaskFailedEvent()
        hook, wait = await self._start(ti, inputs)
        if isinstance(wait, TriggerEvent):  # an invoke that ended at its POST
            return wait
        delete = bool(self.spec.get("delete_subscriptions", True))
        try:
            event = await self._wait_and_conclude(ti, hook, wait, inputs)
        except Exception:
            if delete:
                await asyncio.to_thread(hook.delete_subscriptions, [wait.subscription])
            raise
        # Not on cancellation: the trigger's next run (another triggerer) needs the results.
        if delete:
            await asyncio.to_thread(hook.delete_subscriptions, [wait.subscription])
        return event

    async def _start(
        self, ti: Any, inputs: Mapping[str, Any]
    ) -> tuple[RelayHook, ResultWait | TriggerEvent]:
        """The task's hook and wait: a sensor's for the ids it was given; a call's or fan-out's
        once its requests are published (their ids pushed to XCom); an invoke's once POSTed, or
        the event that ends it there."""
        spec = self.spec
        if spec["kind"] == WAIT:
            return await asyncio.to_thread(_awaited, spec, inputs, self._deadline())
        if spec["kind"] == INVOKE:
            return await self._invoke(ti, inputs)
        started = time.monotonic()
        hook, published, wait = await asyncio.to_thread(
            _publish, spec, inputs, ti, self._deadline()
        )
        self.log.info(
            "published %d %s request(s) to %s (results in %s) in %.2f s",
            len(published.event_ids),
            inputs["event_type"],
            inputs["topic"],
            published.subscription,
            time.monotonic() - started,
        )
        await self._xcom(ti, "event_ids", list(published.event_ids))
        await self._xcom(ti, "correlation_ids", list(published.correlation_ids))
        return hook, wait

    async def _invoke(
        self, ti: Any, inputs: Mapping[str, Any]
    ) -> tuple[RelayHook, ResultWait | TriggerEvent]:
        """Build the request (and with wait_for_result its subscription), POST it with the
        worker path's retry policy, the ID token minted here per attempt; then the wait for its
        result, or the event that ends the task: failed (no 2xx, a failed answer) or succeeded
        with the function's answer as return value."""
        spec = self.spec
        deadline = self._deadline()
        hook, call = await asyncio.to_thread(_invocation, spec, inputs, ti, deadline)
        await self._xcom(ti, "event_ids", [call.event.id])
        await self._xcom(ti, "correlation_ids", [str(call.event.correlationid)])
        headers, body = http_parts(call.event)
        payload = await post_async(
            hook,
            call.url,
            headers,
            body,
            audience=call.audience,
            policy=HttpPolicy.from_json(spec["http"]),
            deadline=deadline,
        )
        self.log.info(
            "POST %s %s: %s after %s attempt(s)",
            inputs["event_type"],
            call.url,
            payload.get("code"),
            payload.get("attempts"),
        )
        error = http_failure(call.url, payload)
        if error is not None:
            if call.wait is not None:
                await asyncio.to_thread(hook.delete_subscriptions, [call.wait.subscription])
            return hook, self._failed(ti, error, timed_out=False)
        if call.wait is not None:
            return hook, call.wait
        try:
            answer = http_answer(payload)
        except Exception as exc:
            return hook, self._failed(ti, exc, timed_out=False)
        await self._xcom(ti, "return_value", answer)
        return hook, TaskSuccessEvent()

    async def _wait_and_conclude(
        self, ti: Any, hook: RelayHook, wait: ResultWait, inputs: Mapping[str, Any]
    ) -> TriggerEvent:
        from relay.airflow import _results

        spec = self.spec
        chain = inputs["impersonation_chain"]
        waiting = RelayResultTrigger(
            wait=wait,
            gcp_conn_id=spec["gcp_conn_id"],
            impersonation_chain=chain,
            recheck_interval=spec["recheck_interval"],
        )
        started = time.monotonic()
        outcome = await waiting.wait_woken()
        waited = time.monotonic() - started
        found = outcome.found()
        reader = await trigger_hook(spec["gcp_conn_id"], chain)
        messages = await _results.take_results_async(reader, wait, found) if found else {}
        outcomes = await asyncio.to_thread(_results.decode, outcome, messages)
        await self._xcom(ti, "outcomes", [o.to_dict() for o in outcomes])
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        self.log.info(
            "results: %s (wait %s after %.2f s; taken and decoded in %.2f s)",
            counts,
            outcome.status,
            waited,
            time.monotonic() - started - waited,
        )
        try:
            if outcome.status == "error":
                from relay.airflow.exceptions import RelayResultLostError

                raise RelayResultLostError(outcome.message or "the wait failed")
            single = spec["kind"] in (CALL, INVOKE) or (
                spec["kind"] == WAIT and isinstance(inputs["correlation_ids"], str)
            )
            value = _results.conclude(
                outcomes, policy=wait.policy, timeout=spec["timeout"], single=single
            )
        except Exception as exc:
            return self._failed(ti, exc, timed_out=outcome.status == TIMEOUT)
        await self._xcom(ti, "return_value", value)
        return TaskSuccessEvent()

    def _deadline(self) -> float:
        """When the wait ends: Airflow's trigger timeout (`timeout` + grace from the moment the
        scheduler deferred the task, the same for every run of the trigger) less the grace; now +
        `timeout` when Airflow gave none."""
        timeout_after = getattr(self, "timeout_after", None)
        if isinstance(timeout_after, datetime):
            return timeout_after.timestamp() - float(self.spec["grace"])
        return time.time() + float(self.spec["timeout"])

    def _failed(self, ti: Any, exc: Exception, *, timed_out: bool) -> TriggerEvent:
        """The event of a failed task: TaskFailedEvent (Airflow's retries apply); for a
        non-retryable error of a task with retries left, the event that makes a worker raise it;
        TaskSkippedEvent for a sensor that `sensor_skips` the error."""
        from relay.airflow._results import sensor_skips
        from relay.airflow.exceptions import (
            RelayNonRetryablePartialFailureError,
            RelayNonRetryableResultError,
        )

        spec = self.spec
        if sensor_skips(
            exc,
            timed_out=timed_out,
            soft_fail=spec.get("soft_fail", False),
            never_fail=spec.get("never_fail", False),
        ):
            self.log.info("skipped (soft_fail / never_fail): %s: %s", type(exc).__name__, exc)
            return TaskSkippedEvent()
        self.log.error("%s: %s", type(exc).__name__, exc)
        task = getattr(ti, "task", None)
        retries = int(getattr(task, "retries", 0) or 0)
        final = RelayNonRetryableResultError | RelayNonRetryablePartialFailureError
        if isinstance(exc, final) and retries > 0:
            classpath, args, kwargs = exc.serialize()
            self.log.info("non-retryable: resuming on a worker to fail without retries")
            return TriggerEvent(  # type: ignore[no-untyped-call]
                {NON_RETRYABLE_EVENT: {"classpath": classpath, "args": args, "kwargs": kwargs}}
            )
        return TaskFailedEvent()

    async def _render_inputs(self, ti: Any, context: Any) -> dict[str, Any]:
        """The task's inputs rendered (StrictUndefined; native if the DAG renders natively) with
        XComArg markers replaced by the upstream's XCom (not rendered further, as on a worker)."""
        from airflow.sdk.definitions._internal.templater import (
            NativeEnvironment,
            SandboxedEnvironment,
        )
        from jinja2 import StrictUndefined

        dag = context.get("dag") if hasattr(context, "get") else None
        native = bool(getattr(dag, "render_template_as_native_obj", False))
        env_cls = NativeEnvironment if native else SandboxedEnvironment
        env = env_cls(undefined=StrictUndefined, extensions=["jinja2.ext.do"], cache_size=0)

        async def render(value: Any) -> Any:
            if isinstance(value, str):
                return env.from_string(value).render(**context) if "{" in value else value
            if isinstance(value, Mapping):
                if set(value) == {XCOM_MARKER}:
                    ref = value[XCOM_MARKER]
                    from airflow.sdk.execution_time.xcom import XCom  # the configured backend

                    return await XCom.aget_one(
                        key=ref["key"],
                        dag_id=ti.dag_id,
                        task_id=ref["task_id"],
                        run_id=ti.run_id,
                        map_index=-1,
                    )
                return {k: await render(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [await render(v) for v in value]
            return value

        return {name: await render(value) for name, value in self.spec["inputs"].items()}

    @staticmethod
    async def _xcom(ti: Any, key: str, value: Any) -> None:
        from airflow.sdk.execution_time.xcom import XCom  # the configured backend

        await XCom.aset(
            key, value, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=-1
        )


def _hook(spec: Mapping[str, Any], inputs: Mapping[str, Any]) -> RelayHook:
    """The hook of the task's identity (an invoke has no wait_project)."""
    from relay.airflow.hooks import RelayHook

    return RelayHook(
        gcp_conn_id=spec["gcp_conn_id"],
        impersonation_chain=inputs["impersonation_chain"],
        project_id=inputs["project_id"],
        wait_project=inputs.get("wait_project"),
    )


def _invocation(
    spec: Mapping[str, Any], inputs: Mapping[str, Any], ti: Any, deadline: float
) -> tuple[RelayHook, Invocation]:
    """The hook and the invoke's request, built as the worker builds it (blocking: runs in a
    thread, which also imports the operator's module off the loop)."""
    from relay.airflow._http_invoke import invocation

    hook = _hook(spec, inputs)
    call = invocation(
        hook,
        {"ti": ti},
        url=inputs["url"],
        function=inputs["function"],
        region=inputs["region"],
        event_type=inputs["event_type"],
        data=inputs["data"],
        source=spec["source"],
        reply_topic=inputs["reply_topic"],
        correlation_id=inputs["correlation_id"],
        audience=inputs["audience"],
        validate=spec["validate"],
        wait_for_result=spec["wait_for_result"],
        deadline=deadline,
    )
    return hook, call


def _awaited(
    spec: Mapping[str, Any], inputs: Mapping[str, Any], deadline: float
) -> tuple[RelayHook, ResultWait]:
    """The hook and the wait of a sensor (blocking: runs in a thread)."""
    hook = _hook(spec, inputs)
    wait = published_wait(
        hook,
        inputs["reply_topic"],
        inputs["correlation_ids"],
        deadline=deadline,
        policy=spec["policy"],
    )
    return hook, wait


def _publish(
    spec: Mapping[str, Any], inputs: Mapping[str, Any], ti: Any, deadline: float
) -> tuple[RelayHook, Published, ResultWait]:
    """Build, validate and publish the task's requests (blocking: runs in a thread); returns the
    hook, what was published and the wait for its results."""
    from relay.airflow._publish import (
        build_requests,
        context_group,
        correlation_ids_for,
        default_source,
        publish_requests,
        task_request_ids,
    )
    from relay.airflow.exceptions import RelayConfigError

    hook = _hook(spec, inputs)
    context = {"ti": ti}
    if spec["kind"] == CALL:
        items = [inputs["data"]]
        given = [inputs["correlation_id"]] if inputs["correlation_id"] else None
    else:
        raw = inputs["items"]
        if isinstance(raw, str | bytes | Mapping) or not hasattr(raw, "__iter__"):
            raise RelayConfigError(f"items must render to a list, got {type(raw).__name__}")
        items = list(raw)
        if not items:
            raise RelayConfigError("items rendered to an empty list: nothing to send")
        given = None
    events = build_requests(
        inputs["event_type"],
        items,
        source=inputs["source"] or default_source(ti.dag_id, ti.task_id),
        reply_to=hook.topic_path(inputs["reply_topic"]),
        correlation_ids=correlation_ids_for(context_group(context), len(items), given),
        ids=task_request_ids(context, len(items)),
        expiry=_expiry(spec["expiry"]),
        validate=spec["validate"],
    )
    ttl = spec["subscription_ttl"]
    published = publish_requests(
        hook,
        topic=inputs["topic"],
        reply_topic=inputs["reply_topic"],
        events=events,
        deadline=deadline,
        subscription_ttl=None if ttl is None else timedelta(seconds=ttl),
        subscription_retention=timedelta(seconds=spec["subscription_retention"]),
        attempts=spec["publish_attempts"],
        timeout=spec["publish_timeout"],
    )
    wait = ResultWait(
        completion_topic=hook.topic_path(inputs["reply_topic"]),
        subscription=str(published.subscription),
        correlation_ids=published.correlation_ids,
        deadline=deadline,
        policy=spec["policy"],
    )
    return hook, published, wait


def _expiry(value: Mapping[str, Any] | None) -> datetime | timedelta | None:
    if value is None:
        return None
    if "seconds" in value:
        return timedelta(seconds=float(value["seconds"]))
    return datetime.fromisoformat(str(value["at"])).astimezone(UTC)
