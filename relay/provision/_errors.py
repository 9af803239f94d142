"""The one error of `relay provision`."""

from __future__ import annotations


class ProvisionError(RuntimeError):
    """Provisioning cannot proceed (a conflict the topology cannot resolve, or an API failure)."""
