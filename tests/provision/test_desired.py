"""Provisioning asks for the same push format from the local broker and from Google Cloud."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.provision import desired_subscriptions
from relay.topology import load_topology

_TOPOLOGY = Path(__file__).resolve().parents[2] / "relay.yaml"


@pytest.mark.parametrize("emulator", [None, "127.0.0.1:1"])
def test_pushes_use_googles_wrapper_everywhere(
    monkeypatch: pytest.MonkeyPatch, emulator: str | None
) -> None:
    """Google's JSON wrapper carries deliveryAttempt; no broker-only push attribute is asked for."""
    if emulator is None:
        monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    settings = desired_subscriptions(load_topology(_TOPOLOGY))
    pushes = [s.push for s in settings if s.push is not None]
    assert pushes
    assert {push.attributes for push in pushes} == {()}
