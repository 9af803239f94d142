"""Run RelayRequestTrigger the way Airflow 3.3's trigger runner runs a task started in the
triggerer: kwargs from the serialized DAG, TriggerRunner.create_runtime_ti, its template context,
render_template_fields, run.

The trigger runner's comms to its supervisor are the one stand-in (Comms, the `comms` fixture of
conftest.py): XComs kept in a dict, and every message checked against the real
TriggerRunnerSupervisor's decoder (a message type it does not accept would hang a real triggerer).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.airflow.triggers import RelayRequestTrigger


class Comms:
    """The trigger runner's comms: XComs in a dict; only messages the real supervisor decodes."""

    def __init__(self) -> None:
        self.xcoms: dict[tuple[str, str, str, int], Any] = {}

    async def asend(self, msg: Any) -> Any:
        from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
        from airflow.sdk.execution_time.comms import XComResult

        TriggerRunnerSupervisor.decoder.validate_python(msg.model_dump())
        key = (msg.run_id, msg.task_id, msg.key, msg.map_index)
        name = type(msg).__name__
        if name == "SetXCom":
            self.xcoms[key] = json.loads(json.dumps(msg.value))  # as the DB stores it
            return None
        if name == "GetXCom":
            return XComResult(key=msg.key, value=self.xcoms.get(key))
        raise AssertionError(f"unexpected message {name}")

    def send(self, msg: Any) -> Any:
        return asyncio.run(self.asend(msg))

    def of(self, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.xcoms.get((run_id, task_id, key, -1))


class WorkerTi:
    """A task instance on a worker whose XComs go where the trigger runner reads them."""

    def __init__(self, comms: Comms, dag_id: str, run_id: str, task_id: str) -> None:
        self.comms, self.dag_id, self.run_id, self.task_id = comms, dag_id, run_id, task_id
        self.map_index = -1

    def xcom_push(self, key: str, value: Any) -> None:
        self.comms.xcoms[(self.run_id, self.task_id, key, -1)] = json.loads(json.dumps(value))


def make_dag(dag_id: str, **kwargs: Any) -> Any:
    from airflow.sdk import DAG

    return DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1), **kwargs)


def serialized_task(dag: Any, task_id: str) -> Any:
    from airflow.serialization.serialized_objects import DagSerialization

    data = json.loads(json.dumps(DagSerialization.to_dict(dag)))
    return data, DagSerialization.from_dict(data).get_task(task_id)


def inflate(
    dag: Any, task_id: str, run_id: str, try_number: int = 1, deferred_ago: float = 0.0
) -> RelayRequestTrigger:
    """What the scheduler and the trigger runner do for a start_from_trigger task (deferred by
    the scheduler `deferred_ago` seconds ago)."""
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    data, task = serialized_task(dag, task_id)
    assert task.start_from_trigger is True
    # TaskInstance.defer_task's Trigger row, as TriggerRunner.create_triggers reads it
    row = Trigger.encrypt_kwargs(task.start_trigger_args.trigger_kwargs)
    kwargs = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(row).items()}
    assert task.start_trigger_args.trigger_cls == "relay.airflow.triggers.RelayRequestTrigger"
    now = datetime.now(UTC)
    ti = TaskInstanceDTO(
        id=uuid.uuid4(),
        task_id=task_id,
        dag_id=dag.dag_id,
        run_id=run_id,
        try_number=try_number,
        dag_version_id=uuid.uuid4(),
        pool_slots=1,
        priority_weight=1,
    )
    dag_run = {
        "dag_id": dag.dag_id,
        "run_id": run_id,
        "logical_date": now,
        "data_interval_start": now,
        "data_interval_end": now,
        "run_after": now,
        "start_date": now,
        "end_date": None,
        "run_type": "manual",
        "state": "running",
        "consumed_asset_events": [],
        "partition_key": None,
        "conf": {},
    }
    runtime_ti = TriggerRunner.create_runtime_ti(ti, data, dag_run)
    context = runtime_ti.get_template_context()
    trigger = RelayRequestTrigger(**kwargs)
    trigger.task_instance = runtime_ti
    # TaskInstance.defer_task's trigger_timeout, handed to the trigger by create_triggers
    trigger.timeout_after = now - timedelta(seconds=deferred_ago) + task.start_trigger_args.timeout
    trigger.render_template_fields(context=context)
    return trigger


async def first_event(trigger: RelayRequestTrigger, limit: float = 60.0) -> Any:
    return await asyncio.wait_for(anext(trigger.run()), limit)


def new_run_id() -> str:
    return f"manual__{uuid.uuid4().hex[:10]}"
