"""Topology as code: `relay.yaml` declares topics, functions, subscriptions and identities.

`load_topology()` reads and validates it into frozen dataclasses; `relay provision` creates it in a
Pub/Sub project and `relay up` runs it locally. See docs/topology.md.
"""

from relay.topology._load import (
    DEFAULT_FILE,
    TopologyError,
    TopologyIssue,
    load_topology,
    parse_duration,
    parse_topology,
)
from relay.topology._model import (
    TIMEOUT_MARGIN_SECONDS,
    Delivery,
    Function,
    Identity,
    Ingress,
    RetryPolicy,
    Subscription,
    Topology,
)

__all__ = [
    "DEFAULT_FILE",
    "TIMEOUT_MARGIN_SECONDS",
    "Delivery",
    "Function",
    "Identity",
    "Ingress",
    "RetryPolicy",
    "Subscription",
    "Topology",
    "TopologyError",
    "TopologyIssue",
    "load_topology",
    "parse_duration",
    "parse_topology",
]
