"""RelayResultSensor: wait for the results of correlation ids published earlier."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowSkipException

from relay.airflow._defer_after import checked_defer_after, finish_or_defer
from relay.airflow._identity import ImpersonationChain
from relay.airflow._native import native_start, refusal, resume_wait
from relay.airflow._request_trigger import WAIT
from relay.airflow._result_trigger import RelayResultTrigger, peek_blocking
from relay.airflow._results import finish, sensor_skips
from relay.airflow._settle import resolve_settle
from relay.airflow._wait import (
    COLLECT_ALL,
    DONE,
    ERROR,
    TIMEOUT,
    WaitOutcome,
    check_policy,
    published_wait,
)
from relay.airflow.exceptions import RelayResultLostError

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook

__all__ = ["RelayResultSensor"]


class RelayResultSensor(BaseSensorOperator):
    """Wait for the result of a correlation id (or several) on a completion topic.

    The ids must share one group (`<group>.<item>`, as RelayPublishOperator makes them), whose
    completion subscription must exist already (RelayPublishOperator creates it before it
    publishes, with the same `wait_project`). One sensor per group: the sensor deletes the
    subscription when done (unless `delete_subscriptions=False`), and with it any result of ids
    it did not wait for. Returns the result data (one id) or the list of result data (several, in
    order);
    raises RelayResultError with the function's error type and message on dev.relay.result.failed,
    RelayTimeoutError after `timeout` (skipped instead with `soft_fail`), RelayPartialFailureError
    under policy collect_all.

    :param reply_topic: the completion topic (short name or full path).
    :param correlation_ids: one id or a list (templated; e.g. the publish task's XCom).
    :param policy: "fail_fast" or "collect_all" (several ids).
    :param delete_subscriptions: delete the completion subscriptions when done (default).
    :param deferrable: wait in the triggerer.
    :param settle: deferrable only: seconds after the deferral before the trigger may fire
        (default `[workers] min_heartbeat_interval` + 3, for apache/airflow#72716; 0 = off).
    :param defer_after: deferrable only: seconds (or timedelta; templated) to wait on the worker
        before deferring; results in by then cost no deferral (default 0: defer at once).
    :param start_in_triggerer: start, wait and end the task in the triggerer (no worker process;
        see docs/airflow.md "Starting in the triggerer"); correlation_ids must be literal,
        templated, or a plain XComArg of a non-mapped task (`publish.output`); not with
        mode="reschedule" nor outlets. A mapped sensor runs as without it.
    """

    template_fields: Sequence[str] = (
        "reply_topic",
        "correlation_ids",
        "defer_after",
        "project_id",
        "wait_project",
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
        wait_project: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        timeout: timedelta | float = timedelta(hours=1),
        start_in_triggerer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        check_policy(policy)
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
        self.wait_project = wait_project
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.start_in_triggerer = start_in_triggerer
        if start_in_triggerer:
            self._start_in_triggerer()

    def _start_in_triggerer(self) -> None:
        """Make this task start in the triggerer (see native_start); RelayConfigError says why
        it cannot. A mapped sensor never gets here at parse time and runs on the worker path."""
        if self.reschedule:
            raise refusal(
                self, "with mode='reschedule': a task started in the triggerer never pokes"
            )
        native_start(
            self,
            kind=WAIT,
            inputs={f: getattr(self, f) for f in self.template_fields if f != "defer_after"},
            settings={
                "gcp_conn_id": self.gcp_conn_id,
                "recheck_interval": self.recheck_interval,
                "policy": self.policy,
                "delete_subscriptions": self.delete_subscriptions,
                "soft_fail": self.soft_fail,
                "never_fail": self.never_fail,
            },
            timeout=float(self.timeout),
        )

    @cached_property
    def hook(self) -> RelayHook:
        """The hook of this task's identity."""
        from relay.airflow.hooks import RelayHook  # the Google provider: not at DAG parse

        return RelayHook(
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            project_id=self.project_id,
            wait_project=self.wait_project,
        )

    def _trigger(self, deadline: float) -> RelayResultTrigger:
        wait = published_wait(
            self.hook, self.reply_topic, self.correlation_ids, deadline=deadline, policy=self.policy
        )
        return RelayResultTrigger(
            wait=wait,
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
        """One read of the subscription (non-deferrable mode)."""
        outcome = peek_blocking(self._trigger(time.time()))
        if outcome.status == ERROR:
            raise RelayResultLostError(outcome.message)
        if outcome.status != DONE:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self.finish_wait(context, outcome))

    def execute_complete(self, context: Any, event: dict[str, Any], **_: Any) -> Any:
        """Resume on the worker from the trigger's event."""
        return resume_wait(self, context, event)

    def finish_wait(self, context: Any, outcome: WaitOutcome) -> Any:
        """Take and ack the results, delete the subscription, return the data or raise (or skip:
        see sensor_skips)."""
        try:
            return finish(
                context,
                self.hook,
                outcome,
                policy=self.policy,
                timeout=float(self.timeout),
                single=isinstance(self.correlation_ids, str),
                delete=self.delete_subscriptions,
            )
        except Exception as exc:
            timed_out = outcome.status == TIMEOUT
            if sensor_skips(
                exc, timed_out=timed_out, soft_fail=self.soft_fail, never_fail=self.never_fail
            ):
                raise AirflowSkipException(f"{type(exc).__name__}: {exc}") from exc
            raise
