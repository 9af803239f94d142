"""Topics with schema_settings: checked settings, validated Publish, googclient_* attributes,
deleted schemas and revisions, and the schema state across kill -9.

The calls are those of googleapis/python-pubsub samples/snippets/schema.py
(create_topic_with_schema, create_topic_with_schema_revisions, update_topic_schema,
publish_avro_records, publish_proto_messages, subscribe_with_avro_schema(_with_revisions),
subscribe_with_proto_schema), made with the stock clients.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from google.api_core import exceptions
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.pubsub_v1 import PublisherClient as GapicPublisherClient
from google.pubsub_v1.types import Encoding, PubsubMessage, Schema

FIXTURES = Path(__file__).parent / "schemas"
AVSC = (FIXTURES / "us-states.avsc").read_text()
PROTO = (FIXTURES / "us-states.proto").read_text()
AVRO = Schema.Type.AVRO
ALASKA = {"name": "Alaska", "post_abbr": "AK"}
WITH_CAPITAL = json.dumps(
    {
        **json.loads(AVSC),
        "fields": [*json.loads(AVSC)["fields"], {"name": "capital", "type": "string"}],
    }
)


def avro_binary(definition: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(definition)), record)
    return out.getvalue()


def avro_read(definition: str, data: bytes) -> Any:
    return fastavro.schemaless_reader(
        io.BytesIO(data), fastavro.parse_schema(json.loads(definition))
    )


def state_proto_class() -> Any:
    """The generated-code equivalent of us-states.proto's StateProto."""
    file = descriptor_pb2.FileDescriptorProto(name="us_states.proto", package="relay.tests")
    message = file.message_type.add(name="StateProto")
    for number, name in enumerate(["name", "post_abbr"], start=1):
        message.field.add(name=name, number=number, type=9, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("relay.tests.StateProto"))



@pytest.fixture
def make_topic(publisher: Any, project: str, unique: Callable[[str], str]) -> Callable[..., str]:
    """make_topic(schema, encoding, **revisions) -> a new topic validated against `schema`."""

    def make(schema: str, encoding: Any = Encoding.BINARY, **revisions: str) -> str:
        name = publisher.topic_path(project, unique("topic"))
        publisher.create_topic(
            request={
                "name": name,
                "schema_settings": {"schema": schema, "encoding": encoding, **revisions},
            }
        )
        return name

    return make


def pull_all(subscriber: Any, subscription: str, count: int) -> list[Any]:
    messages: list[Any] = []
    for _ in range(50):
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 100})
        messages.extend(r.message for r in response.received_messages)
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )
        if len(messages) >= count:
            break
    return messages


def commit(schema_client: Any, name: str, definition: str) -> Any:
    return schema_client.commit_schema(
        request={"name": name, "schema": Schema(type_=AVRO, definition=definition)}
    )


# -- settings ---------------------------------------------------------------------------------


def test_create_topic_with_schema(
    publisher: Any, make_schema: Callable, project: str, unique: Callable[[str], str]
) -> None:
    schema = make_schema()
    name = publisher.topic_path(project, unique("topic"))
    created = publisher.create_topic(
        request={
            "name": name,
            "schema_settings": {"schema": schema.name, "encoding": Encoding.BINARY},
        }
    )
    assert created.schema_settings.schema == schema.name
    assert created.schema_settings.encoding == Encoding.BINARY
    assert publisher.get_topic(topic=name).schema_settings == created.schema_settings


def test_topic_schema_must_exist(
    publisher: Any, project: str, unique: Callable[[str], str]
) -> None:
    with pytest.raises(exceptions.NotFound):
        publisher.create_topic(
            request={
                "name": publisher.topic_path(project, unique("topic")),
                "schema_settings": {
                    "schema": f"projects/{project}/schemas/{unique('none')}",
                    "encoding": Encoding.JSON,
                },
            }
        )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"encoding": Encoding.ENCODING_UNSPECIFIED}, "JSON or BINARY"),
        ({"first_revision_id": "0badc0de"}, "first_revision_id"),
        ({"last_revision_id": "0badc0de"}, "last_revision_id"),
        ({"schema": "_deleted-schema_"}, "must name a schema"),
        ({"schema": "projects/x/schemas/s@abc"}, "schemas"),
    ],
)
def test_invalid_topic_schema_settings(
    publisher: Any,
    make_schema: Callable,
    project: str,
    unique: Callable[[str], str],
    settings: dict[str, Any],
    problem: str,
) -> None:
    schema = make_schema()
    name = publisher.topic_path(project, unique("topic"))
    with pytest.raises(exceptions.InvalidArgument, match=problem):
        publisher.create_topic(
            request={
                "name": name,
                "schema_settings": {"schema": schema.name, "encoding": Encoding.JSON, **settings},
            }
        )
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=name)  # nothing was created


def test_first_revision_must_not_follow_the_last(
    schema_client: Any, make_schema: Callable, make_topic: Callable
) -> None:
    first = make_schema()
    second = commit(schema_client, first.name, WITH_CAPITAL)
    with pytest.raises(exceptions.InvalidArgument, match="created after"):
        make_topic(
            first.name,
            first_revision_id=second.revision_id,
            last_revision_id=first.revision_id,
        )


def test_update_topic_schema(
    publisher: Any, schema_client: Any, make_schema: Callable, make_topic: Callable
) -> None:
    """update_topic_schema: the sample's camelCase mask on the nested fields."""
    first = make_schema()
    second = commit(schema_client, first.name, WITH_CAPITAL)
    topic = make_topic(first.name, Encoding.JSON)
    updated = publisher.update_topic(
        request={
            "topic": {
                "name": topic,
                "schema_settings": {
                    "first_revision_id": first.revision_id,
                    "last_revision_id": first.revision_id,
                },
            },
            "update_mask": "schemaSettings.firstRevisionId,schemaSettings.lastRevisionId",
        }
    )
    assert updated.schema_settings.schema == first.name  # untouched by the nested paths
    assert updated.schema_settings.encoding == Encoding.JSON
    assert updated.schema_settings.first_revision_id == first.revision_id
    with pytest.raises(exceptions.InvalidArgument):  # valid only for the second revision
        publisher.publish(topic, json.dumps({**ALASKA, "capital": "Juneau"}).encode()).result()
    with pytest.raises(exceptions.InvalidArgument, match="0badc0de"):
        publisher.update_topic(
            request={
                "topic": {"name": topic, "schema_settings": {"last_revision_id": "0badc0de"}},
                "update_mask": "schemaSettings.lastRevisionId",
            }
        )
    assert publisher.get_topic(topic=topic).schema_settings.last_revision_id == first.revision_id
    assert second.revision_id


def test_update_topic_removes_the_schema(
    publisher: Any, make_schema: Callable, make_topic: Callable
) -> None:
    topic = make_topic(make_schema().name, Encoding.JSON)
    updated = publisher.update_topic(
        request={"topic": {"name": topic}, "update_mask": "schemaSettings"}
    )
    assert not updated.schema_settings.schema
    assert publisher.publish(topic, b"anything at all").result()


def test_update_topic_adds_a_schema(publisher: Any, topic: str, make_schema: Callable) -> None:
    schema = make_schema()
    publisher.update_topic(
        request={
            "topic": {
                "name": topic,
                "schema_settings": {"schema": schema.name, "encoding": Encoding.JSON},
            },
            "update_mask": "schemaSettings",
        }
    )
    with pytest.raises(exceptions.InvalidArgument):
        publisher.publish(topic, b"not json").result()
    assert publisher.publish(topic, json.dumps(ALASKA).encode()).result()


# -- publish ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [Encoding.BINARY, Encoding.JSON])
def test_publish_and_subscribe_avro(
    publisher: Any,
    subscriber: Any,
    make_schema: Callable,
    make_topic: Callable,
    project: str,
    unique: Callable[[str], str],
    encoding: Any,
) -> None:
    """publish_avro_records + subscribe_with_avro_schema: the callback decodes by the
    googclient_schemaencoding attribute."""
    schema = make_schema()
    topic = make_topic(schema.name, encoding)
    subscription = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    topic_encoding = publisher.get_topic(request={"topic": topic}).schema_settings.encoding
    data = (
        avro_binary(AVSC, ALASKA)
        if topic_encoding == Encoding.BINARY
        else json.dumps(ALASKA).encode()
    )
    publisher.publish(topic, data).result()
    received: list[Any] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        if message.attributes.get("googclient_schemaencoding") == "BINARY":
            received.append(avro_read(AVSC, message.data))
        else:
            received.append(json.loads(message.data))
        received.append(dict(message.attributes))
        message.ack()
        done.set()

    future = subscriber.subscribe(subscription, callback=callback)
    try:
        assert done.wait(30)
    finally:
        future.cancel()
        future.result()
    assert received[0] == ALASKA
    assert received[1] == {
        "googclient_schemaname": schema.name,
        "googclient_schemaencoding": "BINARY" if encoding == Encoding.BINARY else "JSON",
        "googclient_schemarevisionid": schema.revision_id,
    }


@pytest.mark.parametrize("encoding", [Encoding.BINARY, Encoding.JSON])
def test_publish_and_subscribe_proto(
    publisher: Any,
    subscriber: Any,
    make_schema: Callable,
    make_topic: Callable,
    project: str,
    unique: Callable[[str], str],
    encoding: Any,
) -> None:
    """publish_proto_messages + subscribe_with_proto_schema."""
    schema = make_schema(Schema.Type.PROTOCOL_BUFFER, PROTO)
    topic = make_topic(schema.name, encoding)
    subscription = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    state_cls = state_proto_class()
    state = state_cls(name="Alaska", post_abbr="AK")
    data = (
        state.SerializeToString()
        if encoding == Encoding.BINARY
        else json_format.MessageToJson(state).encode()
    )
    publisher.publish(topic, data).result()
    (message,) = pull_all(subscriber, subscription, 1)
    decoded = state_cls()
    if message.attributes["googclient_schemaencoding"] == "BINARY":
        decoded.ParseFromString(message.data)
    else:
        json_format.Parse(message.data, decoded)
    assert decoded == state
    assert message.attributes["googclient_schemarevisionid"] == schema.revision_id
    with pytest.raises(exceptions.InvalidArgument) as caught:
        publisher.publish(
            topic, b'{"capital": "Juneau"}' if encoding == Encoding.JSON else b"\xff\xff"
        ).result()
    expected = "JSON" if encoding == Encoding.JSON else "BINARY"
    assert caught.value.reason == f"INVALID_{expected}_PROTO_MESSAGE"


def test_one_bad_message_refuses_the_whole_request(
    publisher: Any,
    subscriber: Any,
    make_schema: Callable,
    make_topic: Callable,
    project: str,
    unique: Callable[[str], str],
) -> None:
    schema = make_schema()
    topic = make_topic(schema.name, Encoding.JSON)
    subscription = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    good = PubsubMessage(data=json.dumps(ALASKA).encode())
    bad = PubsubMessage(data=b'{"name": "Alaska", "post_abbr": 7}')
    gapic = GapicPublisherClient()  # the raw Publish RPC: one request with three messages
    with pytest.raises(exceptions.InvalidArgument) as caught:
        gapic.publish(topic=topic, messages=[good, bad, good])
    error = caught.value
    assert error.message.startswith("Invalid data in message: Message failed schema validation.")
    assert "message 1" in error.message
    assert "post_abbr" in error.message
    assert error.reason == "INVALID_JSON_AVRO_MESSAGE"
    assert error.domain == "pubsub.googleapis.com"
    assert error.metadata["message"] == "Message failed schema validation"
    assert f"revision_id={schema.revision_id}" in error.metadata["revisionInfo"]
    gapic.publish(topic=topic, messages=[good])
    messages = pull_all(subscriber, subscription, 1)
    assert [m.data for m in messages] == [good.data]  # nothing of the refused request


def test_newest_allowed_revision_wins(
    publisher: Any,
    subscriber: Any,
    schema_client: Any,
    make_schema: Callable,
    make_topic: Callable,
    project: str,
    unique: Callable[[str], str],
) -> None:
    """subscribe_with_avro_schema_with_revisions: each message names the revision it matched,
    checked from the newest allowed one down."""
    first = make_schema()
    with_default = json.dumps(
        {
            **json.loads(AVSC),
            "fields": [
                *json.loads(AVSC)["fields"],
                {"name": "capital", "type": ["null", "string"]},
            ],
        }
    )
    second = commit(schema_client, first.name, with_default)
    topic = make_topic(first.name, Encoding.JSON)
    subscription = subscriber.subscription_path(project, unique("sub"))
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    publisher.publish(topic, json.dumps(ALASKA).encode()).result()  # only the first matches
    publisher.publish(
        topic, json.dumps({**ALASKA, "capital": {"string": "Juneau"}}).encode()
    ).result()
    publisher.publish(topic, json.dumps({**ALASKA, "capital": None}).encode()).result()
    messages = pull_all(subscriber, subscription, 3)
    by_data = {m.data: m.attributes["googclient_schemarevisionid"] for m in messages}
    assert sorted(by_data.values()) == sorted(
        [first.revision_id, second.revision_id, second.revision_id]
    )
    assert by_data[json.dumps(ALASKA).encode()] == first.revision_id
    for message in messages:  # what the sample does: read with the revision's definition
        revision = schema_client.get_schema(
            request={
                "name": f"{message.attributes['googclient_schemaname']}@"
                f"{message.attributes['googclient_schemarevisionid']}"
            }
        )
        assert json.loads(revision.definition)["name"] == "State"


def test_revision_range_limits_validation(
    publisher: Any, schema_client: Any, make_schema: Callable, make_topic: Callable
) -> None:
    """create_topic_with_schema_revisions."""
    first = make_schema()
    second = commit(schema_client, first.name, WITH_CAPITAL)
    old_only = make_topic(
        first.name,
        Encoding.JSON,
        first_revision_id=first.revision_id,
        last_revision_id=first.revision_id,
    )
    new_only = make_topic(first.name, Encoding.JSON, first_revision_id=second.revision_id)
    alaska = json.dumps(ALASKA).encode()
    with_capital = json.dumps({**ALASKA, "capital": "Juneau"}).encode()
    assert publisher.publish(old_only, alaska).result()
    assert publisher.publish(new_only, with_capital).result()
    with pytest.raises(exceptions.InvalidArgument, match=first.revision_id):
        publisher.publish(old_only, with_capital).result()
    with pytest.raises(exceptions.InvalidArgument, match=second.revision_id):
        publisher.publish(new_only, alaska).result()


def test_deleted_first_revision_gives_way_to_the_next(
    publisher: Any, schema_client: Any, make_schema: Callable, make_topic: Callable
) -> None:
    first = make_schema()
    second = commit(schema_client, first.name, WITH_CAPITAL)
    third = commit(schema_client, first.name, AVSC.replace('"post_abbr"', '"abbr"'))
    topic = make_topic(
        first.name,
        Encoding.JSON,
        first_revision_id=second.revision_id,
        last_revision_id=second.revision_id,
    )
    schema_client.delete_schema_revision(request={"name": f"{first.name}@{second.revision_id}"})
    # first_revision_id is gone: the next one (third) is used; last_revision_id is gone too,
    # and the previous one (first) is before the range: nothing validates now...
    with pytest.raises(exceptions.InvalidArgument, match="no revision is in the topic's allowed"):
        publisher.publish(topic, json.dumps(ALASKA).encode()).result()
    publisher.update_topic(
        request={
            "topic": {"name": topic, "schema_settings": {"last_revision_id": ""}},
            "update_mask": "schemaSettings.lastRevisionId",
        }
    )
    # ...until the range is open-ended: the third revision validates, the first does not.
    assert publisher.publish(topic, json.dumps({"name": "Alaska", "abbr": "AK"}).encode()).result()
    with pytest.raises(exceptions.InvalidArgument, match=third.revision_id):
        publisher.publish(topic, json.dumps(ALASKA).encode()).result()


def test_deleted_schema_leaves_the_topic_and_fails_publish(
    publisher: Any, schema_client: Any, make_schema: Callable, make_topic: Callable
) -> None:
    schema = make_schema()
    topic = make_topic(schema.name, Encoding.JSON)
    schema_client.delete_schema(request={"name": schema.name})
    assert publisher.get_topic(topic=topic).schema_settings.schema == "_deleted-schema_"
    with pytest.raises(exceptions.NotFound, match="Schema associated with topic deleted"):
        publisher.publish(topic, json.dumps(ALASKA).encode()).result()
    publisher.update_topic(  # other fields of the topic still update
        request={"topic": {"name": topic, "labels": {"a": "b"}}, "update_mask": "labels"}
    )


def test_topic_without_schema_adds_no_attributes(
    publisher: Any, subscriber: Any, topic: str, make_sub: Callable[..., str]
) -> None:
    subscription = make_sub()
    publisher.publish(topic, b"plain", kind="x").result()
    (message,) = pull_all(subscriber, subscription, 1)
    assert dict(message.attributes) == {"kind": "x"}


def test_publisher_cannot_set_googclient_attributes(
    publisher: Any, make_schema: Callable, make_topic: Callable
) -> None:
    topic = make_topic(make_schema().name, Encoding.JSON)
    with pytest.raises(exceptions.InvalidArgument, match="reserved"):
        publisher.publish(
            topic, json.dumps(ALASKA).encode(), googclient_schemarevisionid="forged"
        ).result()


# -- persistence ------------------------------------------------------------------------------


def test_schemas_survive_kill(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    broker = start_broker(tmp_path / "data")
    schemas = broker.schema_client()
    publisher = broker.publisher()
    created = schemas.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=AVRO, definition=AVSC),
            "schema_id": "states",
        }
    )
    second = commit(schemas, created.name, WITH_CAPITAL)
    third = schemas.rollback_schema(
        request={"name": created.name, "revision_id": created.revision_id}
    )
    proto = schemas.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=Schema.Type.PROTOCOL_BUFFER, definition=PROTO),
            "schema_id": "states-proto",
        }
    )
    topic = publisher.topic_path(project, "validated")
    publisher.create_topic(
        request={
            "name": topic,
            "schema_settings": {
                "schema": created.name,
                "encoding": Encoding.BINARY,
                "first_revision_id": second.revision_id,
            },
        }
    )
    schemas.delete_schema_revision(request={"name": f"{created.name}@{second.revision_id}"})
    proto_topic = publisher.topic_path(project, "validated-proto")
    publisher.create_topic(
        request={
            "name": proto_topic,
            "schema_settings": {"schema": proto.name, "encoding": Encoding.BINARY},
        }
    )
    doomed = schemas.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=AVRO, definition=AVSC),
            "schema_id": "doomed",
        }
    )
    doomed_topic = publisher.topic_path(project, "orphan")
    publisher.create_topic(
        request={
            "name": doomed_topic,
            "schema_settings": {"schema": doomed.name, "encoding": Encoding.JSON},
        }
    )
    schemas.delete_schema(request={"name": doomed.name})
    before = [
        (r.revision_id, r.definition, r.revision_create_time)
        for r in schemas.list_schema_revisions(request={"name": created.name, "view": "FULL"})
    ]

    broker.kill()
    broker.start()
    schemas = broker.schema_client()
    publisher = broker.publisher()
    after = [
        (r.revision_id, r.definition, r.revision_create_time)
        for r in schemas.list_schema_revisions(request={"name": created.name, "view": "FULL"})
    ]
    assert after == before
    assert [r[0] for r in after] == [third.revision_id, created.revision_id]
    assert schemas.get_schema(request={"name": proto.name}).definition == PROTO
    with pytest.raises(exceptions.NotFound):
        schemas.get_schema(request={"name": doomed.name})
    assert publisher.get_topic(topic=doomed_topic).schema_settings.schema == "_deleted-schema_"
    # The deleted second revision still marks the start of the topic's range: the third
    # (a copy of the first) validates, the first is before the range.
    assert publisher.publish(topic, avro_binary(AVSC, ALASKA)).result()
    with pytest.raises(exceptions.InvalidArgument, match=third.revision_id):
        publisher.publish(topic, b"\x00").result()
    state = state_proto_class()(name="Alaska", post_abbr="AK")
    assert publisher.publish(proto_topic, state.SerializeToString()).result()
    publisher.stop()


def test_old_data_dir_gains_the_schema_tables(
    start_broker: Callable[[Path], Any], tmp_path: Path, project: str
) -> None:
    """A data dir written before schemas existed (no schema tables) still loads and serves."""
    broker = start_broker(tmp_path / "data")
    publisher = broker.publisher()
    topic = publisher.topic_path(project, "older")
    publisher.create_topic(name=topic)
    publisher.stop()
    broker.stop()
    with sqlite3.connect(tmp_path / "data" / "broker.sqlite3") as conn:
        conn.execute("DROP TABLE schemas")
        conn.execute("DROP TABLE schema_revisions")
    broker.start()
    publisher = broker.publisher()
    assert publisher.get_topic(topic=topic).name == topic
    created = broker.schema_client().create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(type_=AVRO, definition=AVSC),
            "schema_id": "fresh",
        }
    )
    assert created.revision_id
    publisher.stop()
