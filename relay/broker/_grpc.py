"""The google.pubsub.v1 Publisher, Subscriber and SchemaService services, and
google.iam.v1.IAMPolicy (where the Pub/Sub clients' get_iam_policy & co. call), as generic gRPC
handlers over `Broker`.

Requests and responses are the raw protobuf classes behind google-cloud-pubsub's proto-plus types
(`types.X.pb()`), so any Pub/Sub client can talk to the broker unchanged. Each service's method
table goes through `Control.gate` (counts, injected faults, the admin quota and latency, keyed by
method name): a method added to a table is gated with nothing more to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

from relay.broker._auth import CALLER
from relay.broker._control import Control
from relay.broker._core import Broker, paged
from relay.broker._errors import BrokerError
from relay.broker._store import StoreFailed
from relay.broker._streaming import TokenExpiry, fill_received, streaming_pull

__all__ = ["handlers"]

_LOG = logging.getLogger("relay.broker")

_Unary = Callable[[Any, Any], Awaitable[Any]]


def _pb(name: str) -> Any:
    return getattr(types, name).pb()


def _store_status(exc: StoreFailed) -> tuple[grpc.StatusCode, str]:
    """A failed store write as a status: RESOURCE_EXHAUSTED when the disk is full."""
    if exc.full:
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"The relay broker's disk is full: {exc.what} was not stored ({exc.path}); nothing "
            "of this request was applied. Free disk space and retry.",
        )
    return (
        grpc.StatusCode.INTERNAL,
        f"The relay broker could not write its store: {exc}; nothing of this request was applied.",
    )


def _unary(fn: _Unary, request: str | type, response: str | type) -> Any:
    async def handle(req: Any, context: Any) -> Any:
        try:
            return await fn(req, context)
        except BrokerError as exc:
            await context.abort(exc.code, exc.message, exc.trailing_metadata)
        except StoreFailed as exc:
            await context.abort(*_store_status(exc))
        except Exception:
            _LOG.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error in the relay broker.")

    response_cls: Any = empty_pb2.Empty if response == "Empty" else response
    if isinstance(response_cls, str):
        response_cls = _pb(response_cls)
    request_cls: Any = request if isinstance(request, type) else _pb(request)
    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=request_cls.FromString,
        response_serializer=response_cls.SerializeToString,
    )


def handlers(broker: Broker, control: Control) -> list[Any]:
    """The generic handlers of every service, bound to `broker`, gated by `control`."""
    Empty = empty_pb2.Empty
    ListTopicsResponse = _pb("ListTopicsResponse")
    ListTopicSubscriptionsResponse = _pb("ListTopicSubscriptionsResponse")
    ListSubscriptionsResponse = _pb("ListSubscriptionsResponse")
    PublishResponse = _pb("PublishResponse")
    PullResponse = _pb("PullResponse")
    snapshots = broker.snapshots

    async def create_topic(req: Any, context: Any) -> Any:
        return await broker.create_topic(req)

    async def get_topic(req: Any, context: Any) -> Any:
        return broker.topic(req.topic).pb

    async def update_topic(req: Any, context: Any) -> Any:
        return await broker.update_topic(req.topic, list(req.update_mask.paths))

    async def list_topics(req: Any, context: Any) -> Any:
        topics, token = broker.list_topics(req.project, req.page_size, req.page_token)
        return ListTopicsResponse(topics=topics, next_page_token=token)

    async def list_topic_subscriptions(req: Any, context: Any) -> Any:
        names, token = broker.list_topic_subscriptions(req.topic, req.page_size, req.page_token)
        return ListTopicSubscriptionsResponse(subscriptions=names, next_page_token=token)

    async def delete_topic(req: Any, context: Any) -> Any:
        await broker.delete_topic(req.topic)
        return Empty()

    async def publish(req: Any, context: Any) -> Any:
        ids = await broker.publish(req.topic, req.messages)
        return PublishResponse(message_ids=ids)

    async def create_subscription(req: Any, context: Any) -> Any:
        return await broker.create_subscription(req)

    async def get_subscription(req: Any, context: Any) -> Any:
        return broker.sub(req.subscription).pb

    async def update_subscription(req: Any, context: Any) -> Any:
        return await broker.update_subscription(req.subscription, list(req.update_mask.paths))

    async def list_subscriptions(req: Any, context: Any) -> Any:
        subs, token = broker.list_subscriptions(req.project, req.page_size, req.page_token)
        return ListSubscriptionsResponse(subscriptions=subs, next_page_token=token)

    async def delete_subscription(req: Any, context: Any) -> Any:
        await broker.delete_subscription(req.subscription)
        return Empty()

    async def modify_push_config(req: Any, context: Any) -> Any:
        await broker.modify_push_config(req.subscription, req.push_config)
        return Empty()

    async def pull(req: Any, context: Any) -> Any:
        remaining = context.time_remaining()
        wait = None if remaining is None else max(remaining - 0.5, 0.0)
        entries = await broker.pull(
            req.subscription, req.max_messages, req.return_immediately, wait
        )
        response = PullResponse()
        if entries:
            fill_received(response.received_messages, broker.sub(req.subscription), entries)
        return response

    async def acknowledge(req: Any, context: Any) -> Any:
        await broker.acknowledge(req.subscription, list(req.ack_ids))
        return Empty()

    async def modify_ack_deadline(req: Any, context: Any) -> Any:
        broker.modify_ack_deadline(req.subscription, list(req.ack_ids), req.ack_deadline_seconds)
        return Empty()

    async def detach_subscription(req: Any, context: Any) -> Any:
        await broker.detach_subscription(req.subscription)
        return _pb("DetachSubscriptionResponse")()

    async def list_topic_snapshots(req: Any, context: Any) -> Any:
        names, token = paged(snapshots.topic_names(req.topic), req.page_size, req.page_token)
        return _pb("ListTopicSnapshotsResponse")(snapshots=names, next_page_token=token)

    async def create_snapshot(req: Any, context: Any) -> Any:
        return await snapshots.create(req)

    async def get_snapshot(req: Any, context: Any) -> Any:
        return snapshots.get(req.snapshot).pb

    async def update_snapshot(req: Any, context: Any) -> Any:
        return await snapshots.update(req.snapshot, list(req.update_mask.paths))

    async def list_snapshots(req: Any, context: Any) -> Any:
        names, token = paged(snapshots.names(req.project), req.page_size, req.page_token)
        found = [snapshots.get(name).pb for name in names]
        return _pb("ListSnapshotsResponse")(snapshots=found, next_page_token=token)

    async def delete_snapshot(req: Any, context: Any) -> Any:
        await snapshots.delete(req.snapshot)
        return Empty()

    async def set_iam_policy(req: Any, context: Any) -> Any:
        async with broker.admin:
            return await broker.iam.set(req.resource, req.policy, list(req.update_mask.paths))

    async def get_iam_policy(req: Any, context: Any) -> Any:
        return broker.iam.get(req.resource, req.options.requested_policy_version)

    async def test_iam_permissions(req: Any, context: Any) -> Any:
        granted = broker.iam.test(req.resource, list(req.permissions))
        caller = CALLER.get()
        if caller is not None and control.auth is not None:  # --require-auth: what it holds
            holds = control.auth.access.holds
            granted = [p for p in granted if holds(caller.member, p, req.resource)]
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=granted)

    async def seek(req: Any, context: Any) -> Any:
        await broker.seek(req.subscription, req)
        return _pb("SeekResponse")()

    async def streaming(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        caller = CALLER.get()
        expiry = None
        if caller is not None and control.auth is not None:
            expired = control.auth.streams_expired
            expiry = TokenExpiry(caller.expires, lambda: expired.update((caller.email,)))
        try:
            async for response in streaming_pull(broker, requests, expiry):
                yield response
        except BrokerError as exc:
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # never Python's own text as UNKNOWN
            _LOG.exception("StreamingPull failed")
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error in the relay broker.")

    publisher = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Publisher",
        control.gate(
            {
                "CreateTopic": _unary(create_topic, "Topic", "Topic"),
                "GetTopic": _unary(get_topic, "GetTopicRequest", "Topic"),
                "UpdateTopic": _unary(update_topic, "UpdateTopicRequest", "Topic"),
                "ListTopics": _unary(list_topics, "ListTopicsRequest", "ListTopicsResponse"),
                "ListTopicSubscriptions": _unary(
                    list_topic_subscriptions,
                    "ListTopicSubscriptionsRequest",
                    "ListTopicSubscriptionsResponse",
                ),
                "DeleteTopic": _unary(delete_topic, "DeleteTopicRequest", "Empty"),
                "Publish": _unary(publish, "PublishRequest", "PublishResponse"),
                "DetachSubscription": _unary(
                    detach_subscription, "DetachSubscriptionRequest", "DetachSubscriptionResponse"
                ),
                "ListTopicSnapshots": _unary(
                    list_topic_snapshots, "ListTopicSnapshotsRequest", "ListTopicSnapshotsResponse"
                ),
            }
        ),
    )
    subscriber = grpc.method_handlers_generic_handler(
        "google.pubsub.v1.Subscriber",
        control.gate(
            {
                "CreateSubscription": _unary(create_subscription, "Subscription", "Subscription"),
                "GetSubscription": _unary(
                    get_subscription, "GetSubscriptionRequest", "Subscription"
                ),
                "UpdateSubscription": _unary(
                    update_subscription, "UpdateSubscriptionRequest", "Subscription"
                ),
                "ListSubscriptions": _unary(
                    list_subscriptions, "ListSubscriptionsRequest", "ListSubscriptionsResponse"
                ),
                "DeleteSubscription": _unary(
                    delete_subscription, "DeleteSubscriptionRequest", "Empty"
                ),
                "ModifyPushConfig": _unary(modify_push_config, "ModifyPushConfigRequest", "Empty"),
                "Pull": _unary(pull, "PullRequest", "PullResponse"),
                "Acknowledge": _unary(acknowledge, "AcknowledgeRequest", "Empty"),
                "ModifyAckDeadline": _unary(
                    modify_ack_deadline, "ModifyAckDeadlineRequest", "Empty"
                ),
                "Seek": _unary(seek, "SeekRequest", "SeekResponse"),
                "CreateSnapshot": _unary(create_snapshot, "CreateSnapshotRequest", "Snapshot"),
                "GetSnapshot": _unary(get_snapshot, "GetSnapshotRequest", "Snapshot"),
                "UpdateSnapshot": _unary(update_snapshot, "UpdateSnapshotRequest", "Snapshot"),
                "ListSnapshots": _unary(
                    list_snapshots, "ListSnapshotsRequest", "ListSnapshotsResponse"
                ),
                "DeleteSnapshot": _unary(delete_snapshot, "DeleteSnapshotRequest", "Empty"),
                "StreamingPull": grpc.stream_stream_rpc_method_handler(
                    streaming,
                    request_deserializer=_pb("StreamingPullRequest").FromString,
                    response_serializer=_pb("StreamingPullResponse").SerializeToString,
                ),
            }
        ),
    )
    iam = grpc.method_handlers_generic_handler(
        "google.iam.v1.IAMPolicy",
        control.gate(
            {
                "SetIamPolicy": _unary(
                    set_iam_policy, iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy
                ),
                "GetIamPolicy": _unary(
                    get_iam_policy, iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy
                ),
                "TestIamPermissions": _unary(
                    test_iam_permissions,
                    iam_policy_pb2.TestIamPermissionsRequest,
                    iam_policy_pb2.TestIamPermissionsResponse,
                ),
            }
        ),
    )
    return [publisher, subscriber, iam, _schema_service(broker, control)]


def _schema_service(broker: Broker, control: Control) -> Any:
    """google.pubsub.v1.SchemaService over `broker.schemas`."""
    schemas = broker.schemas
    ListSchemasResponse = _pb("ListSchemasResponse")
    ListSchemaRevisionsResponse = _pb("ListSchemaRevisionsResponse")
    Empty = empty_pb2.Empty

    async def create_schema(req: Any, context: Any) -> Any:
        return await schemas.create(req)

    async def get_schema(req: Any, context: Any) -> Any:
        return schemas.get(req.name, req.view)

    async def list_schemas(req: Any, context: Any) -> Any:
        found, token = schemas.list_schemas(req.parent, req.view, req.page_size, req.page_token)
        return ListSchemasResponse(schemas=found, next_page_token=token)

    async def list_schema_revisions(req: Any, context: Any) -> Any:
        found, token = schemas.list_revisions(req.name, req.view, req.page_size, req.page_token)
        return ListSchemaRevisionsResponse(schemas=found, next_page_token=token)

    async def commit_schema(req: Any, context: Any) -> Any:
        return await schemas.commit(req.name, req.schema)

    async def rollback_schema(req: Any, context: Any) -> Any:
        return await schemas.rollback(req.name, req.revision_id)

    async def delete_schema_revision(req: Any, context: Any) -> Any:
        return await schemas.delete_revision(req.name)

    async def delete_schema(req: Any, context: Any) -> Any:
        await schemas.delete(req.name)
        return Empty()

    async def validate_schema(req: Any, context: Any) -> Any:
        await schemas.validate_schema(req.parent, req.schema)
        return _pb("ValidateSchemaResponse")()

    async def validate_message(req: Any, context: Any) -> Any:
        await schemas.validate_message(req)
        return _pb("ValidateMessageResponse")()

    return grpc.method_handlers_generic_handler(
        "google.pubsub.v1.SchemaService",
        control.gate(
            {
                "CreateSchema": _unary(create_schema, "CreateSchemaRequest", "Schema"),
                "GetSchema": _unary(get_schema, "GetSchemaRequest", "Schema"),
                "ListSchemas": _unary(list_schemas, "ListSchemasRequest", "ListSchemasResponse"),
                "ListSchemaRevisions": _unary(
                    list_schema_revisions,
                    "ListSchemaRevisionsRequest",
                    "ListSchemaRevisionsResponse",
                ),
                "CommitSchema": _unary(commit_schema, "CommitSchemaRequest", "Schema"),
                "RollbackSchema": _unary(rollback_schema, "RollbackSchemaRequest", "Schema"),
                "DeleteSchemaRevision": _unary(
                    delete_schema_revision, "DeleteSchemaRevisionRequest", "Schema"
                ),
                "DeleteSchema": _unary(delete_schema, "DeleteSchemaRequest", "Empty"),
                "ValidateSchema": _unary(
                    validate_schema, "ValidateSchemaRequest", "ValidateSchemaResponse"
                ),
                "ValidateMessage": _unary(
                    validate_message, "ValidateMessageRequest", "ValidateMessageResponse"
                ),
            }
        ),
    )
