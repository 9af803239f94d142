"""How long a task subscription lives: the defaults and the check of what Google accepts (kept
out of relay.airflow.hooks so that DAG files importing the operators do not load the Google
provider's hook: a task process would pay over a second for it)."""

from __future__ import annotations

from datetime import timedelta

from relay.airflow.exceptions import RelayConfigError
from relay.protocol import LimitError, check_subscription_lifetime

__all__ = ["DEFAULT_SUBSCRIPTION_RETENTION", "DEFAULT_SUBSCRIPTION_TTL", "check_lifetime"]

# An idle task subscription expires after this (Google's minimum); results stay this long.
DEFAULT_SUBSCRIPTION_TTL = timedelta(days=1)
DEFAULT_SUBSCRIPTION_RETENTION = timedelta(days=1)


def check_lifetime(ttl: timedelta | None, retention: timedelta) -> None:
    """Refuse a task subscription expiration TTL (None: never) or message retention that Google
    would refuse, as RelayConfigError."""
    if not isinstance(retention, timedelta) or not isinstance(ttl, timedelta | None):
        raise RelayConfigError(
            f"subscription_ttl and subscription_retention must be timedeltas (ttl may be None: "
            f"never expire), got {ttl!r} and {retention!r}"
        )
    try:
        check_subscription_lifetime(
            None if ttl is None else ttl.total_seconds(), retention.total_seconds()
        )
    except LimitError as exc:
        raise RelayConfigError(exc.message) from None
