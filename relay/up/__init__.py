"""`relay up`: the topology on this machine (broker, provisioning, functions) and a live view.

`stack_up(topology)` is the reusable part (a context manager used by the CLI, the demo and the
tests); `CompletionMonitor` watches the completion topic. See docs/topology.md.
"""

from relay.up._auth import identity_environment, operator_credentials
from relay.up._connection import airflow_connection, airflow_connection_extra
from relay.up._monitor import CompletionMonitor, Observed
from relay.up._process import StackError
from relay.up._stack import (
    DEFAULT_DATA_DIR,
    BrokerEndpoint,
    ServedFunction,
    Stack,
    function_server,
    push_allow_list_options,
    require_auth_options,
    stack_up,
)

__all__ = [
    "DEFAULT_DATA_DIR",
    "BrokerEndpoint",
    "CompletionMonitor",
    "Observed",
    "ServedFunction",
    "Stack",
    "StackError",
    "airflow_connection",
    "airflow_connection_extra",
    "function_server",
    "identity_environment",
    "operator_credentials",
    "push_allow_list_options",
    "require_auth_options",
    "stack_up",
]
