"""The google.pubsub.v1.SchemaService state: schemas, their revisions, topic schema settings.

Google's documented rules (cloud.google.com/pubsub/docs/schemas, commit-schema-revision,
roll-back-schemas, delete-schema-revision, associate-schema-topic, publish-topics-schema):
- a schema id follows the topic id rules; a project holds at most 10,000 schemas and a schema
  at most 20 revisions; a revision id is "an auto-generated 8 character UUID" and a revision
  is named `projects/P/schemas/S@REVISION`;
- RollbackSchema "creates another schema revision with the exact schema definition as the
  specified previous revision"; the only revision of a schema cannot be deleted (delete the
  schema); deleting a schema deletes its revisions and its topics show `_deleted-schema_`,
  after which "attempts to publish messages to topics associated with it fail";
- when a topic's `first_revision_id` (`last_revision_id`) is deleted, "the next (previous)
  revision is used instead" (so deleted revisions keep their place, see `Revision`);
- a message is checked "against revisions in order from the most recent allowed revision until
  either a match is found or the oldest allowed revision is reached"; a published message gets
  `googclient_schemaname`, `googclient_schemaencoding` (JSON or BINARY) and
  `googclient_schemarevisionid`; a message that matches no revision fails the whole Publish
  with INVALID_ARGUMENT "Invalid data in message: Message failed schema validation." and an
  ErrorInfo (reason INVALID_JSON_AVRO_MESSAGE, INVALID_BINARY_AVRO_MESSAGE, ..., metadata
  `message` and `revisionInfo`), as Google answers it (googleapis/google-cloud-go#8179).

Every change is committed to the store (tables schemas and schema_revisions) before the reply.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.pubsub_v1 import types
from google.rpc import error_details_pb2, status_pb2

from relay.broker._errors import (
    BrokerError,
    already_exists,
    failed_precondition,
    invalid,
    not_found,
    plain,
)
from relay.broker._limits import CheckedMessages
from relay.broker._names import DELETED_SCHEMA, check_project, check_schema
from relay.broker._schema_codecs import (
    AVRO,
    BINARY,
    JSON,
    PROTOCOL_BUFFER,
    Codec,
    compile_definition,
    load_codec,
)
from relay.broker._store import Statement, Store

__all__ = ["MAX_REVISIONS", "MAX_SCHEMAS_PER_PROJECT", "SchemaRegistry"]

MAX_SCHEMAS_PER_PROJECT = 10_000
MAX_REVISIONS = 20

Schema: Any = types.Schema.pb()
PubsubMessage: Any = types.PubsubMessage.pb()
Topic: Any = types.Topic.pb()

_BASIC, _FULL = 1, 2  # google.pubsub.v1.SchemaView
_TYPE_NAMES = {AVRO: "AVRO", PROTOCOL_BUFFER: "PROTO"}
_ENCODING_NAMES = {JSON: "JSON", BINARY: "BINARY"}
_DOMAIN = "pubsub.googleapis.com"


class _Topic(Protocol):
    """What the registry needs of a topic (relay.broker._core.TopicState)."""

    topic_id: int
    pb: Any
    schema: Any


class _Policies(Protocol):
    """What the registry needs of the IAM policies (relay.broker._iam.IamPolicies)."""

    def drop_statement(self, resource: str, statements: list[Statement]) -> None: ...

    def forget(self, resource: str) -> None: ...


@dataclass(slots=True)
class Revision:
    """One revision; `definition` is None once deleted (the row stays to mark its place)."""

    revision_id: str
    ordinal: int
    create_ns: int
    definition: str | None
    compiled: bytes
    codec: Codec | None = None


@dataclass(slots=True)
class SchemaState:
    """A schema and every revision it has had, in commit order."""

    name: str
    type: int
    revisions: list[Revision] = field(default_factory=list)

    def live(self) -> list[Revision]:
        return [r for r in self.revisions if r.definition is not None]

    def find(self, revision_id: str) -> Revision | None:
        """The live revision called `revision_id`."""
        for revision in self.revisions:
            if revision.revision_id == revision_id and revision.definition is not None:
                return revision
        return None

    def place(self, revision_id: str) -> int | None:
        """Where a revision stands (deleted ones too)."""
        for revision in self.revisions:
            if revision.revision_id == revision_id:
                return revision.ordinal
        return None


_SQL_INSERT_SCHEMA = "INSERT INTO schemas (name, type) VALUES (?, ?)"
_SQL_INSERT_REVISION = (
    "INSERT INTO schema_revisions (schema, ordinal, revision_id, create_ns, definition, compiled) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


class SchemaRegistry:
    """All schemas of the broker; `topics` is the broker's own topic dict (read and updated
    when a schema is deleted). Changes hold `admin` (the broker's administrator-operation lock,
    taken after a definition is compiled) and are committed before memory shows them."""

    def __init__(
        self,
        store: Store,
        topics: MutableMapping[str, Any],
        policies: _Policies,
        admin: asyncio.Lock,
    ) -> None:
        self._store = store
        self._topics: Mapping[str, _Topic] = topics
        self._schemas: dict[str, SchemaState] = {}
        self._policies = policies  # a deleted schema's IAM policy goes with it
        self._admin = admin

    def exists(self, name: str) -> bool:
        """Whether the schema `name` exists."""
        return name in self._schemas

    def load(self) -> None:
        """Read schemas and revisions from the store (at start, before its writer runs)."""
        schemas, revisions = self._store.schema_rows()
        for name, schema_type in schemas:
            self._schemas[name] = SchemaState(name, schema_type)
        for schema, ordinal, revision_id, create_ns, definition, compiled in revisions:
            state = self._schemas.get(schema)
            if state is not None:
                state.revisions.append(
                    Revision(revision_id, ordinal, create_ns, definition, bytes(compiled))
                )

    # -- SchemaService ---------------------------------------------------------------------------

    async def create(self, request: Any) -> Any:
        """CreateSchema."""
        project = check_project(request.parent)
        name = check_schema(f"projects/{project}/schemas/{request.schema_id}")
        if name in self._schemas:
            raise already_exists("schema", name)
        schema_type = _check_type(request.schema)
        prefix = f"projects/{project}/schemas/"
        if sum(n.startswith(prefix) for n in self._schemas) >= MAX_SCHEMAS_PER_PROJECT:
            raise BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The project {project} already has {MAX_SCHEMAS_PER_PROJECT} schemas, the "
                "maximum.",
            )
        definition = request.schema.definition
        compiled = await compile_definition(schema_type, definition)
        async with self._admin:
            if name in self._schemas:  # created while this one compiled
                raise already_exists("schema", name)
            state = SchemaState(name, schema_type)
            revision = self._new_revision(state, definition, compiled)
            await self._store.submit(
                [(_SQL_INSERT_SCHEMA, [(name, schema_type)]), _insert(state, revision)],
                what=f"the new schema {name}",
            )
            state.revisions.append(revision)
            self._schemas[name] = state
        return _to_pb(state, revision, _FULL)

    def get(self, name: str, view: int) -> Any:
        """GetSchema (`name` or `name@revision`; no view means FULL)."""
        state, revision = self._revision(name)
        return _to_pb(state, revision, view or _FULL)

    def list_schemas(
        self, parent: str, view: int, page_size: int, token: str
    ) -> tuple[list[Any], str]:
        """ListSchemas, by name (no view means BASIC)."""
        prefix = f"projects/{check_project(parent)}/schemas/"
        names = sorted(n for n in self._schemas if n.startswith(prefix))
        page, next_token = _page(names, page_size, token)
        states = [self._schemas[n] for n in page]
        return [_to_pb(s, s.live()[-1], view or _BASIC) for s in states], next_token

    def list_revisions(
        self, name: str, view: int, page_size: int, token: str
    ) -> tuple[list[Any], str]:
        """ListSchemaRevisions, newest first (AIP-162's order; no view means BASIC)."""
        state = self._state(name)
        revisions = list(reversed(state.live()))
        ids = [r.revision_id for r in revisions]
        if token and token not in ids:
            raise invalid(f"Invalid page_token: {token!r}.")
        start = ids.index(token) + 1 if token else 0
        size = _page_size(page_size)
        page = revisions[start : start + size]
        more = start + size < len(revisions)
        next_token = page[-1].revision_id if more and page else ""
        return [_to_pb(state, r, view or _BASIC) for r in page], next_token

    async def commit(self, name: str, schema: Any) -> Any:
        """CommitSchema: a new revision (same type) becomes the latest."""
        state = self._state(name)
        schema_type = _check_type(schema)
        if schema_type != state.type:
            raise invalid(
                f"The schema {state.name} is of type {_TYPE_NAMES[state.type]}; a revision "
                "cannot change the type."
            )
        self._check_room(state)
        compiled = await compile_definition(schema_type, schema.definition)
        async with self._admin:
            if self._schemas.get(state.name) is not state:
                raise not_found("schema", state.name)
            self._check_room(state)
            revision = await self._add_revision(state, schema.definition, compiled)
        return _to_pb(state, revision, _FULL)

    async def rollback(self, name: str, revision_id: str) -> Any:
        """RollbackSchema: a new revision with the definition of `revision_id`."""
        async with self._admin:
            state = self._state(name)
            if not revision_id:
                raise invalid("The revision_id to roll back to must be set.")
            source = state.find(revision_id)
            if source is None or source.definition is None:
                raise not_found("schema revision", f"{state.name}@{plain(revision_id)}")
            self._check_room(state)
            revision = await self._add_revision(state, source.definition, source.compiled)
        return _to_pb(state, revision, _FULL)

    async def delete_revision(self, name: str) -> Any:
        """DeleteSchemaRevision (`name@revision`); returns the deleted revision."""
        revision_id = name.partition("@")[2]
        if not revision_id:
            raise invalid(
                f"The name {name!r} names no revision; use projects/{{project}}/schemas/"
                "{schema}@{revision_id}."
            )
        async with self._admin:
            state, revision = self._revision(name)
            if len(state.live()) == 1:
                raise failed_precondition(
                    f"The revision {revision_id} is the only revision of the schema "
                    f"{state.name} and cannot be deleted; delete the schema instead."
                )
            deleted = _to_pb(state, revision, _FULL)
            await self._store.submit(
                [
                    (
                        "UPDATE schema_revisions SET definition = NULL, compiled = ? "
                        "WHERE schema = ? AND ordinal = ?",
                        [(b"", state.name, revision.ordinal)],
                    )
                ],
                what=f"the deletion of the revision {name}",
            )
            revision.definition = None
            revision.compiled = b""
            revision.codec = None
        return deleted

    async def delete(self, name: str) -> None:
        """DeleteSchema: its revisions go; its topics keep `_deleted-schema_`."""
        async with self._admin:
            state = self._state(name)
            statements: list[Statement] = [
                ("DELETE FROM schemas WHERE name = ?", [(state.name,)]),
                ("DELETE FROM schema_revisions WHERE schema = ?", [(state.name,)]),
            ]
            self._policies.drop_statement(state.name, statements)
            using = [
                topic
                for topic in self._topics.values()
                if topic.schema is not None and topic.schema.schema == state.name
            ]
            for topic in using:
                body = Topic()
                body.CopyFrom(topic.pb)
                body.schema_settings.schema = DELETED_SCHEMA
                statements.append(
                    (
                        "UPDATE topics SET body = ? WHERE id = ?",
                        [(body.SerializeToString(), topic.topic_id)],
                    )
                )
            await self._store.submit(statements, what=f"the deletion of the schema {state.name}")
            del self._schemas[state.name]
            self._policies.forget(state.name)
            for topic in using:
                topic.schema.schema = DELETED_SCHEMA

    async def validate_schema(self, parent: str, schema: Any) -> None:
        """ValidateSchema."""
        check_project(parent)
        await compile_definition(_check_type(schema), schema.definition)

    async def validate_message(self, request: Any) -> None:
        """ValidateMessage against a schema (its latest revision, or `name@revision`) or an
        ad-hoc definition."""
        check_project(request.parent)
        which = request.WhichOneof("schema_spec")
        if which == "name":
            state, revision = self._revision(request.name)
            schema_type, codec = state.type, self._codec(state, revision)
            label = f"{state.name}@{revision.revision_id}"
        elif which == "schema":
            schema_type = _check_type(request.schema)
            definition = request.schema.definition
            compiled = await compile_definition(schema_type, definition)
            codec = load_codec(schema_type, definition, compiled)
            label = "the given schema"
        else:
            raise invalid("Either name or schema must be set.")
        encoding = _check_encoding(request.encoding, "encoding")
        problem = codec.problem(request.message, encoding)
        if problem is not None:
            raise _validation_error(
                schema_type, encoding, f"Message failed validation against {label}: {problem}"
            )

    # -- topics ----------------------------------------------------------------------------------

    def topic_schema(self, topic: str, pb: Any, previous: Any | None) -> Any | None:
        """The schema settings `pb` (a Topic about to be stored) validates against, or None.

        Empty settings are dropped; settings that differ from the topic's `previous` ones (all,
        for a new topic) must name an existing schema, JSON or BINARY, and existing revisions
        in order (a revision id kept from `previous` may name a since deleted revision).
        """
        if not pb.HasField("schema_settings"):
            return None
        settings = pb.schema_settings
        if settings.ByteSize() == 0:
            pb.ClearField("schema_settings")
            return None
        if previous is not None and settings == previous:
            return settings
        if settings.schema == DELETED_SCHEMA or not settings.schema:
            raise invalid(
                f"Schema settings for the topic {topic} must name a schema "
                "(schema_settings.schema)."
            )
        state = self._schemas.get(check_schema(settings.schema))
        if state is None:
            raise not_found("schema", settings.schema)
        _check_encoding(settings.encoding, f"schema_settings.encoding of the topic {topic}")
        places = []
        for attribute in ("first_revision_id", "last_revision_id"):
            revision_id = getattr(settings, attribute)
            if not revision_id:
                continue
            kept = previous is not None and getattr(previous, attribute) == revision_id
            place = state.place(revision_id)  # a kept id may name a since deleted revision
            if place is None or (not kept and state.find(revision_id) is None):
                raise invalid(
                    f"Schema settings for the topic {topic}: {attribute} {revision_id!r} is not "
                    f"a revision of the schema {state.name}."
                )
            places.append(place)
        if len(places) == 2 and places[0] > places[1]:
            raise invalid(
                f"Schema settings for the topic {topic}: first_revision_id "
                f"{settings.first_revision_id!r} was created after last_revision_id "
                f"{settings.last_revision_id!r}."
            )
        return settings

    def validate_publish(
        self, settings: Any, messages: Any, checked: CheckedMessages
    ) -> CheckedMessages:
        """Check every message of a Publish against the topic's allowed revisions (newest
        first) and add Google's googclient_* attributes to the accepted ones."""
        state = self._schemas.get(settings.schema)
        if state is None:
            raise BrokerError(grpc.StatusCode.NOT_FOUND, "Schema associated with topic deleted.")
        encoding = settings.encoding
        allowed = self._allowed(state, settings)
        suffixes: dict[str, bytes] = {}
        bodies = []
        for index, (message, body) in enumerate(zip(messages, checked.bodies, strict=True)):
            matched, problem, last = None, "no revision is in the topic's allowed range", None
            for revision in allowed:
                problem_here = self._codec(state, revision).problem(message.data, encoding)
                if problem_here is None:
                    matched = revision
                    break
                problem, last = problem_here, revision
            if matched is None:
                checked_last = f"revision_id={last.revision_id}" if last else "none"
                raise _validation_error(
                    state.type,
                    encoding,
                    "Could not validate message with any schema revision for schema: "
                    f"{state.name}, last checked revision: {checked_last} failed with status: "
                    f"{problem}",
                    index,
                )
            attributes = {
                "googclient_schemaname": state.name,
                "googclient_schemaencoding": _ENCODING_NAMES[encoding],
                "googclient_schemarevisionid": matched.revision_id,
            }
            suffix = suffixes.get(matched.revision_id)
            if suffix is None:
                suffix = PubsubMessage(attributes=attributes).SerializeToString()
                suffixes[matched.revision_id] = suffix
            # Map entries appended to a serialized message merge into its attributes.
            bodies.append(body + suffix)
            message.attributes.update(attributes)  # what subscription filters see
        return CheckedMessages(bodies, checked.ordering_keys)

    # -- helpers ---------------------------------------------------------------------------------

    def _state(self, name: str) -> SchemaState:
        if "@" in name:
            raise invalid(f"The name {name!r} must name a schema, not a revision.")
        state = self._schemas.get(check_schema(name))
        if state is None:
            raise not_found("schema", name)
        return state

    def _revision(self, name: str) -> tuple[SchemaState, Revision]:
        """The schema and revision `name` (`name@revision`, or the latest) designates."""
        schema_name, _, revision_id = name.partition("@")
        state = self._state(schema_name)
        if not revision_id:
            return state, state.live()[-1]
        revision = state.find(revision_id)
        if revision is None:
            raise not_found("schema revision", name)
        return state, revision

    def _allowed(self, state: SchemaState, settings: Any) -> list[Revision]:
        """The live revisions in the topic's range, newest first."""
        low = state.place(settings.first_revision_id) if settings.first_revision_id else -1
        high = state.place(settings.last_revision_id) if settings.last_revision_id else None
        if low is None:
            return []
        return [
            r
            for r in reversed(state.live())
            if r.ordinal >= low and (high is None or r.ordinal <= high)
        ]

    def _check_room(self, state: SchemaState) -> None:
        if len(state.live()) >= MAX_REVISIONS:
            raise BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The schema {state.name} already has {MAX_REVISIONS} revisions, the maximum; "
                "delete a revision first.",
            )

    async def _add_revision(self, state: SchemaState, definition: str, compiled: bytes) -> Revision:
        """Commit a new revision of `state`, then add it (the caller holds `admin`)."""
        revision = self._new_revision(state, definition, compiled)
        await self._store.submit(
            [_insert(state, revision)], what=f"the new revision of the schema {state.name}"
        )
        state.revisions.append(revision)
        return revision

    @staticmethod
    def _new_revision(state: SchemaState, definition: str, compiled: bytes) -> Revision:
        """The next revision of `state` (not added yet)."""
        taken = {r.revision_id for r in state.revisions}
        revision_id = uuid.uuid4().hex[:8]
        while revision_id in taken:
            revision_id = uuid.uuid4().hex[:8]
        ordinal = state.revisions[-1].ordinal + 1 if state.revisions else 1
        # Creation times strictly increase within a schema, as the order of revisions does.
        create_ns = time.time_ns() // 1000 * 1000
        if state.revisions and create_ns <= state.revisions[-1].create_ns:
            create_ns = state.revisions[-1].create_ns + 1000
        return Revision(revision_id, ordinal, create_ns, definition, compiled)

    @staticmethod
    def _codec(state: SchemaState, revision: Revision) -> Codec:
        codec = revision.codec
        if codec is None:
            assert revision.definition is not None  # only live revisions are validated against
            codec = load_codec(state.type, revision.definition, revision.compiled)
            revision.codec = codec
        return codec


def _insert(state: SchemaState, revision: Revision) -> Statement:
    return (
        _SQL_INSERT_REVISION,
        [
            (
                state.name,
                revision.ordinal,
                revision.revision_id,
                revision.create_ns,
                revision.definition,
                revision.compiled,
            )
        ],
    )


def _to_pb(state: SchemaState, revision: Revision, view: int) -> Any:
    secs, nanos = divmod(revision.create_ns, 1_000_000_000)
    pb = Schema(
        name=state.name,
        type_=state.type,
        revision_id=revision.revision_id,
        revision_create_time=timestamp_pb2.Timestamp(seconds=secs, nanos=nanos),
    )
    if view == _FULL:
        pb.definition = revision.definition or ""
    elif view != _BASIC:
        raise invalid(f"Invalid view: {view}; expected BASIC or FULL.")
    return pb


def _check_type(schema: Any) -> int:
    if schema.HasField("compiled_proto_schema"):
        raise BrokerError(
            grpc.StatusCode.UNIMPLEMENTED,
            "compiled_proto_schema is not supported by relay broker; give the .proto text as "
            "the definition.",
        )
    if schema.type_ not in (AVRO, PROTOCOL_BUFFER):
        raise invalid(f"Invalid schema type: {schema.type_}; expected AVRO or PROTOCOL_BUFFER.")
    return int(schema.type_)


def _check_encoding(encoding: int, what: str) -> int:
    if encoding not in (JSON, BINARY):
        raise invalid(f"The {what} must be JSON or BINARY (it is {encoding}).")
    return encoding


def _validation_error(
    schema_type: int, encoding: int, detail: str, index: int | None = None
) -> BrokerError:
    """Google's INVALID_ARGUMENT for a message that fails its schema, with its ErrorInfo."""
    reason = f"INVALID_{_ENCODING_NAMES[encoding]}_{_TYPE_NAMES[schema_type]}_MESSAGE"
    where = "" if index is None else f"message {index}: "
    message = f"Invalid data in message: Message failed schema validation. ({where}{detail})"
    info = error_details_pb2.ErrorInfo(
        reason=reason,
        domain=_DOMAIN,
        metadata={"message": "Message failed schema validation", "revisionInfo": detail},
    )
    details = any_pb2.Any()
    details.Pack(info)
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message, details=[details]
    )
    return BrokerError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        (("grpc-status-details-bin", status.SerializeToString()),),
    )


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise invalid("page_size must not be negative.")
    return page_size or 100


def _page(names: list[str], page_size: int, token: str) -> tuple[list[str], str]:
    size = _page_size(page_size)
    start = next((i for i, n in enumerate(names) if n > token), len(names)) if token else 0
    page = names[start : start + size]
    return page, page[-1] if start + size < len(names) and page else ""
