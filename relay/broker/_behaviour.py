"""What Google is allowed to do and the broker does only on demand (`--profile google`).

Each field switches one behaviour on; all are off by default, so the broker is predictable unless
asked. `Behaviour.google(seed)` turns all of them on at rates meant for tests: frequent enough to
show up in a short test, rare enough that a correct client still makes progress. Every random
choice comes from a `random.Random` per behaviour and per subscription (`Dice`), seeded from
`seed`: what one subscription sees does not depend on traffic on the others.

The model (docs/broker.md, "What Google is allowed to do", says why each is allowed):

- short pulls: a Pull that finds n > 0 messages ready returns, with probability
  `short_pull_rate` (a "short" pull: `return_immediately` or an RPC deadline under
  `short_pull_deadline` seconds) or `blocking_short_pull_rate` (any other pull), k messages with
  k uniform in 0..n-1 (k = 0: an empty response at once).
- redelivery of acked messages: each ack is, with probability `redeliver_acked_rate`, followed by
  a second delivery of the message `redeliver_delay` (uniform) seconds later, with a new ack id.
  Not for subscriptions with exactly-once delivery, nor for messages with an ordering key on a
  subscription with ordering.
- out of order: on a subscription without message ordering, each published message is, with
  probability `reorder_rate`, held back for up to `reorder_max_delay` seconds (uniform), so
  later ones overtake it.
- stream closing: a StreamingPull stream fails at once with UNAVAILABLE with probability
  `stream_unavailable_rate`, and otherwise is closed by the server with UNAVAILABLE after
  `stream_lifetime` (uniform) seconds.
- admin latency: every administrator operation takes `admin_latency` (uniform) seconds more.
- push backoff: `push_backoff` paces push subscriptions as Google does (slow start, and a pause
  of the whole subscription after a failed push, see `_pusher`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Behaviour", "Dice"]

_Range = tuple[float, float]
_RATES = (
    "short_pull_rate",
    "blocking_short_pull_rate",
    "redeliver_acked_rate",
    "reorder_rate",
    "stream_unavailable_rate",
)
_RANGES = ("redeliver_delay", "stream_lifetime", "admin_latency")


@dataclass(frozen=True)
class Behaviour:
    """The allowed-by-Google behaviours to show; see the module docstring for the exact model."""

    seed: int = 0
    short_pull_rate: float = 0.0
    blocking_short_pull_rate: float = 0.0
    short_pull_deadline: float = 10.0
    redeliver_acked_rate: float = 0.0
    redeliver_delay: _Range = (1.0, 10.0)
    reorder_rate: float = 0.0
    reorder_max_delay: float = 0.5
    stream_lifetime: _Range | None = None
    stream_unavailable_rate: float = 0.0
    admin_latency: _Range | None = None
    push_backoff: bool = False

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        for name in ("short_pull_deadline", "reorder_max_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        for name in _RANGES:
            value = getattr(self, name)
            if value is None and name != "redeliver_delay":
                continue
            low, high = value
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ValueError(f"{name} must be seconds (low, high) with 0 <= low <= high")

    @classmethod
    def google(cls, seed: int = 0) -> Behaviour:
        """Every behaviour on, at rates for tests (docs/broker.md lists them)."""
        return cls(
            seed=seed,
            short_pull_rate=0.5,
            blocking_short_pull_rate=0.1,
            redeliver_acked_rate=0.05,
            reorder_rate=0.1,
            stream_lifetime=(5.0, 30.0),
            stream_unavailable_rate=0.05,
            admin_latency=(0.05, 0.5),
            push_backoff=True,
        )

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        """A copy with `changes` (field name -> JSON value) applied; ValueError names a bad one."""
        known = {f.name for f in fields(self)}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown behaviour setting {name!r}")
            values[name] = _parse(name, value)
        return dataclasses.replace(self, **values)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (ranges as [low, high], null when off)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }


def _parse(name: str, value: Any) -> Any:
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("seed must be an integer")
        return value
    if name == "push_backoff":
        if not isinstance(value, bool):
            raise ValueError("push_backoff must be true or false")
        return value
    if name in _RANGES:
        if value is None and name != "redeliver_delay":
            return None
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(_is_number(v) for v in value)
        ):
            raise ValueError(f"{name} must be [low, high] in seconds")
        return (float(value[0]), float(value[1]))
    if not _is_number(value):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Dice:
    """One `random.Random` per (behaviour, key), seeded from `seed` and the key only."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rngs: dict[str, dict[str, random.Random]] = {}

    def rng(self, kind: str, key: str) -> random.Random:
        """The generator of behaviour `kind` for `key` (a subscription name, say)."""
        of_key = self._rngs.get(key)
        if of_key is None:
            of_key = self._rngs[key] = {}
        rng = of_key.get(kind)
        if rng is None:
            rng = of_key[kind] = random.Random(f"{self.seed}/{kind}/{key}")
        return rng

    def forget(self, key: str) -> None:
        """Drop the generators of `key` (a deleted subscription)."""
        self._rngs.pop(key, None)
