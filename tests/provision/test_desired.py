"""Provisioning asks for Eventarc-style pushes only from the local broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.provision import desired_subscriptions
from relay.topology import load_topology

_TOPOLOGY = Path(__file__).resolve().parents[2] / "relay.yaml"


def _push_attributes() -> set[tuple[tuple[str, str], ...]]:
    settings = desired_subscriptions(load_topology(_TOPOLOGY))
    return {s.push.attributes for s in settings if s.push is not None}


def test_google_cloud_gets_only_googles_own_push_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    assert _push_attributes() == {()}


def test_local_broker_gets_eventarc_style_pushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    assert _push_attributes() == {(("x-relay-push-format", "cloudevent"),)}
