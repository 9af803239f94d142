"""Errors the broker returns to clients: a gRPC status code and a Google-like message."""

from __future__ import annotations

import grpc

__all__ = [
    "BrokerError",
    "already_exists",
    "failed_precondition",
    "invalid",
    "not_found",
    "plain",
    "shown",
]


class BrokerError(Exception):
    """A refused request; the gRPC layer turns it into a status with `code` and `message`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        trailing_metadata: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # e.g. ("grpc-status-details-bin", <google.rpc.Status>): an ErrorInfo the clients decode
        self.trailing_metadata = trailing_metadata


def not_found(kind: str, name: str) -> BrokerError:
    """NOT_FOUND for a topic or subscription, worded like Google's."""
    return BrokerError(
        grpc.StatusCode.NOT_FOUND,
        f"Resource not found (resource={plain(_short(name))}): {kind} {plain(name)}",
    )


def already_exists(kind: str, name: str) -> BrokerError:
    """ALREADY_EXISTS for a topic or subscription, worded like Google's."""
    return BrokerError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"Resource already exists in the project (resource={plain(_short(name))}): {kind} "
        f"{plain(name)}",
    )


def invalid(message: str) -> BrokerError:
    """INVALID_ARGUMENT with `message`."""
    return BrokerError(grpc.StatusCode.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> BrokerError:
    """FAILED_PRECONDITION with `message`."""
    return BrokerError(grpc.StatusCode.FAILED_PRECONDITION, message)


def shown(value: str, limit: int = 200) -> str:
    """`value` quoted for an error message (control characters escaped), cut short: a status
    message must stay small and readable whatever a client sent."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def plain(value: str, limit: int = 300) -> str:
    """`value` as it is, the way Google's messages show names, unless it holds control
    characters or is longer than `limit`: then `shown(value, limit)`."""
    return value if value.isprintable() and len(value) <= limit else shown(value, limit)


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]
