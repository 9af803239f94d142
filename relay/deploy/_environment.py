"""What a function's environment must hold, from the topology: the one place `relay up` and
`relay deploy` both read, so a local run and a deployment cannot drift."""

from __future__ import annotations

from relay.functions import MAX_DELIVERY_ATTEMPTS_ENV, REPLY_TOPICS_ENV
from relay.protocol import topic_path
from relay.topology import Function, Topology


def function_environment(topology: Topology, function: Function) -> dict[str, str]:
    """The variables `function` runs with wherever it runs: where it may publish results (the
    completion topic only), its subscription's last delivery attempt, then the function's own
    `environment` from the topology (which wins)."""
    env = {REPLY_TOPICS_ENV: topic_path(topology.project, topology.completion_topic)}
    if function.dead_letter_topic is not None:
        env[MAX_DELIVERY_ATTEMPTS_ENV] = str(function.max_delivery_attempts)
    env.update(function.environment)
    return env
