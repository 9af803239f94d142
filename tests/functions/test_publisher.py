"""Result publishing: one lazily created client per instance; no 2xx before the publish."""

from __future__ import annotations

from typing import Any

import pytest

from relay.functions import PubSubPublisher
from relay.functions._publisher import default_publisher
from relay.protocol import new_request, to_binary

from .conftest import Completion, log_lines, post_push


def test_one_client_per_instance_created_lazily(broker: Any, completion: Completion) -> None:
    publisher = PubSubPublisher()
    assert publisher._client is None
    events = [new_request("t", n, source="/tests", reply_to=completion.topic) for n in (1, 2)]
    assert publisher.publish(completion.topic, to_binary(events[0]), timeout=10)
    client = publisher.client
    publisher.publish(completion.topic, to_binary(events[1]), timeout=10)
    assert publisher.client is client
    assert default_publisher() is default_publisher()
    assert sorted(event.data for event in completion.pull(2)) == [1, 2]


def test_failed_publish_answers_5xx(
    echo_client: Any, project: str, capsys: pytest.CaptureFixture[str]
) -> None:
    request = new_request(
        "dev.relay.example.echo",
        {"x": 1},
        source="/tests",
        reply_to=f"projects/{project}/topics/no-such-topic-here",
    )
    response = post_push(echo_client, request)
    assert response.status_code == 500  # the result is not in Pub/Sub: let Pub/Sub redeliver
    (line,) = log_lines(capsys.readouterr().out)
    assert line["outcome"] == "retry"
    assert line["error"]["message"].startswith("publish:")
