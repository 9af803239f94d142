"""The SchemaService through the stock google-cloud-pubsub SchemaServiceClient.

Each test makes the calls of a sample of googleapis/python-pubsub samples/snippets/schema.py
(create_avro_schema, get_schema_revision, rollback_schema_revision, ...) or checks one rule.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from google.api_core import exceptions
from google.pubsub_v1.types import Encoding, Schema, SchemaView

FIXTURES = Path(__file__).parent / "schemas"
AVSC = (FIXTURES / "us-states.avsc").read_text()
PROTO = (FIXTURES / "us-states.proto").read_text()
AVRO = Schema.Type.AVRO
PROTOCOL_BUFFER = Schema.Type.PROTOCOL_BUFFER
ALASKA = {"name": "Alaska", "post_abbr": "AK"}


def avro_binary(definition: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(json.loads(definition)), record)
    return out.getvalue()


def with_field(definition: str, field: dict[str, Any]) -> str:
    """The Avro definition with one more field (a new revision)."""
    schema = json.loads(definition)
    schema["fields"].append(field)
    return json.dumps(schema)



# -- create / get -----------------------------------------------------------------------------


def test_create_avro_schema(schema_client: Any, project: str, unique: Callable[[str], str]) -> None:
    schema_id = unique("avro")
    path = schema_client.schema_path(project, schema_id)
    created = schema_client.create_schema(
        request={
            "parent": f"projects/{project}",
            "schema": Schema(name=path, type_=AVRO, definition=AVSC),
            "schema_id": schema_id,
        }
    )
    assert created.name == path
    assert created.type_ == AVRO
    assert created.definition == AVSC
    assert re.fullmatch(r"[0-9a-f]{8}", created.revision_id)
    assert created.revision_create_time.timestamp() > 0
    got = schema_client.get_schema(request={"name": path})  # no view: FULL
    assert (got.revision_id, got.definition) == (created.revision_id, AVSC)


def test_create_proto_schema(make_schema: Callable[..., Any]) -> None:
    created = make_schema(PROTOCOL_BUFFER, PROTO)
    assert created.type_ == PROTOCOL_BUFFER
    assert created.definition == PROTO


def test_basic_view_omits_the_definition(schema_client: Any, make_schema: Callable) -> None:
    created = make_schema()
    basic = schema_client.get_schema(request={"name": created.name, "view": SchemaView.BASIC})
    assert basic.definition == ""
    assert (basic.name, basic.type_, basic.revision_id) == (
        created.name,
        AVRO,
        created.revision_id,
    )


def test_create_existing_schema_is_already_exists(
    schema_client: Any, project: str, unique: Callable[[str], str]
) -> None:
    schema_id = unique("dup")
    request = {
        "parent": f"projects/{project}",
        "schema": Schema(type_=AVRO, definition=AVSC),
        "schema_id": schema_id,
    }
    schema_client.create_schema(request=request)
    with pytest.raises(exceptions.AlreadyExists, match=schema_id):
        schema_client.create_schema(request=request)


@pytest.mark.parametrize("schema_id", ["ab", "goog-schema", "1schema", "sch/ema", "s" * 256, ""])
def test_invalid_schema_ids(schema_client: Any, project: str, schema_id: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="schemas"):
        schema_client.create_schema(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=AVRO, definition=AVSC),
                "schema_id": schema_id,
            }
        )


def test_schema_type_is_required(make_schema: Callable[..., Any]) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid schema type"):
        make_schema(Schema.Type.TYPE_UNSPECIFIED)


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"type": "record", "name": "A"}', "needs 'fields'"),
        ('{"type": "record", "name": "1A", "fields": []}', "invalid record name"),
        ('{"type": "record", "name": "A", "fields": [{"name": "x"}]}', "needs a type"),
        ('["int", "int"]', "has int twice"),
        ("[]", "at least one type"),
        ('{"type": "fixed", "name": "F"}', "fixed size"),
        ('{"type": "array"}', "needs 'items'"),
        ('"no.such.Type"', "Invalid schema definition"),
        (
            '{"type": "record", "name": "A", "fields": [{"name": "x", "type": "int", '
            '"default": "s"}]}',
            "Default value",
        ),
        ("[" * 300 + "]" * 300, "nested more than"),
    ],
)
def test_invalid_avro_definitions(
    make_schema: Callable[..., Any], definition: str, problem: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid schema definition") as caught:
        make_schema(AVRO, definition)
    assert problem in caught.value.message


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ('syntax = "proto3"; message A { int32 x = 1 }', r"schema.proto:1:\d+: Expected"),
        ('syntax = "proto3"; message A {} message B {}', "exactly one top-level type"),
        ('syntax = "proto3"; enum E { Z = 0; } message A { E e = 1; }', "1 enums"),
        (
            'syntax = "proto3"; import "google/protobuf/timestamp.proto"; '
            "message A { google.protobuf.Timestamp t = 1; }",
            "import statements are not supported",
        ),
        ('syntax = "proto3"; message A { Missing m = 1; }', "not defined"),
        ("message A { \x00 }", "schema.proto"),
        ("   ", "empty"),
    ],
)
def test_invalid_proto_definitions(
    make_schema: Callable[..., Any], definition: str, problem: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Invalid schema definition") as caught:
        make_schema(PROTOCOL_BUFFER, definition)
    assert re.search(problem, caught.value.message), caught.value.message


def test_nested_proto_types_are_allowed(make_schema: Callable[..., Any]) -> None:
    definition = (
        'syntax = "proto2"; message Order { message Line { required string sku = 1; } '
        "enum Kind { A = 0; B = 1; } repeated Line lines = 1; optional Kind kind = 2; "
        "map<string, int32> counts = 3; }"
    )
    assert make_schema(PROTOCOL_BUFFER, definition).definition == definition


def test_definition_size_limit(make_schema: Callable[..., Any]) -> None:
    padding = " " * (300_000 - len(AVSC) + 1)
    with pytest.raises(exceptions.InvalidArgument, match="maximum is 300000 bytes"):
        make_schema(AVRO, AVSC + padding)
    make_schema(AVRO, AVSC + padding[:-1])  # exactly 300,000 bytes is fine


def test_compiled_proto_schema_is_unimplemented(
    schema_client: Any, project: str, unique: Callable[[str], str]
) -> None:
    with pytest.raises(exceptions.MethodNotImplemented, match="compiled_proto_schema"):
        schema_client.create_schema(
            request={
                "parent": f"projects/{project}",
                "schema": {
                    "type_": PROTOCOL_BUFFER,
                    "compiled_proto_schema": {"root_message": "A", "compiled_bytes": b"x"},
                },
                "schema_id": unique("compiled"),
            }
        )


def test_get_missing_schema_and_revision(schema_client: Any, make_schema: Callable) -> None:
    created = make_schema()
    with pytest.raises(exceptions.NotFound):
        schema_client.get_schema(request={"name": created.name + "-missing"})
    with pytest.raises(exceptions.NotFound, match="00000000"):
        schema_client.get_schema(request={"name": created.name + "@00000000"})


# -- list -------------------------------------------------------------------------------------


def test_list_schemas(schema_client: Any, unique: Callable[[str], str]) -> None:
    project = unique("proj")
    names = []
    for index in range(3):
        created = schema_client.create_schema(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=AVRO, definition=AVSC),
                "schema_id": f"schema-{index}",
            }
        )
        names.append(created.name)
    listed = list(schema_client.list_schemas(request={"parent": f"projects/{project}"}))
    assert [s.name for s in listed] == names
    assert all(s.definition == "" and s.revision_id for s in listed)  # BASIC by default
    full = schema_client.list_schemas(
        request={"parent": f"projects/{project}", "view": SchemaView.FULL, "page_size": 2}
    )
    assert [len(page.schemas) for page in full.pages] == [2, 1]
    full = schema_client.list_schemas(
        request={"parent": f"projects/{project}", "view": SchemaView.FULL}
    )
    assert all(s.definition == AVSC for s in full)


# -- revisions --------------------------------------------------------------------------------


def test_commit_schema_revisions(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    """commit_avro_schema, get_schema_revision, list_schema_revisions."""
    first = make_schema()
    second_definition = with_field(AVSC, {"name": "capital", "type": "string", "default": ""})
    second = schema_client.commit_schema(
        request={"name": first.name, "schema": Schema(type_=AVRO, definition=second_definition)}
    )
    assert second.name == first.name
    assert second.revision_id != first.revision_id
    assert second.revision_create_time > first.revision_create_time
    latest = schema_client.get_schema(request={"name": first.name})
    assert (latest.revision_id, latest.definition) == (second.revision_id, second_definition)
    old = schema_client.get_schema(request={"name": f"{first.name}@{first.revision_id}"})
    assert old.definition == AVSC
    revisions = list(schema_client.list_schema_revisions(request={"name": first.name}))
    assert [r.revision_id for r in revisions] == [second.revision_id, first.revision_id]
    assert all(r.definition == "" for r in revisions)  # BASIC by default
    full = schema_client.list_schema_revisions(
        request={"name": first.name, "view": SchemaView.FULL, "page_size": 1}
    )
    assert [[r.definition for r in page.schemas] for page in full.pages] == [
        [second_definition],
        [AVSC],
    ]


def test_commit_proto_schema(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    first = make_schema(PROTOCOL_BUFFER, PROTO)
    definition = PROTO.replace("string post_abbr = 2;", "string post_abbr = 2;\n  int32 x = 3;")
    committed = schema_client.commit_schema(
        request={"name": first.name, "schema": Schema(type_=PROTOCOL_BUFFER, definition=definition)}
    )
    assert committed.definition == definition


def test_commit_cannot_change_the_type(schema_client: Any, make_schema: Callable) -> None:
    first = make_schema()
    with pytest.raises(exceptions.InvalidArgument, match="cannot change the type"):
        schema_client.commit_schema(
            request={"name": first.name, "schema": Schema(type_=PROTOCOL_BUFFER, definition=PROTO)}
        )


def test_invalid_commit_changes_nothing(schema_client: Any, make_schema: Callable) -> None:
    first = make_schema()
    with pytest.raises(exceptions.InvalidArgument, match="Invalid schema definition"):
        schema_client.commit_schema(
            request={"name": first.name, "schema": Schema(type_=AVRO, definition="{")}
        )
    revisions = list(schema_client.list_schema_revisions(request={"name": first.name}))
    assert [r.revision_id for r in revisions] == [first.revision_id]


def test_commit_to_a_missing_schema_is_not_found(
    schema_client: Any, project: str, unique: Callable[[str], str]
) -> None:
    with pytest.raises(exceptions.NotFound):
        schema_client.commit_schema(
            request={
                "name": schema_client.schema_path(project, unique("none")),
                "schema": Schema(type_=AVRO, definition=AVSC),
            }
        )


def test_rollback_schema(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    """rollback_schema_revision: a new revision with the old definition."""
    first = make_schema()
    second = schema_client.commit_schema(
        request={
            "name": first.name,
            "schema": Schema(type_=AVRO, definition=with_field(AVSC, {"name": "x", "type": "int"})),
        }
    )
    rolled = schema_client.rollback_schema(
        request={"name": first.name, "revision_id": first.revision_id}
    )
    assert rolled.revision_id not in (first.revision_id, second.revision_id)
    assert rolled.definition == AVSC
    assert schema_client.get_schema(request={"name": first.name}).revision_id == rolled.revision_id
    with pytest.raises(exceptions.NotFound):
        schema_client.rollback_schema(request={"name": first.name, "revision_id": "0badc0de"})


def test_revision_limit(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    """At most 20 revisions per schema; deleting one makes room."""
    first = make_schema()
    for index in range(19):
        definition = with_field(AVSC, {"name": f"f{index}", "type": "int"})
        schema_client.commit_schema(
            request={"name": first.name, "schema": Schema(type_=AVRO, definition=definition)}
        )
    with pytest.raises(exceptions.ResourceExhausted, match="20 revisions"):
        schema_client.commit_schema(
            request={"name": first.name, "schema": Schema(type_=AVRO, definition=AVSC)}
        )
    with pytest.raises(exceptions.ResourceExhausted):
        schema_client.rollback_schema(
            request={"name": first.name, "revision_id": first.revision_id}
        )
    schema_client.delete_schema_revision(request={"name": f"{first.name}@{first.revision_id}"})
    schema_client.commit_schema(
        request={"name": first.name, "schema": Schema(type_=AVRO, definition=AVSC)}
    )


def test_delete_schema_revision(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    """delete_schema_revision: `name@revision`; the only revision cannot go."""
    first = make_schema()
    second = schema_client.commit_schema(
        request={
            "name": first.name,
            "schema": Schema(type_=AVRO, definition=with_field(AVSC, {"name": "x", "type": "int"})),
        }
    )
    deleted = schema_client.delete_schema_revision(
        request={"name": f"{first.name}@{first.revision_id}"}
    )
    assert (deleted.revision_id, deleted.definition) == (first.revision_id, AVSC)
    with pytest.raises(exceptions.NotFound):
        schema_client.get_schema(request={"name": f"{first.name}@{first.revision_id}"})
    revisions = list(schema_client.list_schema_revisions(request={"name": first.name}))
    assert [r.revision_id for r in revisions] == [second.revision_id]
    with pytest.raises(exceptions.FailedPrecondition, match="only revision"):
        schema_client.delete_schema_revision(request={"name": f"{first.name}@{second.revision_id}"})
    with pytest.raises(exceptions.InvalidArgument, match="names no revision"):
        schema_client.delete_schema_revision(request={"name": first.name})
    with pytest.raises(exceptions.NotFound):
        schema_client.delete_schema_revision(request={"name": f"{first.name}@{first.revision_id}"})


def test_delete_schema(schema_client: Any, make_schema: Callable[..., Any]) -> None:
    created = make_schema()
    schema_client.delete_schema(request={"name": created.name})
    with pytest.raises(exceptions.NotFound):
        schema_client.get_schema(request={"name": created.name})
    with pytest.raises(exceptions.NotFound):
        list(schema_client.list_schema_revisions(request={"name": created.name}))
    with pytest.raises(exceptions.NotFound):
        schema_client.delete_schema(request={"name": created.name})


# -- validation -------------------------------------------------------------------------------


def test_validate_schema(schema_client: Any, project: str) -> None:
    parent = f"projects/{project}"
    schema_client.validate_schema(
        request={"parent": parent, "schema": Schema(type_=PROTOCOL_BUFFER, definition=PROTO)}
    )
    with pytest.raises(exceptions.InvalidArgument, match="Invalid schema definition"):
        schema_client.validate_schema(
            request={"parent": parent, "schema": Schema(type_=AVRO, definition="[]")}
        )


def test_validate_message_by_name(
    schema_client: Any, project: str, make_schema: Callable[..., Any]
) -> None:
    created = make_schema()
    parent = f"projects/{project}"
    for encoding, data in [
        (Encoding.JSON, json.dumps(ALASKA).encode()),
        (Encoding.BINARY, avro_binary(AVSC, ALASKA)),
    ]:
        schema_client.validate_message(
            request={"parent": parent, "name": created.name, "message": data, "encoding": encoding}
        )
    with pytest.raises(exceptions.InvalidArgument, match="Message failed schema validation") as e:
        schema_client.validate_message(
            request={
                "parent": parent,
                "name": f"{created.name}@{created.revision_id}",
                "message": b'{"name": "Alaska"}',
                "encoding": Encoding.JSON,
            }
        )
    assert "post_abbr" in e.value.message
    assert e.value.reason == "INVALID_JSON_AVRO_MESSAGE"


def test_validate_message_with_an_inline_proto_schema(schema_client: Any, project: str) -> None:
    request = {
        "parent": f"projects/{project}",
        "schema": Schema(type_=PROTOCOL_BUFFER, definition=PROTO),
        "encoding": Encoding.JSON,
    }
    schema_client.validate_message(request={**request, "message": b'{"postAbbr": "AK"}'})
    with pytest.raises(exceptions.InvalidArgument, match="capital") as caught:
        schema_client.validate_message(request={**request, "message": b'{"capital": "Juneau"}'})
    assert caught.value.reason == "INVALID_JSON_PROTO_MESSAGE"


def test_validate_message_needs_an_encoding(schema_client: Any, project: str) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="JSON or BINARY"):
        schema_client.validate_message(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=AVRO, definition=AVSC),
                "message": json.dumps(ALASKA).encode(),
            }
        )


AVRO_TREE = json.dumps(
    {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "children", "type": {"type": "array", "items": "Node"}},
            {"name": "nothing", "type": {"type": "array", "items": "null"}},
        ],
    }
)


@pytest.mark.parametrize(
    ("encoding", "data", "problem"),
    [
        (Encoding.JSON, b"\xff\xfe", "not valid JSON"),
        (Encoding.JSON, b"[" * 100_000, "nested"),
        (Encoding.JSON, b'{"children": [], "nothing": [], "extra": 1}', "not in record"),
        (Encoding.JSON, b'{"children": [], "nothing": [NaN]}', "not valid JSON"),
        (Encoding.BINARY, b"\x02" * 100_000, "nested"),  # a chain of one-child nodes
        (Encoding.BINARY, b"\x00\xfe" + b"\xff" * 7 + b"\x7f", "more values"),  # 2^62 nulls
        (Encoding.BINARY, b"\x00\x00\x00", "Too much data"),
        (Encoding.BINARY, b"\x02", "Not enough data"),
        (Encoding.BINARY, b"\x80" * 11, "could not be decoded"),
    ],
)
def test_hostile_messages_are_invalid_argument(
    schema_client: Any, project: str, encoding: Any, data: bytes, problem: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument) as caught:
        schema_client.validate_message(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=AVRO, definition=AVRO_TREE),
                "message": data,
                "encoding": encoding,
            }
        )
    assert problem in caught.value.message


@pytest.mark.parametrize(
    "data",
    [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x0b" * 100, b"\x12\x02\xc3\x28"],
)
def test_hostile_proto_messages_are_invalid_argument(
    schema_client: Any, project: str, data: bytes
) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="Message failed schema validation"):
        schema_client.validate_message(
            request={
                "parent": f"projects/{project}",
                "schema": Schema(type_=PROTOCOL_BUFFER, definition=PROTO),
                "message": data,
                "encoding": Encoding.BINARY,
            }
        )
