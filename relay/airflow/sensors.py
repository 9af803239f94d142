"""RelayResultSensor: wait for the results of correlation ids published earlier."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf

from relay.airflow._defer_after import checked_defer_after, finish_or_defer
from relay.airflow._identity import ImpersonationChain
from relay.airflow._names import wait_subscription
from relay.airflow._result_trigger import (
    COLLECT_ALL,
    POLICIES,
    RelayResultTrigger,
    peek_blocking,
    wait_pairs,
)
from relay.airflow._results import finish
from relay.airflow._settle import resolve_settle
from relay.airflow.exceptions import RelayConfigError
from relay.airflow.hooks import RelayHook

__all__ = ["RelayResultSensor"]


class RelayResultSensor(BaseSensorOperator):
    """Wait for the result of a correlation id (or several) on a completion topic.

    The completion subscriptions must exist already (RelayPublishOperator creates them before it
    publishes). Returns the result data (one id) or the list of result data (several, in order);
    raises RelayResultError with the function's error type and message on dev.relay.result.failed,
    RelayTimeoutError after `timeout`, RelayPartialFailureError under policy collect_all.

    :param reply_topic: the completion topic (short name or full path).
    :param correlation_ids: one id or a list (templated; e.g. the publish task's XCom).
    :param policy: "fail_fast" or "collect_all" (several ids).
    :param delete_subscriptions: delete the completion subscriptions when done (default).
    :param deferrable: wait in the triggerer.
    :param settle: deferrable only: seconds after the deferral before the trigger may fire
        (default `[workers] min_heartbeat_interval` + 3, for apache/airflow#72716; 0 = off).
    :param defer_after: deferrable only: seconds (or timedelta; templated) to wait on the worker
        before deferring; results in by then cost no deferral (default 0: defer at once).
    """

    template_fields: Sequence[str] = (
        "reply_topic",
        "correlation_ids",
        "defer_after",
        "project_id",
        "impersonation_chain",
    )

    def __init__(
        self,
        *,
        reply_topic: str,
        correlation_ids: str | Sequence[str],
        policy: str = COLLECT_ALL,
        delete_subscriptions: bool = True,
        recheck_interval: float = 300.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        settle: float | None = None,
        defer_after: timedelta | float | str = 0,
        project_id: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        timeout: timedelta | float = timedelta(hours=1),
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        if policy not in POLICIES:
            raise RelayConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.reply_topic = reply_topic
        self.correlation_ids = correlation_ids
        self.policy = policy
        self.delete_subscriptions = delete_subscriptions
        self.recheck_interval = recheck_interval
        self.deferrable = deferrable
        # None: `[workers] min_heartbeat_interval` + 3 s, read when deferring (the worker's config)
        self.settle = None if settle is None else resolve_settle(settle)
        self.defer_after = checked_defer_after(defer_after)
        self.project_id = project_id
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self._seen: dict[str, Any] = {}

    @cached_property
    def hook(self) -> RelayHook:
        """The hook of this task's identity."""
        return RelayHook(
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            project_id=self.project_id,
        )

    def _ids(self) -> list[str]:
        ids = self.correlation_ids
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids:
            raise RelayConfigError("correlation_ids is empty")
        return [str(i) for i in ids]

    def _waits(self) -> list[list[str]]:
        """[[correlation id, subscription], ...] in the order of `correlation_ids`."""
        topic = self.hook.topic_path(self.reply_topic)
        return [
            [cid, wait_subscription(self.hook.relay_project_id, topic, cid)] for cid in self._ids()
        ]

    def _trigger(self, deadline: float) -> RelayResultTrigger:
        return RelayResultTrigger(
            completion_topic=self.hook.topic_path(self.reply_topic),
            waits=self._waits(),
            deadline=deadline,
            policy=self.policy,
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            recheck_interval=self.recheck_interval,
        )

    def execute(self, context: Any) -> Any:
        """Defer to RelayResultTrigger, or poke in the worker."""
        if not self.deferrable:
            return super().execute(context)
        trigger = self._trigger(time.time() + float(self.timeout))
        return finish_or_defer(
            self, context, trigger, settle=self.settle, defer_after=self.defer_after
        )

    def poke(self, context: Any) -> PokeReturnValue:
        """One peek at every pending subscription (non-deferrable mode)."""
        trigger = self._trigger(time.time())
        results = peek_blocking(trigger)
        done = trigger.is_done(results)
        if not done:
            return PokeReturnValue(is_done=False)
        payload = {
            "status": "done",
            "waits": wait_pairs(trigger.waits),
            "results": results,
            "message": "",
        }
        return PokeReturnValue(is_done=True, xcom_value=self.execute_complete(context, payload))

    def execute_complete(self, context: Any, event: dict[str, Any], **_: Any) -> Any:
        """Resume on the worker: fetch and ack results, delete the subscriptions, return data."""
        return finish(
            context,
            self.hook,
            event["waits"],
            event,
            policy=self.policy,
            timeout=float(self.timeout),
            single=isinstance(self.correlation_ids, str),
            delete=self.delete_subscriptions,
        )
