"""defer_after: what it accepts, and the clear error for what it does not."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from relay.airflow._defer_after import defer_after_seconds
from relay.airflow.exceptions import RelayConfigError
from relay.airflow.operators import RelayCallOperator, RelayFanOutOperator
from relay.airflow.sensors import RelayResultSensor


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (2.5, 2.5), ("30", 30.0), (" 1.5 ", 1.5), (timedelta(minutes=1), 60.0)],
)
def test_seconds_numbers_timedeltas_and_rendered_templates(value: Any, seconds: float) -> None:
    assert defer_after_seconds(value) == seconds


@pytest.mark.parametrize("value", [-1, "soon", "", None, math.nan, math.inf, timedelta(-1)])
def test_anything_else_is_a_clear_error(value: Any) -> None:
    with pytest.raises(RelayConfigError, match="defer_after must be") as raised:
        defer_after_seconds(value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize("value", [-5, math.nan])
def test_the_operators_and_the_sensor_refuse_it_when_built(value: float) -> None:
    common = {"topic": "t", "reply_topic": "r", "event_type": "dev.relay.example.echo"}
    for build in (
        lambda: RelayCallOperator(task_id="call", defer_after=value, **common),
        lambda: RelayFanOutOperator(task_id="fan", items=[1], defer_after=value, **common),
        lambda: RelayResultSensor(
            task_id="sense", reply_topic="r", correlation_ids="c", defer_after=value
        ),
    ):
        with pytest.raises(RelayConfigError, match="defer_after"):
            build()


def test_a_template_is_checked_once_rendered() -> None:
    operator = RelayCallOperator(
        task_id="call",
        topic="t",
        reply_topic="r",
        event_type="dev.relay.example.echo",
        defer_after="{{ params.defer_after }}",
    )
    assert "defer_after" in operator.template_fields
    assert operator.defer_after == "{{ params.defer_after }}"
