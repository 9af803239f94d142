"""Fixtures of the broker tests: real google-cloud-pubsub clients on the session broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def publisher(broker: Any) -> Iterator[Any]:
    """A PublisherClient on the session broker."""
    client = broker.publisher()
    yield client
    client.stop()


@pytest.fixture(scope="session")
def subscriber(broker: Any) -> Iterator[Any]:
    """A SubscriberClient on the session broker."""
    client = broker.subscriber()
    yield client
    client.close()


@pytest.fixture
def topic(publisher: Any, project: str, unique: Callable[[str], str]) -> str:
    """A new topic; its full path."""
    name = publisher.topic_path(project, unique("topic"))
    publisher.create_topic(name=name)
    return name


@pytest.fixture
def make_sub(
    subscriber: Any, topic: str, project: str, unique: Callable[[str], str]
) -> Callable[..., str]:
    """make_sub(**subscription_fields) -> the path of a new subscription on `topic`."""

    def make(**fields: Any) -> str:
        name = subscriber.subscription_path(project, unique("sub"))
        fields.setdefault("topic", topic)
        subscriber.create_subscription(request={"name": name, **fields})
        return name

    return make


@pytest.fixture(scope="session")
def schema_client(broker: Any) -> Any:
    """A SchemaServiceClient on the session broker."""
    return broker.schema_client()


SCHEMA_FIXTURES = Path(__file__).parent / "schemas"
AVSC = (SCHEMA_FIXTURES / "us-states.avsc").read_text()


@pytest.fixture
def make_schema(
    schema_client: Any, project: str, unique: Callable[[str], str]
) -> Callable[..., Any]:
    """make_schema(type_=AVRO, definition=AVSC) -> the created Schema."""
    from google.pubsub_v1.types import Schema

    def make(type_: Any = Schema.Type.AVRO, definition: str = AVSC) -> Any:
        return schema_client.create_schema(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=type_, definition=definition),
                "schema_id": unique("schema"),
            }
        )

    return make
