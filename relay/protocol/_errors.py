"""Typed errors of the protocol: every bad input becomes one of these, naming the wrong field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.protocol._event import Event


class ProtocolError(ValueError):
    """Base of every protocol error. `field` names the attribute, key or JSON path that is wrong.

    `event` is the envelope decoded as far as possible (attributes parsed, data possibly left as raw
    bytes) when the error happened while decoding a message, so a function can still answer it.
    """

    def __init__(
        self, message: str, *, field: str | None = None, event: Event | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.event = event

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments break default exception pickling; rebuild from the state instead.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ProtocolError], message: str, state: dict[str, Any]) -> ProtocolError:
    error = cls.__new__(cls)
    ValueError.__init__(error, message)
    error.__dict__.update(state)
    return error


class LimitError(ProtocolError):
    """A Pub/Sub or CloudEvents limit would be exceeded; `limit` and `actual` give the numbers."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        limit: int | None = None,
        actual: int | None = None,
        event: Event | None = None,
    ) -> None:
        super().__init__(message, field=field, event=event)
        self.limit = limit
        self.actual = actual


class MissingAttributeError(ProtocolError):
    """A required CloudEvents attribute is absent."""


class InvalidAttributeError(ProtocolError):
    """An attribute (or the data given to an Event) does not have the form the protocol defines."""


class DecodeError(ProtocolError):
    """The message cannot be decoded: bad JSON, wrong or unsupported content type, bad envelope."""


class SchemaValidationError(ProtocolError):
    """Event data does not match the JSON Schema registered for its type.

    `field` and `path` are the JSON path of the failing value (e.g. `$.uri`), `reason` says why;
    `errors` lists every (path, reason) found.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        reason: str,
        errors: tuple[tuple[str, str], ...] = (),
        event: Event | None = None,
    ) -> None:
        super().__init__(message, field=path, event=event)
        self.path = path
        self.reason = reason
        self.errors = errors or ((path, reason),)


class DataRefError(ProtocolError):
    """The blob of a `dataref` cannot be stored or read (missing, unreadable): maybe later."""


class DataRefRefusedError(DataRefError):
    """The `dataref` is not allowed and nothing was read (a scheme other than file:// and gs://,
    outside every configured blob store, a link or a non-regular file, content that does not
    match its sha256 name): retrying cannot help."""
