"""Pub/Sub subscription filters: parse Google's filter language into a predicate on attributes.

The grammar follows https://cloud.google.com/pubsub/docs/subscription-message-filter:

    filter    := "" | expr
    expr      := unary ( ("AND" unary)* | ("OR" unary)* )   # AND and OR never mix without ( )
    unary     := ("NOT" | "-") unary | "(" expr ")" | predicate
    predicate := "attributes" ":" key                        # the key is present
               | "attributes" "." key ("=" | "!=") string    # value (in)equality
               | "hasPrefix" "(" "attributes" "." key "," string ")"
    key       := [A-Za-z0-9_-]+ | string                     # quoted keys allow any characters
    string    := '"' chars-with-escapes '"'

String escapes: \\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\? \\`, \\xHH, \\uHHHH,
\\UHHHHHHHH and octal \\ooo.
Keywords (AND, OR, NOT, attributes, hasPrefix) are case-sensitive. Filters longer than 256
UTF-8 bytes are rejected. `attributes.k != "v"` is the negation of `attributes.k = "v"`, so it
also matches messages without the key `k`. The empty filter matches every message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["MAX_FILTER_BYTES", "Equals", "FilterError", "HasPrefix", "Predicate", "compile_filter"]

MAX_FILTER_BYTES = 256

Predicate = Callable[[Mapping[str, str]], bool]

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_WORD_CHARS = _KEY_CHARS
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
    "`": "`",
}
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


class FilterError(ValueError):
    """A subscription filter that is not valid; the message says what is wrong and where.

    `str(error)` is the detail without a prefix, e.g. "cannot mix AND and OR without
    parentheses; ... at position 20 (near 'OR attributes:c')", ready for the broker to send as
    INVALID_ARGUMENT "Invalid filter: <detail>". `reason` is the detail without the position;
    `position` is the 0-based character offset of the problem in `text`.
    """

    def __init__(self, message: str, *, text: str, position: int) -> None:
        self.text = text
        self.position = position
        self.reason = message
        where = f"at position {position + 1}{_near(text, position)}"
        super().__init__(f"{message} {where}")


def _near(text: str, position: int) -> str:
    if position >= len(text):
        return " (end of filter)"
    return f" (near {text[position : position + 20]!r})"


def compile_filter(text: str) -> Predicate:
    """Parse a Pub/Sub filter and return a predicate over a message's attributes.

    Raises FilterError (a ValueError) naming the problem and its position when `text` is not a
    valid filter. The empty (or all-whitespace) filter matches everything.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_FILTER_BYTES:
        raise FilterError(
            f"filter is {size} bytes, the limit is {MAX_FILTER_BYTES} bytes",
            text=text,
            position=0,
        )
    parser = _Parser(text)
    parser.skip_space()
    if parser.at_end():
        return _match_all
    predicate = parser.expr()
    parser.skip_space()
    if not parser.at_end():
        raise parser.error("expected AND, OR, ')' or the end of the filter")
    return predicate


def _match_all(attributes: Mapping[str, str]) -> bool:
    return True


@dataclass(frozen=True)
class Equals:
    """`attributes.KEY = "VALUE"`: a filter a topic can look its subscriptions up by."""

    key: str
    value: str

    def __call__(self, attributes: Mapping[str, str]) -> bool:
        return attributes.get(self.key) == self.value


@dataclass(frozen=True)
class HasPrefix:
    """`hasPrefix(attributes.KEY, "PREFIX")`: a filter a topic can look its subscriptions up by
    (relay's completion subscriptions have one each)."""

    key: str
    prefix: str

    def __call__(self, attributes: Mapping[str, str]) -> bool:
        value = attributes.get(self.key)
        return value is not None and value.startswith(self.prefix)


class _Parser:
    """Recursive-descent parser over the filter text; builds closures as it goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # ---- scanning helpers -------------------------------------------------------------------
    def error(self, message: str, position: int | None = None) -> FilterError:
        where = self.pos if position is None else position
        return FilterError(message, text=self.text, position=where)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def peek_word(self) -> str:
        end = self.pos
        while end < len(self.text) and self.text[end] in _WORD_CHARS:
            end += 1
        return self.text[self.pos : end]

    def take_word(self, word: str) -> bool:
        if self.peek_word() == word:
            self.pos += len(word)
            return True
        return False

    def expect_char(self, char: str, what: str) -> None:
        self.skip_space()
        if self.peek() != char:
            raise self.error(f"expected {what}")
        self.pos += 1

    # ---- grammar ----------------------------------------------------------------------------
    def expr(self) -> Predicate:
        first = self.unary()
        operands = [first]
        operator: str | None = None
        while True:
            self.skip_space()
            start = self.pos
            word = self.peek_word()
            if word not in ("AND", "OR"):
                break
            if operator is not None and word != operator:
                raise self.error(
                    f"cannot mix AND and OR without parentheses; group with ( ) before {word}",
                    start,
                )
            operator = word
            self.pos += len(word)
            operands.append(self.unary())
        if operator is None:
            return first
        parts = tuple(operands)
        if operator == "AND":
            return lambda attributes: all(part(attributes) for part in parts)
        return lambda attributes: any(part(attributes) for part in parts)

    def unary(self) -> Predicate:
        self.skip_space()
        if self.at_end():
            raise self.error("expected a condition")
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
            return self._negate(start)
        word = self.peek_word()
        if word == "NOT":
            self.pos += 3
            if self.peek() not in ("", "(", "-") and not self.peek().isspace():
                raise self.error("expected a space or '(' after NOT")
            return self._negate(start)
        if self.peek() == "(":
            self.pos += 1
            self.depth += 1
            if self.depth > 64:
                raise self.error("parentheses nested too deeply", start)
            inner = self.expr()
            self.expect_char(")", "')' to close the '(' at position " + str(start + 1))
            self.depth -= 1
            return inner
        if word == "attributes":
            return self.attribute_predicate()
        if word == "hasPrefix":
            return self.has_prefix()
        if word in ("AND", "OR"):
            raise self.error(f"expected a condition before {word}")
        if word.lower() in ("and", "or", "not", "attributes", "hasprefix"):
            raise self.error(f"unknown word {word!r} (keywords are case-sensitive)")
        if word:
            raise self.error(
                f"unknown word {word!r}; expected attributes.KEY, attributes:KEY, "
                "hasPrefix(...), NOT, '-' or '('"
            )
        raise self.error(f"unexpected character {self.peek()!r}; expected a condition")

    def _negate(self, start: int) -> Predicate:
        self.depth += 1
        if self.depth > 64:
            raise self.error("negations nested too deeply", start)
        inner = self.unary()
        self.depth -= 1
        return lambda attributes: not inner(attributes)

    def attribute_predicate(self) -> Predicate:
        self.pos += len("attributes")
        char = self.peek()
        if char == ":":
            self.pos += 1
            key = self.key()
            return lambda attributes: key in attributes
        if char != ".":
            raise self.error("expected '.' or ':' after attributes")
        self.pos += 1
        key = self.key()
        self.skip_space()
        if self.text.startswith("!=", self.pos):
            self.pos += 2
            negate = True
        elif self.peek() == "=":
            self.pos += 1
            negate = False
        else:
            raise self.error(f"expected '=' or '!=' after attributes.{key}")
        self.skip_space()
        value = self.string(f"a quoted string value for attributes.{key}")
        if negate:
            return lambda attributes: attributes.get(key) != value
        return Equals(key, value)

    def has_prefix(self) -> Predicate:
        self.pos += len("hasPrefix")
        self.expect_char("(", "'(' after hasPrefix")
        self.skip_space()
        if not self.take_word("attributes") or self.peek() != ".":
            raise self.error("hasPrefix needs attributes.KEY as its first argument")
        self.pos += 1
        key = self.key()
        self.expect_char(",", "',' between the arguments of hasPrefix")
        self.skip_space()
        prefix = self.string("a quoted string prefix as the second argument of hasPrefix")
        self.expect_char(")", "')' to close hasPrefix(")
        return HasPrefix(key, prefix)

    def key(self) -> str:
        if self.peek() == '"':
            key = self.string("an attribute key")
            if not key:
                raise self.error("attribute key is empty")
            return key
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _KEY_CHARS:
            self.pos += 1
        if start == self.pos:
            raise self.error(
                "expected an attribute key (letters, digits, '_' and '-', or a quoted string)"
            )
        return self.text[start : self.pos]

    def string(self, what: str) -> str:
        if self.peek() != '"':
            raise self.error(f"expected {what}")
        start = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error("string is not closed with '\"'", start)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char != "\\":
                out.append(char)
                self.pos += 1
                continue
            out.append(self.escape())

    def escape(self) -> str:
        start = self.pos
        self.pos += 1
        if self.at_end():
            raise self.error("string ends inside an escape sequence", start)
        char = self.text[self.pos]
        if char in _SIMPLE_ESCAPES:
            self.pos += 1
            return _SIMPLE_ESCAPES[char]
        if char in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[char]
            digits = self.text[self.pos + 1 : self.pos + 1 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise self.error(f"\\{char} needs exactly {width} hex digits", start)
            self.pos += 1 + width
            return self._code_point(int(digits, 16), start)
        if char in _OCTAL:
            digits = self.text[self.pos : self.pos + 3]
            if len(digits) != 3 or not set(digits) <= _OCTAL:
                raise self.error("octal escape needs exactly 3 digits (\\ooo)", start)
            self.pos += 3
            return self._code_point(int(digits, 8), start)
        raise self.error(f"unknown escape sequence \\{char}", start)

    def _code_point(self, value: int, start: int) -> str:
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise self.error(f"escape is not a valid Unicode code point (U+{value:X})", start)
        return chr(value)
