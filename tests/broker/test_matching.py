"""TopicSubscriptions: looking a publish's subscriptions up by their filters gives exactly what
evaluating every filter gives, through attaches and detaches."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.broker._filter import Equals, HasPrefix, compile_filter
from relay.broker._matching import TopicSubscriptions

_VALUES = st.sampled_from(["", "a", "a.", "a.1", "a.12", "ab.1", "b", "b.2", "ä.1"])
_KEYS = st.sampled_from(["ce-correlationid", "k"])
_FILTERS = st.one_of(
    st.just(""),
    st.builds(lambda k, v: f'attributes.{k} = "{v}"', _KEYS, _VALUES),
    st.builds(lambda k, v: f'hasPrefix(attributes.{k}, "{v}")', _KEYS, _VALUES),
    st.builds(lambda k, v: f'attributes.{k} != "{v}"', _KEYS, _VALUES),
    st.builds(lambda k: f"attributes:{k}", _KEYS),
    st.builds(
        lambda k, v, w: f'hasPrefix(attributes.{k}, "{v}") OR attributes.k = "{w}"',
        _KEYS,
        _VALUES,
        _VALUES,
    ),
)
_ATTRIBUTES = st.dictionaries(_KEYS, _VALUES, max_size=2)


def _sub(name: str, text: str) -> Any:
    predicate = compile_filter(text) if text.strip() else None
    return SimpleNamespace(name=name, config=SimpleNamespace(predicate=predicate))


def test_simple_filters_compile_to_the_indexable_predicates() -> None:
    assert compile_filter('hasPrefix(attributes.ce-correlationid, "g1.")') == HasPrefix(
        "ce-correlationid", "g1."
    )
    assert compile_filter(' attributes.k = "v" ') == Equals("k", "v")
    assert compile_filter('(attributes.k = "v")') == Equals("k", "v")
    assert not isinstance(compile_filter('NOT attributes.k = "v"'), Equals)


@settings(max_examples=300, deadline=None)
@given(
    filters=st.lists(_FILTERS, min_size=1, max_size=12),
    detached=st.sets(st.integers(0, 11)),
    messages=st.lists(_ATTRIBUTES, min_size=1, max_size=6),
)
def test_the_index_matches_what_evaluating_every_filter_matches(
    filters: list[str], detached: set[int], messages: list[dict[str, str]]
) -> None:
    subs = TopicSubscriptions()
    attached = {}
    for i, text in enumerate(filters):
        sub = _sub(f"s{i}", text)
        subs.attach(sub)
        attached[sub.name] = sub
    for i in detached:
        subs.detach(f"s{i}")
        attached.pop(f"s{i}", None)
    assert sorted(subs) == sorted(attached)
    assert len(subs) == len(attached)
    expected = {}
    for name, sub in attached.items():
        predicate = sub.config.predicate
        if predicate is None:
            continue
        chosen = [i for i, attrs in enumerate(messages) if predicate(attrs)]
        if chosen:
            expected[name] = chosen
    got = {
        sub.name: chosen
        for sub, chosen in subs.filtered_matches(list(range(len(messages))), messages)
    }
    assert got == expected  # the same messages, in publish order
    assert sorted(subs.unfiltered) == sorted(
        name for name, sub in attached.items() if sub.config.predicate is None
    )
