"""The subscriptions attached to a topic, arranged so that a publish finds the ones it feeds
without evaluating every filter: a topic with 10,000 filtered completion subscriptions (one per
waiting task) would otherwise run 10,000 filters per result, 10^8 for 10,000 results.

Filters that are one `hasPrefix(attributes.KEY, "PREFIX")` or `attributes.KEY = "VALUE"` are
looked up by the message's value of KEY; every other filter is evaluated as before. What matches
is exactly what evaluating each filter would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from relay.broker._filter import Equals, HasPrefix

if TYPE_CHECKING:
    from relay.broker._state import SubState

_M = TypeVar("_M")


class TopicSubscriptions:
    """A topic's attached subscriptions by name, indexed by their filters."""

    def __init__(self) -> None:
        self._by_name: dict[str, SubState] = {}
        self.unfiltered: dict[str, SubState] = {}
        self._evaluated: dict[str, SubState] = {}
        self._equal: dict[str, dict[str, dict[str, SubState]]] = {}  # key -> value -> subs
        # key -> prefix length -> prefix -> subs
        self._prefix: dict[str, dict[int, dict[str, dict[str, SubState]]]] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def values(self) -> list[SubState]:
        """Every attached subscription."""
        return list(self._by_name.values())

    def attach(self, sub: SubState) -> None:
        """Attach `sub` (replacing one of the same name)."""
        self.detach(sub.name)
        self._by_name[sub.name] = sub
        predicate = sub.config.predicate
        if predicate is None:
            self.unfiltered[sub.name] = sub
        elif isinstance(predicate, Equals):
            values = self._equal.setdefault(predicate.key, {})
            values.setdefault(predicate.value, {})[sub.name] = sub
        elif isinstance(predicate, HasPrefix):
            lengths = self._prefix.setdefault(predicate.key, {})
            prefixes = lengths.setdefault(len(predicate.prefix), {})
            prefixes.setdefault(predicate.prefix, {})[sub.name] = sub
        else:
            self._evaluated[sub.name] = sub

    def detach(self, name: str) -> None:
        """Detach the subscription `name`, if attached."""
        sub = self._by_name.pop(name, None)
        if sub is None:
            return
        predicate = sub.config.predicate
        if predicate is None:
            del self.unfiltered[name]
        elif isinstance(predicate, Equals):
            values = self._equal[predicate.key]
            _drop(values, predicate.value, name)
            if not values:
                del self._equal[predicate.key]
        elif isinstance(predicate, HasPrefix):
            lengths = self._prefix[predicate.key]
            prefixes = lengths[len(predicate.prefix)]
            _drop(prefixes, predicate.prefix, name)
            if not prefixes:
                del lengths[len(predicate.prefix)]
            if not lengths:
                del self._prefix[predicate.key]
        else:
            del self._evaluated[name]

    def filtered_matches(
        self, messages: Sequence[_M], attributes: Sequence[Mapping[str, str]]
    ) -> list[tuple[SubState, list[_M]]]:
        """Each filtered subscription that takes at least one of `messages` (whose attributes
        are `attributes`), with the ones it takes, in publish order."""
        chosen: dict[str, tuple[SubState, list[_M]]] = {}

        def take(sub: SubState, message: _M) -> None:
            entry = chosen.get(sub.name)
            if entry is None:
                chosen[sub.name] = (sub, [message])
            else:
                entry[1].append(message)

        for message, attrs in zip(messages, attributes, strict=True):
            for key, values in self._equal.items():
                value = attrs.get(key)
                if value is not None:
                    for sub in values.get(value, {}).values():
                        take(sub, message)
            for key, lengths in self._prefix.items():
                value = attrs.get(key)
                if value is None:
                    continue
                for length, prefixes in lengths.items():
                    if length <= len(value):
                        for sub in prefixes.get(value[:length], {}).values():
                            take(sub, message)
            for sub in self._evaluated.values():
                if sub.config.predicate is not None and sub.config.predicate(attrs):
                    take(sub, message)
        return list(chosen.values())


def _drop(groups: dict[str, dict[str, SubState]], literal: str, name: str) -> None:
    members = groups[literal]
    del members[name]
    if not members:
        del groups[literal]
