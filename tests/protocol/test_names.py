"""The one home of names: resource paths, correlation ids, their groups and the group filter."""

from __future__ import annotations

import pytest

from relay.broker._filter import compile_filter
from relay.protocol import (
    InvalidAttributeError,
    check_correlation_id,
    check_project_id,
    check_topic_pattern,
    correlation_group,
    group_filter,
    grouped_id,
    subscription_path,
    topic_matches,
    topic_path,
)


def test_paths_from_short_names_or_full_paths() -> None:
    assert topic_path("relay-test", "results") == "projects/relay-test/topics/results"
    assert topic_path("ignored-here", "projects/p-1234/topics/t~1") == "projects/p-1234/topics/t~1"
    assert subscription_path("relay-test", "s.1") == "projects/relay-test/subscriptions/s.1"
    for bad in ("go", "goog-x", "GOOG-x", "1abc", "a b c", "a/b/c"):
        with pytest.raises(InvalidAttributeError, match="not a valid Pub/Sub name"):
            topic_path("relay-test", bad)
    with pytest.raises(InvalidAttributeError, match="projects/<project>/topics/<name>"):
        topic_path("relay-test", "projects/relay-test/subscriptions/s")
    with pytest.raises(InvalidAttributeError, match="not a valid project id"):
        topic_path("P", "results")
    assert check_project_id("example.com:my-project") == "example.com:my-project"


def test_correlation_ids_have_one_form() -> None:
    for good in ("a", "t0.1", "orders.2026-12-01:7", "550e8400-e29b-41d4-a716-446655440000"):
        assert check_correlation_id(good) == good
    for bad in ("", ".x", 'a"b', "a b", "é", "x" * 201, None, 7):
        with pytest.raises(InvalidAttributeError, match="1-200 characters"):
            check_correlation_id(bad)


def test_a_group_is_what_comes_before_the_first_dot() -> None:
    assert correlation_group("orders.7") == "orders"
    assert correlation_group("t1.a.b") == "t1"
    assert grouped_id("t1", 3) == "t1.3"
    for bad in ("nogroup", "g.", "550e8400-e29b-41d4-a716-446655440000"):
        with pytest.raises(InvalidAttributeError, match="has no group"):
            correlation_group(bad)
    with pytest.raises(InvalidAttributeError, match="group"):
        grouped_id("a.b", 1)


def test_the_group_filter_lets_in_exactly_the_group_and_fits_googles_limit() -> None:
    longest = "g" * 100
    assert len(group_filter(longest).encode()) <= 256
    matches = compile_filter(group_filter("t1"))
    assert matches({"ce-correlationid": "t1.0"})
    assert matches({"ce-correlationid": "t1.x.y"})
    assert not matches({"ce-correlationid": "t10.0"})  # a group is never a prefix of another's ids
    assert not matches({"ce-correlationid": "t1"})
    assert not matches({})


@pytest.mark.parametrize(
    ("topic", "pattern", "matches"),
    [
        ("projects/relay-test/topics/results", "projects/relay-test/topics/results", True),
        ("projects/relay-test/topics/results", "projects/relay-test/topics/*", True),
        ("projects/relay-test/topics/other", "projects/relay-test/topics/results", False),
        ("projects/relay-testing/topics/results", "projects/relay-test/topics/*", False),
        ("projects/relay-test/topics/x", "projects/relay-test/topics/*", False),  # not a topic
    ],
)
def test_topic_matches(topic: str, pattern: str, matches: bool) -> None:
    assert topic_matches(topic, check_topic_pattern(pattern)) is matches


@pytest.mark.parametrize(
    "pattern",
    [
        "projects/*/topics/*",
        "projects/relay-test/topics/res*",
        "results",
        "projects/Bad/topics/*",
        "",
    ],
)
def test_bad_topic_patterns_are_refused_naming_the_rule(pattern: str) -> None:
    with pytest.raises(InvalidAttributeError, match="projects/<project>/topics/\\*"):
        check_topic_pattern(pattern)
