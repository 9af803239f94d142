"""RelayHook instances for triggers: built once per process in a worker thread (reading the
connection blocks, and importing the Google provider, google-auth and the Pub/Sub client takes a
second or more), with credentials loaded there too, so the triggerer's event loop never blocks."""

from __future__ import annotations

import asyncio
import importlib
import weakref
from typing import TYPE_CHECKING

from relay.airflow._identity import ImpersonationChain, client_key

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook

_HOOKS: dict[tuple[object, ...], RelayHook] = {}
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _build(gcp_conn_id: str, impersonation_chain: ImpersonationChain) -> RelayHook:
    from relay.airflow.hooks import RelayHook

    hook = RelayHook(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain)
    hook.get_credentials()  # warm: ADC discovery may touch the network
    importlib.import_module("google.pubsub_v1")  # warm: async_subscriber() runs on the loop
    return hook


async def trigger_hook(gcp_conn_id: str, impersonation_chain: ImpersonationChain) -> RelayHook:
    """The process-wide hook for this identity, created off the event loop on first use."""
    key = client_key(gcp_conn_id, impersonation_chain)
    hook = _HOOKS.get(key)
    if hook is not None:
        return hook
    lock = _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        hook = _HOOKS.get(key)
        if hook is None:
            hook = await asyncio.to_thread(_build, gcp_conn_id, impersonation_chain)
            _HOOKS[key] = hook
    return hook
