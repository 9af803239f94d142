"""Google's label rules (https://cloud.google.com/pubsub/docs/labels), as INVALID_ARGUMENT.

"Each resource can have multiple labels, up to a maximum of 64. Keys have a minimum length of 1
character and a maximum length of 63 characters ... Values can be empty, and have a maximum length
of 63 characters. Keys and values can contain only lowercase letters, numeric characters,
underscores, and dashes. All characters must use UTF-8 encoding, and international characters are
allowed. Keys must start with a lowercase letter or international character."
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.broker._errors import invalid, shown

__all__ = ["MAX_LABELS", "check_labels"]

MAX_LABELS = 64
_MAX_CHARS = 63


def _letter(char: str) -> bool:
    """A lowercase letter, or an international one (any letter that is not upper or title case)."""
    return char.isalpha() and not char.isupper() and not char.istitle()


def _allowed(char: str) -> bool:
    return _letter(char) or char.isdigit() or char in "_-"


def check_labels(labels: Mapping[str, str]) -> None:
    """Raise INVALID_ARGUMENT naming the first label that breaks Google's rules."""
    if len(labels) > MAX_LABELS:
        raise invalid(f"Invalid labels: {len(labels)} labels; at most {MAX_LABELS} are allowed.")
    for key, value in labels.items():
        if not 1 <= len(key) <= _MAX_CHARS or not _letter(key[0]):
            raise invalid(
                f"Invalid label key {shown(key)}: keys must be 1-{_MAX_CHARS} characters and "
                "start with a lowercase letter."
            )
        for text, what in ((key, "key"), (value, "value")):
            if len(text) > _MAX_CHARS or not all(_allowed(c) for c in text):
                raise invalid(
                    f"Invalid label {what} {shown(text)} (label {shown(key)}): at most "
                    f"{_MAX_CHARS} characters of lowercase letters, digits, '_' and '-'."
                )
