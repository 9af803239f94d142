"""Operators that send relay requests over Pub/Sub and (optionally) wait for their results.

- RelayPublishOperator: publish request(s); XCom event ids and correlation ids.
- RelayCallOperator: publish one request and wait for its result in the same task (the common case).
- RelayFanOutOperator: publish N requests and wait for all N in one deferral (fail fast or
  collect all).
- RelayHttpInvokeOperator (re-exported): POST a CloudEvent straight to a function's HTTPS URL.

All follow the Google provider's conventions: gcp_conn_id, impersonation_chain, project_id,
templated fields and `deferrable`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.configuration import conf

from relay.airflow._defer_after import checked_defer_after, finish_or_defer
from relay.airflow._http_invoke import RelayHttpInvokeOperator
from relay.airflow._identity import ImpersonationChain
from relay.airflow._lifetimes import (
    DEFAULT_SUBSCRIPTION_RETENTION,
    DEFAULT_SUBSCRIPTION_TTL,
    check_lifetime,
)
from relay.airflow._native import native_start, resume_wait
from relay.airflow._publish import (
    Published,
    build_requests,
    context_group,
    correlation_ids_for,
    default_source,
    publish_requests,
    task_request_ids,
)
from relay.airflow._request_trigger import CALL, FAN_OUT
from relay.airflow._result_trigger import RelayResultTrigger, wait_blocking
from relay.airflow._results import finish
from relay.airflow._settle import resolve_settle
from relay.airflow._wait import COLLECT_ALL, FAIL_FAST, ResultWait, WaitOutcome, check_policy
from relay.airflow.exceptions import RelayConfigError

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook

__all__ = [
    "RelayCallOperator",
    "RelayFanOutOperator",
    "RelayHttpInvokeOperator",
    "RelayPublishOperator",
]


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _RelayRequestOperator(BaseOperator):
    """Shared arguments and the publish step of the Pub/Sub operators."""

    template_fields: Sequence[str] = (
        "topic",
        "reply_topic",
        "event_type",
        "source",
        "project_id",
        "wait_project",
        "impersonation_chain",
    )
    template_fields_renderers = {"data": "json", "items": "json"}
    ui_color = "#d8e9f6"

    def __init__(
        self,
        *,
        topic: str,
        reply_topic: str,
        event_type: str,
        source: str | None = None,
        expiry: datetime | timedelta | None = None,
        validate: bool = True,
        subscription_ttl: timedelta | None = DEFAULT_SUBSCRIPTION_TTL,
        subscription_retention: timedelta = DEFAULT_SUBSCRIPTION_RETENTION,
        publish_attempts: int = 5,
        publish_timeout: float = 30.0,
        project_id: str | None = None,
        wait_project: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_lifetime(subscription_ttl, subscription_retention)
        self.topic = topic
        self.reply_topic = reply_topic
        self.event_type = event_type
        self.source = source
        self.expiry = expiry
        self.validate = validate
        self.subscription_ttl = subscription_ttl
        self.subscription_retention = subscription_retention
        self.publish_attempts = publish_attempts
        self.publish_timeout = publish_timeout
        self.project_id = project_id
        self.wait_project = wait_project
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain

    @cached_property
    def hook(self) -> RelayHook:
        """The hook of this task's identity (clients are shared per process anyway)."""
        from relay.airflow.hooks import RelayHook  # the Google provider: not at DAG parse

        return RelayHook(
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            project_id=self.project_id,
            wait_project=self.wait_project,
        )

    def _publish(
        self,
        context: Any,
        items: Sequence[Any],
        correlation_ids: Sequence[str] | None,
        *,
        subscribe: bool,
        deadline: float,
    ) -> Published:
        hook = self.hook
        events = build_requests(
            self.event_type,
            items,
            source=self.source or default_source(self.dag_id, self.task_id),
            reply_to=hook.topic_path(self.reply_topic),
            correlation_ids=correlation_ids_for(
                context_group(context), len(items), correlation_ids
            ),
            ids=task_request_ids(context, len(items)),
            expiry=self.expiry,
            validate=self.validate,
        )
        published = publish_requests(
            hook,
            topic=self.topic,
            reply_topic=self.reply_topic,
            events=events,
            deadline=deadline,
            create_subscription=subscribe,
            subscription_ttl=self.subscription_ttl,
            subscription_retention=self.subscription_retention,
            attempts=self.publish_attempts,
            timeout=self.publish_timeout,
        )
        self.log.info(
            "published %d %s request(s) to %s (results in %s)",
            len(events),
            self.event_type,
            self.topic,
            published.subscription,
        )
        return published

    @staticmethod
    def _push_ids(context: Any, published: Published) -> None:
        ti = context["ti"]
        ti.xcom_push(key="event_ids", value=list(published.event_ids))
        ti.xcom_push(key="correlation_ids", value=list(published.correlation_ids))


class RelayPublishOperator(_RelayRequestOperator):
    """Publish one request (`data`) or several (`items`) and return their correlation ids.

    XCom: return value and key "correlation_ids" = list of correlation ids; key "event_ids" =
    list of ce-ids; key "requests" = [{event_id, correlation_id, subscription, message_id}]. With
    `create_subscriptions` (default) the completion subscription of the requests' group exists
    before they are published, so a later RelayResultSensor cannot miss an early result.

    :param topic: request topic (short name or projects/P/topics/T).
    :param reply_topic: completion topic the function publishes results to (becomes ce-replyto).
    :param event_type: CloudEvents type of the requests; data is validated against its schema.
    :param data: the data of a single request (templated). Mutually exclusive with `items`.
    :param items: the data of several requests (templated).
    :param correlation_ids: optional explicit correlation ids, one per request, all of the form
        `<group>.<item>` with one group (default: `<this task instance's group>.<index>`).
    """

    template_fields: Sequence[str] = (
        *_RelayRequestOperator.template_fields,
        "data",
        "items",
        "correlation_ids",
    )

    def __init__(
        self,
        *,
        data: Any = None,
        items: Sequence[Any] | None = None,
        correlation_ids: Sequence[str] | str | None = None,
        create_subscriptions: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data = data
        self.items = items
        self.correlation_ids = correlation_ids
        self.create_subscriptions = create_subscriptions

    def execute(self, context: Any) -> list[str]:
        """Validate, subscribe, publish; returns the correlation ids."""
        if self.items is not None and self.data is not None:
            raise RelayConfigError("give either data (one request) or items (several), not both")
        items = list(self.items) if self.items is not None else [self.data]
        cids = (
            [self.correlation_ids]
            if isinstance(self.correlation_ids, str)
            else self.correlation_ids
        )
        published = self._publish(
            context,
            items,
            cids,
            subscribe=self.create_subscriptions,
            deadline=time.time() + self.publish_timeout * self.publish_attempts,
        )
        self._push_ids(context, published)
        context["ti"].xcom_push(key="requests", value=published.requests())
        return list(published.correlation_ids)


class _RelayWaitingOperator(_RelayRequestOperator):
    """Publish then wait: deferring to RelayResultTrigger, or waiting in the worker."""

    template_fields: Sequence[str] = (*_RelayRequestOperator.template_fields, "defer_after")

    def __init__(
        self,
        *,
        timeout: timedelta | float = timedelta(hours=1),
        recheck_interval: float = 300.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        settle: float | None = None,
        defer_after: timedelta | float | str = 0,
        start_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_in_triggerer = start_in_triggerer
        self.defer_after = checked_defer_after(defer_after)
        # None: `[workers] min_heartbeat_interval` + 3 s, read when deferring (the worker's config)
        self.settle = None if settle is None else resolve_settle(settle)
        self.timeout = _seconds(timeout)
        if self.timeout <= 0:
            raise RelayConfigError("timeout must be positive: every wait needs a deadline")
        retention = self.subscription_retention.total_seconds()
        if self.timeout > retention:
            raise RelayConfigError(
                f"timeout {self.timeout:g} s is longer than subscription_retention "
                f"{retention:g} s: a result older than the retention would be dropped before "
                "the task takes it"
            )
        self.recheck_interval = recheck_interval
        self.deferrable = deferrable
        self._wait_policy = COLLECT_ALL

    _single = False

    def _start_in_triggerer(self, inputs: dict[str, Any]) -> None:
        """With `start_in_triggerer`, make this task start in the triggerer (see native_start).
        A mapped task never gets here at parse time and runs on the worker path."""
        if not self.start_in_triggerer:
            return
        native_start(
            self,
            kind=CALL if self._single else FAN_OUT,
            inputs={
                **{f: getattr(self, f) for f in _RelayRequestOperator.template_fields},
                **inputs,
            },
            settings={
                "gcp_conn_id": self.gcp_conn_id,
                "expiry": self.expiry,
                "validate": self.validate,
                "subscription_ttl": self.subscription_ttl,
                "subscription_retention": self.subscription_retention,
                "publish_attempts": self.publish_attempts,
                "publish_timeout": self.publish_timeout,
                "recheck_interval": self.recheck_interval,
                "policy": self._wait_policy,
            },
            timeout=self.timeout,
        )

    def _wait(self, context: Any, items: Sequence[Any], cids: Sequence[str] | None) -> Any:
        deadline = time.time() + self.timeout
        published = self._publish(context, items, cids, subscribe=True, deadline=deadline)
        self._push_ids(context, published)
        trigger = RelayResultTrigger(
            wait=ResultWait(
                completion_topic=self.hook.topic_path(self.reply_topic),
                subscription=str(published.subscription),
                correlation_ids=published.correlation_ids,
                deadline=deadline,
                policy=self._wait_policy,
            ),
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            recheck_interval=self.recheck_interval,
        )
        if self.deferrable:
            return finish_or_defer(
                self, context, trigger, settle=self.settle, defer_after=self.defer_after
            )
        return self.finish_wait(context, wait_blocking(trigger))

    def execute_complete(self, context: Any, event: dict[str, Any], **_: Any) -> Any:
        """Resume on the worker from the trigger's event."""
        return resume_wait(self, context, event)

    def finish_wait(self, context: Any, outcome: WaitOutcome) -> Any:
        """Take and ack the results, delete the subscription, return the data or raise."""
        return finish(
            context,
            self.hook,
            outcome,
            policy=self._wait_policy,
            timeout=self.timeout,
            single=self._single,
        )


class RelayCallOperator(_RelayWaitingOperator):
    """Publish one request and wait for its result in the same task; returns the result data.

    Raises RelayResultError (the function's error type and message) on dev.relay.result.failed
    (RelayNonRetryableResultError, which Airflow fails without retries, when the failure is not
    retryable) and RelayTimeoutError when no result arrives within `timeout`. Map it with
    `RelayCallOperator.partial(...).expand(data=[...])`: one request per mapped task.

    :param data: the request data (templated).
    :param correlation_id: optional explicit correlation id `<group>.<item>` (templated; default:
        `<this task instance's group>.0`).
    :param timeout: how long to wait for the result (seconds or timedelta).
    :param deferrable: wait in the triggerer (recommended) instead of holding a worker slot.
    :param settle: deferrable only: seconds after the deferral before the trigger may fire
        (default `[workers] min_heartbeat_interval` + 3, for apache/airflow#72716; 0 = off).
    :param defer_after: deferrable only: seconds (or timedelta; templated) to wait on the worker
        before deferring; results in by then cost no deferral (default 0: defer at once).
    :param start_in_triggerer: start, run and end the task in the triggerer (no worker process;
        see docs/airflow.md "Starting in the triggerer"); data must be literal, templated, or a
        plain XComArg of a non-mapped task; no outlets. A mapped task runs as without it.
    """

    template_fields: Sequence[str] = (
        *_RelayWaitingOperator.template_fields,
        "data",
        "correlation_id",
    )
    _single = True

    def __init__(
        self, *, data: Any = None, correlation_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.data = data
        self.correlation_id = correlation_id
        self._start_in_triggerer({"data": data, "correlation_id": correlation_id})

    def execute(self, context: Any) -> Any:
        """Publish, then wait for the result."""
        cids = [self.correlation_id] if self.correlation_id else None
        return self._wait(context, [self.data], cids)


class RelayFanOutOperator(_RelayWaitingOperator):
    """Publish one request per item and wait for all of them in a single deferral.

    Returns the result data in item order. `policy="fail_fast"` raises RelayResultError at the first
    failed result; `policy="collect_all"` waits for every result (or the timeout) and raises
    RelayPartialFailureError naming each request that failed or timed out (the non-retryable
    subclass, failing without task retries, when all of them failed non-retryably). XCom key
    "outcomes" holds [{correlation_id, status, data, error, result_id}] in item order. Works under
    `.expand(items=[[...], [...]])` (one fan-out per mapped task).

    :param items: the data of the requests (templated).
    :param policy: "fail_fast" or "collect_all".
    :param defer_after: deferrable only: seconds (or timedelta; templated) to wait on the worker
        before deferring; results in by then cost no deferral (default 0: defer at once).
    :param start_in_triggerer: start, run and end the task in the triggerer (no worker process;
        see docs/airflow.md "Starting in the triggerer"); items must be literal, templated, or a
        plain XComArg of a non-mapped task (`items=list_files()`); no outlets. A mapped task
        (`.partial().expand()`) runs as without it (apache/airflow#48009).
    """

    template_fields: Sequence[str] = (*_RelayWaitingOperator.template_fields, "items")

    def __init__(self, *, items: Sequence[Any], policy: str = FAIL_FAST, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_policy(policy)
        self.items = items
        self.policy = policy
        self._wait_policy = policy
        self._start_in_triggerer({"items": items})

    def execute(self, context: Any) -> Any:
        """Publish all items, then wait for all results."""
        items = list(self.items)
        if not items:
            return []
        return self._wait(context, items, None)
