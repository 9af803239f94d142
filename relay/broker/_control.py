"""What every RPC passes on its way in, and the broker's run-time control (HTTP /stats, /control).

Every gRPC method handler is wrapped (`Control.gate`), keyed by its gRPC method name: the call is
counted, fails if a fault was injected for that method, with --require-auth is authenticated and
authorized (`_auth`; a StreamingPull on its first request), and, for an administrator operation
(`_admin.ADMIN_METHODS`), is charged against its project's quota and delayed by the admin
latency of the behaviour settings. A method added to a service later is gated the same way.
When nothing is injected, no admin latency is set and auth is off, a data-plane call costs a
counter increment and two attribute checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from relay.broker._access import identity_project
from relay.broker._admin import ADMIN_METHODS, AdminQuota, charged_project
from relay.broker._auth import CALLER, Auth
from relay.broker._behaviour import Behaviour
from relay.broker._core import Broker
from relay.broker._errors import BrokerError
from relay.broker._tokens import Principal

__all__ = ["Control", "ControlError"]

_MAX_ADVANCE_SECONDS = 10 * 366 * 24 * 3600.0


class ControlError(ValueError):
    """A /control request that cannot be applied (HTTP 400); nothing of it was applied."""


class _Counter:
    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0


class _Fault:
    __slots__ = ("code", "message", "remaining")

    def __init__(self, code: grpc.StatusCode, count: int, message: str) -> None:
        self.code = code
        self.remaining = count
        self.message = message


class Control:
    """Counters, injected faults and the admin quota of one broker, and what changes them."""

    def __init__(self, broker: Broker, quota: AdminQuota, auth: Auth | None = None) -> None:
        self.broker = broker
        self.quota = quota
        self.auth = auth
        self._calls: dict[str, _Counter] = {}
        self.admin_ops: dict[str, int] = {}
        self.admin_ops_refused: dict[str, int] = {}
        self.admin_ops_by_method: dict[str, int] = {}
        self.faults: dict[str, list[_Fault]] = {}

    # -- the gate --------------------------------------------------------------------------------

    def gate(self, methods: Mapping[str, Any]) -> dict[str, Any]:
        """The method handlers of one service (name -> handler), each wrapped by the gate."""
        gated: dict[str, Any] = {}
        for name, handler in methods.items():
            counter = self._calls.setdefault(name, _Counter())
            if handler.unary_unary is not None:
                gated[name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(name, counter, handler.unary_unary),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            elif handler.stream_stream is not None:
                gated[name] = grpc.stream_stream_rpc_method_handler(
                    self._stream(name, counter, handler.stream_stream),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            else:
                raise TypeError(f"{name}: only unary and bidirectional methods are gated")
        return gated

    def _unary(self, name: str, counter: _Counter, inner: Any) -> Any:
        admin = name in ADMIN_METHODS
        auth = self.auth
        rule = auth.rule(name) if auth is not None else None

        async def handle(request: Any, context: Any) -> Any:
            counter.calls += 1
            if self.faults:
                fault = self._take_fault(name)
                if fault is not None:
                    await context.abort(fault.code, fault.message)
            principal = None
            if auth is not None and rule is not None:
                try:
                    principal = auth.authenticate(context.invocation_metadata())
                    auth.authorize(rule, request, principal)
                except BrokerError as exc:
                    await context.abort(exc.code, exc.message)
                CALLER.set(principal)
            if admin:
                try:
                    await self._admit(name, request, context, principal)
                except BrokerError as exc:
                    await context.abort(exc.code, exc.message)
            return await inner(request, context)

        return handle

    def _stream(self, name: str, counter: _Counter, inner: Any) -> Callable[..., Any]:
        auth = self.auth
        rule = auth.rule(name) if auth is not None else None

        async def handle(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            counter.calls += 1
            if self.faults:
                fault = self._take_fault(name)
                if fault is not None:
                    await context.abort(fault.code, fault.message)
            if auth is not None and rule is not None:
                try:
                    principal = auth.authenticate(context.invocation_metadata())
                    first = await anext(aiter(requests), None)
                    if first is None:
                        return
                    auth.authorize(rule, first, principal)
                except BrokerError as exc:
                    await context.abort(exc.code, exc.message)
                CALLER.set(principal)
                requests = _prepended(first, requests)
            stream = inner(requests, context)
            try:
                async for response in stream:
                    yield response
            finally:
                await stream.aclose()  # its cleanup runs now, not when it is collected

        return handle

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self.faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.pop(0)
            if not queue:
                del self.faults[method]
        return fault

    async def _admit(
        self, name: str, request: Any, context: Any, caller: Principal | None = None
    ) -> None:
        """Charge an administrator operation to its project (with --require-auth: the caller's),
        then wait the admin latency."""
        caller_project = identity_project(caller.email) if caller is not None else None
        project = charged_project(request, context.invocation_metadata(), caller_project)
        broker = self.broker
        try:
            self.quota.charge(project, broker.clock.now())
        except BrokerError:
            self.admin_ops_refused[project] = self.admin_ops_refused.get(project, 0) + 1
            raise
        self.admin_ops[project] = self.admin_ops.get(project, 0) + 1
        self.admin_ops_by_method[name] = self.admin_ops_by_method.get(name, 0) + 1
        latency = broker.behaviour.admin_latency
        if latency is not None and latency[1] > 0:
            await asyncio.sleep(broker.dice.rng("admin-latency", project).uniform(*latency))

    # -- HTTP ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """GET /stats: counts since start (read-only)."""
        return {
            "rpcs": {name: c.calls for name, c in sorted(self._calls.items()) if c.calls},
            "admin_ops": dict(sorted(self.admin_ops.items())),
            "admin_ops_refused": dict(sorted(self.admin_ops_refused.items())),
            "admin_ops_by_method": dict(sorted(self.admin_ops_by_method.items())),
            **({"auth": self.auth.stats()} if self.auth is not None else {}),
            **self._settings(),
        }

    def _settings(self) -> dict[str, Any]:
        return {
            "admin_ops_per_minute": self.quota.per_minute,
            "clock_offset_seconds": self.broker.clock.offset,
            "behaviour": self.broker.behaviour.to_json(),
            "faults": [
                {"method": method, "code": f.code.name, "count": f.remaining}
                for method, queue in sorted(self.faults.items())
                for f in queue
            ],
        }

    def apply(self, body: Any) -> dict[str, Any]:
        """POST /control: check everything in `body`, then apply it; returns the settings.

        Keys: any `Behaviour` field (its new value), "profile" ("off" or "google": start from
        that profile, keeping the seed unless "seed" is given), "fail" (one fault or a list:
        {"method", "code", "count"=1, "message"?}), "advance_seconds" (move the clock forward)
        and "admin_ops_per_minute".
        """
        if not isinstance(body, dict):
            raise ControlError("the body must be a JSON object")
        changes = dict(body)
        broker = self.broker
        behaviour = broker.behaviour
        profile = changes.pop("profile", None)
        if profile is not None:
            if profile not in ("off", "google"):
                raise ControlError("profile must be 'off' or 'google'")
            behaviour = Behaviour(seed=behaviour.seed)
            if profile == "google":
                behaviour = Behaviour.google(behaviour.seed)
        faults = _parse_faults(changes.pop("fail", []))
        for method, _ in faults:
            if method not in self._calls:
                raise ControlError(f"fail: {method!r} is not a gRPC method the broker serves")
        advance = changes.pop("advance_seconds", 0)
        if not _is_number(advance) or not 0 <= advance <= _MAX_ADVANCE_SECONDS:
            raise ControlError("advance_seconds must be a number of seconds >= 0")
        per_minute = changes.pop("admin_ops_per_minute", self.quota.per_minute)
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
            raise ControlError("admin_ops_per_minute must be a positive integer")
        try:
            behaviour = behaviour.updated(changes)
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        broker.set_behaviour(behaviour)
        for method, fault in faults:
            self.faults.setdefault(method, []).append(fault)
        self.quota.per_minute = per_minute
        if advance:
            broker.advance(float(advance))
        return self._settings()


async def _prepended(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`first` (already read to authorize the stream), then the rest of the requests."""
    yield first
    async for request in rest:
        yield request


def _parse_faults(value: Any) -> list[tuple[str, _Fault]]:
    items = value if isinstance(value, list) else [value]
    faults = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            raise ControlError('fail takes {"method": ..., "code": ..., "count": ...} or a list')
        unknown = set(item) - {"method", "code", "count", "message"}
        if unknown:
            raise ControlError(f"unknown fail keys: {sorted(unknown)}")
        code_name = item.get("code")
        code = grpc.StatusCode.__members__.get(str(code_name))
        if code is None or code is grpc.StatusCode.OK:
            raise ControlError(f"fail: {code_name!r} is not a gRPC error status name")
        count = item.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ControlError("fail: count must be a positive integer")
        message = item.get("message", f"Injected by the relay broker's /control: {code.name}.")
        if not isinstance(message, str):
            raise ControlError("fail: message must be a string")
        faults.append((item["method"], _Fault(code, count, message)))
    return faults


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
