"""RelayHttpInvokeOperator: the direct path to a function's HTTPS URL.

The request is the same CloudEvent as on Pub/Sub (binary HTTP mode, ce-replyto included): the
function publishes its result to the completion topic and answers 2xx. With `wait_for_result`
(default) the operator then waits for that result exactly like RelayCallOperator (the completion
subscription is created before the POST); otherwise it returns the function's HTTP answer.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.configuration import conf

from relay.airflow._defer_after import DEFER_GRACE, finish_or_defer
from relay.airflow._http import (
    DEFAULT_FAIL_FAST_STATUSES,
    HttpPolicy,
    encode_body,
    http_answer,
    http_failure,
    http_parts,
    post_sync,
)
from relay.airflow._http_trigger import RelayHttpInvokeTrigger
from relay.airflow._identity import ImpersonationChain
from relay.airflow._names import correlation_group
from relay.airflow._native import native_start, resume_wait
from relay.airflow._publish import (
    build_requests,
    context_group,
    correlation_ids_for,
    default_source,
    task_request_ids,
)
from relay.airflow._request_trigger import INVOKE
from relay.airflow._result_trigger import RelayResultTrigger, wait_blocking
from relay.airflow._results import finish
from relay.airflow._settle import not_before, resolve_settle
from relay.airflow._wait import COLLECT_ALL, ResultWait, WaitOutcome, from_legacy
from relay.airflow.exceptions import RelayConfigError
from relay.protocol import Event, default_audience

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook


@dataclass(frozen=True)
class Invocation:
    """One direct-path request ready to POST: the function's URL, the CloudEvent, the ID token's
    audience and, when waiting for the result, the wait (its subscription created already)."""

    url: str
    event: Event
    audience: str
    wait: ResultWait | None


def invocation(
    hook: RelayHook,
    context: Mapping[str, Any],
    *,
    url: str | None,
    function: str | None,
    region: str | None,
    event_type: str,
    data: Any,
    source: str | None,
    reply_topic: str,
    correlation_id: str | None,
    audience: str | None,
    validate: bool,
    wait_for_result: bool,
    deadline: float,
) -> Invocation:
    """Resolve the URL (a function's through GetFunction), build the task instance's request (its
    deterministic ce-id: a retry, resume or trigger re-run re-sends it) and, with
    `wait_for_result`, create the completion subscription, before the POST. Blocking (worker, or
    a thread of the triggerer)."""
    if url is None:
        if function is None:
            raise RelayConfigError("give exactly one of url and function")
        url = hook.function_url(function, region)
        hook.log.info("function %s is served at %s", function, url)
    ti = context["ti"]
    (event,) = build_requests(
        event_type,
        [data],
        source=source or default_source(ti.dag_id, ti.task_id),
        reply_to=hook.topic_path(reply_topic),
        correlation_ids=correlation_ids_for(
            context_group(context), 1, [correlation_id] if correlation_id else None
        ),
        ids=task_request_ids(context, 1),
        validate=validate,
    )
    wait = None
    if wait_for_result:
        cid = str(event.correlationid)
        wait = ResultWait(
            completion_topic=hook.topic_path(reply_topic),
            subscription=hook.create_task_subscription(
                reply_topic, correlation_group(cid), deadline=deadline
            ),
            correlation_ids=(cid,),
            deadline=deadline,
            policy=COLLECT_ALL,
        )
    return Invocation(url, event, audience or default_audience(url), wait)


class RelayHttpInvokeOperator(BaseOperator):
    """POST a relay request as a CloudEvent to a function's HTTPS URL with an OIDC ID token.

    The token is minted from the connection's identity (impersonation chain, metadata server, or
    the connection's service account) where the request is sent; an anonymous connection sends
    none (local functions). Non-2xx answers are retried with exponential backoff and jitter, except
    `fail_fast_statuses` (default 400, 413: the function cannot read the request).

    Returns the result data (`wait_for_result=True`, default: waits on the completion topic like
    RelayCallOperator) or the function's JSON answer. XCom keys "event_ids"/"correlation_ids" as the
    Pub/Sub operators.

    :param url: the function's HTTPS URL (templated); or
    :param function: a deployed function's id (with `region`) or full resource name
        (templated): its URL is GetFunction's `service_config.uri`, looked up at execution.
    :param region: the function's region (with a function id).
    :param reply_topic: completion topic for the result (the function publishes there).
    :param audience: ID token audience; default what Google checks for that kind of URL: a
        `*.run.app` URL's scheme and host, a `*.cloudfunctions.net` URL's host and function name
        (relay.protocol.default_audience).
    :param settle: deferrable only: seconds after each deferral before its trigger may fire
        (default `[workers] min_heartbeat_interval` + 3; works around apache/airflow#72716).
    :param start_in_triggerer: start, POST, (wait) and end the task in the triggerer (no worker
        process; see docs/airflow.md "Starting in the triggerer"); inputs must be literal,
        templated, or a plain XComArg of a non-mapped task; no outlets. A mapped task runs as
        without it.
    """

    template_fields: Sequence[str] = (
        "url",
        "function",
        "region",
        "reply_topic",
        "event_type",
        "data",
        "audience",
        "correlation_id",
        "project_id",
        "impersonation_chain",
    )
    template_fields_renderers = {"data": "json"}

    def __init__(
        self,
        *,
        url: str | None = None,
        function: str | None = None,
        region: str | None = None,
        event_type: str,
        reply_topic: str,
        data: Any = None,
        audience: str | None = None,
        correlation_id: str | None = None,
        source: str | None = None,
        wait_for_result: bool = True,
        timeout: timedelta | float = timedelta(hours=1),
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        request_timeout: float = 60.0,
        fail_fast_statuses: Collection[int] = DEFAULT_FAIL_FAST_STATUSES,
        validate: bool = True,
        recheck_interval: float = 300.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        settle: float | None = None,
        project_id: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        start_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settle = None if settle is None else resolve_settle(settle)
        if (url is None) == (function is None):
            raise RelayConfigError("give exactly one of url and function")
        self.url = url
        self.function = function
        self.region = region
        self.event_type = event_type
        self.reply_topic = reply_topic
        self.data = data
        self.audience = audience
        self.correlation_id = correlation_id
        self.source = source
        self.wait_for_result = wait_for_result
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        if self.timeout <= 0:
            raise RelayConfigError("timeout must be positive")
        self.policy = HttpPolicy(
            max_attempts, backoff, max_backoff, request_timeout, tuple(fail_fast_statuses)
        )
        self.validate = validate
        self.recheck_interval = recheck_interval
        self.deferrable = deferrable
        self.project_id = project_id
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.start_in_triggerer = start_in_triggerer
        if start_in_triggerer:
            self._start_in_triggerer()

    def _start_in_triggerer(self) -> None:
        """Make this task start in the triggerer (see native_start); RelayConfigError says why it
        cannot. A mapped task never gets here at parse time and runs on the worker path."""
        native_start(
            self,
            kind=INVOKE,
            inputs={f: getattr(self, f) for f in self.template_fields},
            settings={
                "gcp_conn_id": self.gcp_conn_id,
                "source": self.source,
                "validate": self.validate,
                "wait_for_result": self.wait_for_result,
                "recheck_interval": self.recheck_interval,
                "http": self.policy.to_json(),
            },
            timeout=self.timeout,
        )

    @cached_property
    def hook(self) -> RelayHook:
        """The hook of this task's identity (clients are shared per process anyway)."""
        from relay.airflow.hooks import RelayHook  # the Google provider: not at DAG parse

        return RelayHook(
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            project_id=self.project_id,
        )

    def execute(self, context: Any) -> Any:
        """Build, (subscribe), POST; then wait for the result or return the answer."""
        hook = self.hook
        deadline = time.time() + self.timeout
        call = invocation(
            hook,
            context,
            url=self.url,
            function=self.function,
            region=self.region,
            event_type=self.event_type,
            data=self.data,
            source=self.source,
            reply_topic=self.reply_topic,
            correlation_id=self.correlation_id,
            audience=self.audience,
            validate=self.validate,
            wait_for_result=self.wait_for_result,
            deadline=deadline,
        )
        ti = context["ti"]
        ti.xcom_push(key="event_ids", value=[call.event.id])
        ti.xcom_push(key="correlation_ids", value=[str(call.event.correlationid)])
        carry: dict[str, Any] = {"deadline": deadline, "url": call.url}
        if call.wait is not None:
            carry["wait"] = call.wait.to_json()
        headers, body = http_parts(call.event)
        if self.deferrable:
            self.defer(
                trigger=RelayHttpInvokeTrigger(
                    url=call.url,
                    headers=headers,
                    body=encode_body(body),
                    audience=call.audience,
                    deadline=deadline,
                    max_attempts=self.policy.max_attempts,
                    backoff=self.policy.backoff,
                    max_backoff=self.policy.max_backoff,
                    request_timeout=self.policy.request_timeout,
                    fail_fast_statuses=self.policy.fail_fast_statuses,
                    gcp_conn_id=self.gcp_conn_id,
                    impersonation_chain=self.impersonation_chain,
                    carry=carry,
                    not_before=not_before(self.settle),
                ),
                method_name="execute_posted",
                timeout=timedelta(seconds=self.timeout) + DEFER_GRACE,
            )
        payload = post_sync(
            hook,
            call.url,
            headers,
            body,
            audience=call.audience,
            policy=self.policy,
            deadline=deadline,
        )
        return self.execute_posted(context, {**payload, "carry": carry})

    def execute_posted(self, context: Any, event: dict[str, Any], **_: Any) -> Any:
        """After the POST: fail with the HTTP error, or wait for / return the result."""
        hook = self.hook
        carry = event["carry"]
        wait = _carried_wait(carry, hook.topic_path(self.reply_topic))
        error = http_failure(str(carry.get("url") or self.url), event)
        if error is not None:
            if wait is not None:
                hook.delete_subscriptions(list(wait.subscriptions()))
            raise error
        if wait is None:
            return http_answer(event)
        trigger = RelayResultTrigger(
            wait=wait,
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            recheck_interval=self.recheck_interval,
        )
        if self.deferrable:
            return finish_or_defer(self, context, trigger, settle=self.settle, defer_after=0)
        return self.finish_wait(context, wait_blocking(trigger))

    def execute_complete(self, context: Any, event: dict[str, Any], **_: Any) -> Any:
        """Resume after the result wait (or raise the non-retryable error RelayRequestTrigger
        sent)."""
        return resume_wait(self, context, event)

    def finish_wait(self, context: Any, outcome: WaitOutcome) -> Any:
        """Take and ack the result, delete the subscription, return the data or raise."""
        return finish(
            context, self.hook, outcome, policy=COLLECT_ALL, timeout=self.timeout, single=True
        )


def _carried_wait(carry: dict[str, Any], completion_topic: str) -> ResultWait | None:
    """The result wait carried through the POST's deferral: this version's, or relay 0.1's
    `waits` pairs (a task deferred before an upgrade); None when not waiting for the result."""
    if "wait" in carry:
        return ResultWait.from_json(carry["wait"])
    if carry.get("waits"):
        return from_legacy(
            carry["waits"],
            completion_topic=completion_topic,
            deadline=float(carry["deadline"]),
            policy=COLLECT_ALL,
        )
    return None
