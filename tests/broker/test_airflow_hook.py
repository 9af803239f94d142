"""Airflow's own PubSubHook (apache-airflow-providers-google) against the broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def hook(broker: Any, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELAY_BROKER",
        json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": project},
            }
        ),
    )
    from airflow.providers.google.cloud.hooks.pubsub import PubSubHook

    return PubSubHook(gcp_conn_id="relay_broker")


def test_pubsub_hook_roundtrip(hook: Any, project: str, unique: Callable[[str], str]) -> None:
    topic, sub = unique("hook-topic"), unique("hook-sub")
    hook.create_topic(project_id=project, topic=topic, fail_if_exists=True)
    hook.create_subscription(
        project_id=project,
        topic=topic,
        subscription=sub,
        filter_='attributes.kind = "job"',
        retry_policy={"minimum_backoff": {"seconds": 1}},
        enable_message_ordering=True,
    )
    hook.publish(
        project_id=project,
        topic=topic,
        messages=[
            {"data": b"run", "attributes": {"kind": "job"}},
            {"data": b"skip", "attributes": {"kind": "other"}},
        ],
    )
    messages = hook.pull(project_id=project, subscription=sub, max_messages=10)
    assert [m.message.data for m in messages] == [b"run"]
    hook.acknowledge(project_id=project, subscription=sub, messages=messages)
    assert (
        hook.pull(project_id=project, subscription=sub, max_messages=10, return_immediately=True)
        == []
    )
    hook.delete_subscription(project_id=project, subscription=sub)
    hook.delete_topic(project_id=project, topic=topic)
