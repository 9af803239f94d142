"""Google's label rules (https://cloud.google.com/pubsub/docs/labels), as INVALID_ARGUMENT.

"Each resource can have multiple labels, up to a maximum of 64. Keys have a minimum length of 1
character and a maximum length of 63 characters ... Values can be empty, and have a maximum length
of 63 characters. Keys and values can contain only lowercase letters, numeric characters,
underscores, and dashes. All characters must use UTF-8 encoding, and international characters are
allowed. Keys must start with a lowercase letter or international character."
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.broker._errors import invalid

__all__ = ["MAX_LABELS", "check_labels"]

MAX_LABELS = 64
_MAX_CHARS = 63


def _letter(char: str) -> bool:
    """A lowercase letter, or an international one (any letter that is not uppercase)."""
    return char.isalpha() and not char.isupper()


def _allowed(char: str) -> bool:
    return _letter(char) or char.isdigit() or char in "_-"


def check_labels(labels: Mapping[str, str]) -> None:
    """Raise INVALID_ARGUMENT naming the first label that breaks Google's rules."""
    if len(labels) > MAX_LABELS:
        raise invalid(f"Too many labels: {len(labels)}; a resource can have at most {MAX_LABELS}.")
    for key, value in labels.items():
        if (
            not key
            or len(key) > _MAX_CHARS
            or not _letter(key[0])
            or not all(_allowed(c) for c in key)
        ):
            raise invalid(
                f"Invalid label key {key[:80]!r}: keys are 1-{_MAX_CHARS} lowercase letters, "
                "digits, '_' or '-', starting with a lowercase letter."
            )
        if len(value) > _MAX_CHARS or not all(_allowed(c) for c in value):
            raise invalid(
                f"Invalid value of label {key!r}: {value[:80]!r}; values are at most "
                f"{_MAX_CHARS} lowercase letters, digits, '_' or '-'."
            )
