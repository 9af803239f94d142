"""The Google connection an Airflow deployment needs to reach a topology's stack.

One home for its extra: `relay up` prints it, `make demo` and the e2e tests set it. Keys are the
Google provider's (`project`, `is_anonymous`) and relay's hook's (`api_endpoint`, `wait_project`,
relay/airflow/hooks.py).
"""

from __future__ import annotations

import json
from typing import Any

from relay.topology import Identity, Topology

__all__ = ["airflow_connection", "airflow_connection_extra", "waiting_identity"]

_CONN_TYPE = "google_cloud_platform"


def waiting_identity(topology: Topology) -> Identity | None:
    """The identity that waits on results (Airflow's): the first with `waits_on`."""
    return next((i for i in topology.identities.values() if i.waits_on), None)


def airflow_connection_extra(topology: Topology, api_endpoint: str | None = None) -> dict[str, Any]:
    """The connection's extra: anonymous through PUBSUB_EMULATOR_HOST, or with `api_endpoint`
    (host:port of `relay broker --require-auth`) TLS and Application Default Credentials; and the
    waiting identity's `wait_project`, where its task subscriptions are created."""
    extra: dict[str, Any] = {"project": topology.project}
    if api_endpoint is None:
        extra = {"is_anonymous": True, **extra}
    else:
        extra["api_endpoint"] = api_endpoint
    waiter = waiting_identity(topology)
    if waiter is not None and waiter.wait_project is not None:
        extra["wait_project"] = waiter.wait_project
    return extra


def airflow_connection(topology: Topology, api_endpoint: str | None = None) -> str:
    """The connection as AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT takes it (JSON)."""
    return json.dumps(
        {"conn_type": _CONN_TYPE, "extra": airflow_connection_extra(topology, api_endpoint)}
    )
