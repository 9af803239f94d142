"""The one error of `relay provision`, and how an API failure reads in it."""

from __future__ import annotations


class ProvisionError(RuntimeError):
    """Provisioning cannot proceed (a conflict the topology cannot resolve, or an API failure)."""


def api_failure(exc: Exception) -> str:
    """`STATUS: message` of a failed Pub/Sub call (e.g. `PERMISSION_DENIED: User not authorized
    ...`), on one line: what the service said, with gRPC's name for its status."""
    code = getattr(exc, "grpc_status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    text = f"{code.name}: {message}" if code is not None else str(message)
    return " ".join(text.split())
