"""Cloud Logging fields derived from W3C trace context."""

from __future__ import annotations

import pytest

from relay.functions._logging import trace_fields

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


def test_project_from_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "prod-project")
    fields = trace_fields(TRACEPARENT, "projects/other/topics/results")
    assert fields == {
        "logging.googleapis.com/trace": f"projects/prod-project/traces/{TRACE_ID}",
        "logging.googleapis.com/spanId": "00f067aa0ba902b7",
        "logging.googleapis.com/trace_sampled": False,
    }


def test_project_from_replyto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GCP_PROJECT", raising=False)
    fields = trace_fields(TRACEPARENT, "projects/relay-test/topics/results")
    assert fields["logging.googleapis.com/trace"].startswith("projects/relay-test/traces/")


@pytest.mark.parametrize(
    "value", [None, "", "garbage", "00-xyz-abc-01", "00-" + "a" * 32 + "-b-01"]
)
def test_malformed_traceparent_adds_nothing(value: str | None) -> None:
    assert trace_fields(value, "projects/relay-test/topics/results") == {}
