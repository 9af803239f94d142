"""Subscription filters: generated filter trees agree with a reference evaluation; bad ones fail."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.broker._filter import MAX_FILTER_BYTES, FilterError, compile_filter

# ---- a filter AST, its reference semantics and a renderer ----------------------------------


@dataclass(frozen=True)
class Has:
    key: str


@dataclass(frozen=True)
class Eq:
    key: str
    value: str
    negate: bool


@dataclass(frozen=True)
class Prefix:
    key: str
    prefix: str


@dataclass(frozen=True)
class Not:
    inner: Node
    dash: bool


@dataclass(frozen=True)
class Bool:
    op: str  # "AND" | "OR"
    parts: tuple[Node, ...]


Node = Has | Eq | Prefix | Not | Bool


def evaluate(node: Node, attrs: Mapping[str, str]) -> bool:
    """Reference semantics, written from Google's documentation independently of the parser."""
    if isinstance(node, Has):
        return node.key in attrs
    if isinstance(node, Eq):
        equal = node.key in attrs and attrs[node.key] == node.value
        return not equal if node.negate else equal
    if isinstance(node, Prefix):
        return node.key in attrs and attrs[node.key].startswith(node.prefix)
    if isinstance(node, Not):
        return not evaluate(node.inner, attrs)
    results = [evaluate(part, attrs) for part in node.parts]
    return all(results) if node.op == "AND" else any(results)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b", "\f": "\\f"}


def quote(text: str, style: int) -> str:
    """Render a string literal; `style` picks among equivalent escape spellings."""
    out = []
    for index, char in enumerate(text):
        code = ord(char)
        variant = (style + index) % 4
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char in _NAMED and variant != 3:
            out.append(_NAMED[char])
        elif code < 0x20 or code == 0x7F or (variant == 3 and code < 0x100):
            out.append(f"\\x{code:02x}" if variant % 2 else f"\\{code:03o}")
        elif variant == 2 and code > 0x7F:
            out.append(f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_key(key: str, style: int) -> str:
    if _BARE_KEY.match(key) and style % 3:
        return key
    return quote(key, style)


def render(node: Node, style: int = 0) -> str:
    if isinstance(node, Has):
        return f"attributes:{render_key(node.key, style)}"
    if isinstance(node, Eq):
        op = "!=" if node.negate else "="
        space = " " if style % 2 else ""
        return (
            f"attributes.{render_key(node.key, style)}{space}{op}{space}{quote(node.value, style)}"
        )
    if isinstance(node, Prefix):
        return f"hasPrefix(attributes.{render_key(node.key, style)}, {quote(node.prefix, style)})"
    if isinstance(node, Not):
        inner = render(node.inner, style + 1)
        if isinstance(node.inner, Bool):
            inner = f"({inner})"
        return f"-{inner}" if node.dash else f"NOT {inner}"
    rendered = []
    for part in node.parts:
        text = render(part, style + 1)
        # Parenthesise nested AND/OR always (mixing needs it; same-op nesting is still valid).
        rendered.append(f"({text})" if isinstance(part, Bool) else text)
    return f" {node.op} ".join(rendered)


# ---- strategies ------------------------------------------------------------------------------

KEYS = ["a", "b", "ce-type", "x_y", "k.dot", "with space", 'q"uote', "AND", "é"]
VALUE_ALPHABET = st.sampled_from(
    ["v", "w", "vw", '"', "\\", "\n", "\t", "é", "€", "😀", "\x01", " "]
)
values = st.lists(VALUE_ALPHABET, max_size=4).map("".join)
keys = st.sampled_from(KEYS)

leaves: st.SearchStrategy[Node] = st.one_of(
    st.builds(Has, keys),
    st.builds(Eq, keys, values, st.booleans()),
    st.builds(Prefix, keys, values),
)


def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Not, children, st.booleans()),
        st.builds(
            Bool,
            st.sampled_from(["AND", "OR"]),
            st.lists(children, min_size=2, max_size=3).map(tuple),
        ),
    )


trees = st.recursive(leaves, extend, max_leaves=6)
attribute_maps = st.dictionaries(keys, values, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees, style=st.integers(0, 11), samples=st.lists(attribute_maps, min_size=1, max_size=6)
)
def test_generated_filters_match_reference(
    tree: Node, style: int, samples: list[dict[str, str]]
) -> None:
    text = render(tree, style)
    if len(text.encode()) > MAX_FILTER_BYTES:
        with pytest.raises(FilterError, match="limit is 256 bytes"):
            compile_filter(text)
        return
    predicate = compile_filter(text)
    for attrs in samples:
        assert predicate(attrs) == evaluate(tree, attrs), (text, attrs)


@given(tree=trees)
def test_extra_whitespace_and_parentheses_change_nothing(tree: Node) -> None:
    text = render(tree)
    padded = f"  ( {text} )\n"
    if len(padded.encode()) > MAX_FILTER_BYTES:
        return
    attrs = {"a": "v", "ce-type": "vw", "é": ""}
    assert compile_filter(padded)(attrs) == evaluate(tree, attrs)


# ---- hand-written cases ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "attrs", "expected"),
    [
        ("", {}, True),
        ("   ", {"a": "1"}, True),
        ('attributes.domain = "com"', {"domain": "com"}, True),
        ('attributes.domain = "com"', {"domain": "org"}, False),
        ('attributes.domain != "com"', {}, True),
        ('attributes.domain != "com"', {"domain": "com"}, False),
        ("attributes:domain", {"domain": ""}, True),
        ("NOT attributes:domain", {"domain": ""}, False),
        ("-attributes:domain", {}, True),
        ('hasPrefix(attributes.domain, "co")', {"domain": "com"}, True),
        ('hasPrefix(attributes.domain, "co")', {}, False),
        ('hasPrefix(attributes.domain, "")', {"domain": "x"}, True),
        ('attributes."iana.org/language_tag" = "en"', {"iana.org/language_tag": "en"}, True),
        ('attributes:"in-stock"', {"in-stock": "1"}, True),
        ("attributes:ce-type", {"ce-type": "x"}, True),
        ('attributes.domain = "com" AND -attributes:"in-stock"', {"domain": "com"}, True),
        ('attributes.a="1" OR attributes.b="2" OR attributes.c="3"', {"c": "3"}, True),
        ('(attributes.a="1" OR attributes.b="2") AND attributes:c', {"b": "2"}, False),
        ('attributes.a = "\\x41\\101\\u0041\\U00000041"', {"a": "AAAA"}, True),
        ('attributes.a = "tab\\there \\"q\\" \\\\"', {"a": 'tab\there "q" \\'}, True),
        ("NOT(attributes:a)", {}, True),
        ("NOT NOT attributes:a", {"a": "x"}, True),
        ('attributes.AND = "OR"', {"AND": "OR"}, True),
    ],
)
def test_examples(text: str, attrs: dict[str, str], expected: bool) -> None:
    assert compile_filter(text)(attrs) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('attributes.a = "1" AND attributes.b = "2" OR attributes:c', "cannot mix AND and OR"),
        ("attributes:a OR attributes:b AND attributes:c", "cannot mix AND and OR"),
        ("attributes.a = 1", "expected a quoted string value"),
        ('attributes.a == "1"', "expected a quoted string value"),
        ("attributes.a", "expected '=' or '!='"),
        ("attributes", "expected '.' or ':'"),
        ("attributes:", "expected an attribute key"),
        ('attributes."" = "x"', "attribute key is empty"),
        ('attributes.a = "unclosed', "string is not closed"),
        ('attributes.a = "bad \\q"', "unknown escape sequence \\q"),
        ('attributes.a = "\\x4"', "needs exactly 2 hex digits"),
        ('attributes.a = "\\uD800"', "not a valid Unicode code point"),
        ('attributes.a = "\\12"', "octal escape needs exactly 3 digits"),
        ('attributes.a = "x\\', "string ends inside an escape"),
        ("(attributes:a", "expected ')'"),
        ("attributes:a)", "expected AND, OR, ')' or the end"),
        ("attributes:a AND", "expected a condition"),
        ("AND attributes:a", "expected a condition before AND"),
        ("attributes:a and attributes:b", "expected AND, OR"),
        ("not attributes:a", "keywords are case-sensitive"),
        ('data = "x"', "unknown word 'data'"),
        ('hasPrefix(attributes.a "x")', "expected ','"),
        ("hasPrefix(attributes.a, x)", "quoted string prefix"),
        ('hasPrefix(attributes.a, "x"', "')' to close hasPrefix"),
        ('hasPrefix(a, "x")', "hasPrefix needs attributes.KEY"),
        ('hasprefix(attributes.a, "x")', "case-sensitive"),
        ("NOT", "expected a condition"),
        ("-", "expected a condition"),
        ("()", "expected a condition"),
        ("attributes:a attributes:b", "expected AND, OR"),
        ("=", "unexpected character '='"),
        ("(" * 70 + "attributes:a" + ")" * 70, "nested too deeply"),
        ('attributes.a = "' + "x" * 250 + '"', "limit is 256 bytes"),
    ],
)
def test_malformed_filters_raise(text: str, fragment: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(text)
    message = str(caught.value)
    assert fragment in message
    assert not message.lower().startswith("invalid filter")  # the broker adds that prefix
    assert caught.value.reason in message
    assert isinstance(caught.value, ValueError)
    assert "position" in message


def test_error_points_at_the_problem() -> None:
    text = 'attributes.a = "1" AND attributes.b = "2" OR attributes:c'
    with pytest.raises(FilterError) as caught:
        compile_filter(text)
    assert caught.value.position == text.index("OR")
    assert "near 'OR attributes:c'" in str(caught.value)


def test_limit_counts_utf8_bytes() -> None:
    prefix = 'attributes.a = "'
    fits = prefix + "é" * ((MAX_FILTER_BYTES - len(prefix) - 1) // 2) + '"'
    assert len(fits.encode()) <= MAX_FILTER_BYTES
    compile_filter(fits)
    with pytest.raises(FilterError, match="bytes"):
        compile_filter(prefix + "é" * 130 + '"')
