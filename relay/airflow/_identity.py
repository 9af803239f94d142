"""Who a hook acts as, in a form triggers can use without importing the Google provider.

relay.airflow.triggers must import fast: Airflow's triggerer imports a trigger class on its event
loop, so everything heavy (the provider's GoogleBaseHook, google-auth, gRPC) loads later, in a
worker thread (relay.airflow._trigger_hooks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

ImpersonationChain = str | Sequence[str] | None


def chain_key(impersonation_chain: ImpersonationChain) -> tuple[str, ...]:
    """A hashable form of an impersonation chain."""
    if impersonation_chain is None:
        return ()
    if isinstance(impersonation_chain, str):
        return tuple(s.strip() for s in impersonation_chain.split(",") if s.strip())
    return tuple(impersonation_chain)


def client_key(gcp_conn_id: str, impersonation_chain: ImpersonationChain) -> tuple[Any, ...]:
    """What makes two hooks share clients: identity, emulator and process."""
    return (
        gcp_conn_id,
        chain_key(impersonation_chain),
        os.environ.get("PUBSUB_EMULATOR_HOST", ""),
        os.getpid(),
    )
