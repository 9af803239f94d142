"""The broker's logic: topics, subscriptions, publish, pull, acks, seek, dead letters, expiry.

State lives in memory (authoritative while running) and every change is written to the store;
responses are sent only after the change is committed. A request's change is checked whole and
committed to the store before memory shows it (administrator operations one at a time, under
`admin`), so a refused request or a failed write (a full disk) leaves memory as the store has it.
What the broker writes on its own (delivery counts, stream acks, retention, expiry, cleanup) is
posted: should that fail, the store keeps the older state and a restart delivers again. The gRPC
layer (`_grpc`) translates requests to calls on `Broker` and `BrokerError`s to status codes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from google.pubsub_v1 import types

from relay.broker._behaviour import Behaviour, Dice
from relay.broker._clock import Clock
from relay.broker._config import subscription_config, topic_config
from relay.broker._errors import (
    BrokerError,
    already_exists,
    failed_precondition,
    invalid,
    not_found,
)
from relay.broker._iam import IamPolicies
from relay.broker._limits import CheckedMessages, check_publish
from relay.broker._matching import TopicSubscriptions
from relay.broker._names import (
    DELETED_TOPIC,
    check_project,
    check_subscription,
    check_topic,
    project_of,
)
from relay.broker._push_tokens import PushTokens
from relay.broker._schemas import SchemaRegistry
from relay.broker._snapshots import Snapshots
from relay.broker._state import (
    DEAD_LETTERING,
    DONE,
    READY,
    RESPONSE_MAX_MESSAGES,
    BatchRef,
    Consumer,
    Entry,
    StoredMessage,
    SubState,
    check_ack_deadline,
    parse_ack_ids,
)
from relay.broker._store import Statement, Store, StoreFailed, pack, unpack
from relay.broker._timers import Scheduler

__all__ = ["Broker", "TopicState", "detached", "paged"]

_LOG = logging.getLogger("relay.broker")

PubsubMessage: Any = types.PubsubMessage.pb()
Topic: Any = types.Topic.pb()
Subscription: Any = types.Subscription.pb()

_SQL_INSERT_BATCH = (
    "INSERT INTO batches (first_seq, last_seq, topic, publish_ns, body) VALUES (?, ?, ?, ?, ?)"
)
_SQL_INSERT_PENDING = "INSERT INTO pending (sub_id, seq) VALUES (?, ?)"
# Every seq of a request for one subscription, generated inside SQLite: one statement instead of
# one bound row per message (the writer thread holds the GIL while binding rows).
_SQL_INSERT_PENDING_RANGE = (
    "WITH RECURSIVE seqs(seq) AS (SELECT ?2 UNION ALL SELECT seq + 1 FROM seqs WHERE seq < ?3) "
    "INSERT INTO pending (sub_id, seq) SELECT ?1, seq FROM seqs"
)
_SQL_LAST_SEQ = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)"
_SQL_DELETE_BATCH = "DELETE FROM batches WHERE first_seq = ?"
_SQL_SUB_BODY = "UPDATE subscriptions SET body = ? WHERE id = ?"
_SQL_DROP_PENDING = "DELETE FROM pending WHERE sub_id = ?"
# Seek times become nanoseconds on the broker's clock, bound as SQLite's 64-bit integers (years
# 1677 to 2262); the range leaves room for the clock offset of `POST /control` (up to 10 years).
_MIN_SEEK_NS = -8_520_336_000 * 10**9  # 1700-01-01T00:00:00Z
_MAX_SEEK_NS = 8_867_491_199 * 10**9 + 999_999_999  # 2250-12-31T23:59:59.999999999Z
_GC_INTERVAL = 600.0
_EXPIRY_RETRY = 60.0  # seconds until an expiry whose deletion could not be stored is tried again
MAX_SUBSCRIPTIONS_PER_TOPIC = 10_000
_PULL_WAIT = 90.0


@dataclass(slots=True)
class TopicState:
    """A topic and the subscriptions attached to it."""

    topic_id: int
    name: str
    pb: Any
    retention_s: float | None
    subs: TopicSubscriptions
    schema: Any = None  # pb.schema_settings when messages are validated against a schema


def _merge(statements: list[Statement], sql: str, row: tuple[Any, ...]) -> None:
    """Append `row` to the statement for `sql` in `statements` (one executemany per SQL)."""
    for existing_sql, rows in statements:
        if existing_sql == sql and isinstance(rows, list):
            rows.append(row)
            return
    statements.append((sql, [row]))


class Broker:
    """All topics and subscriptions of one broker, with their durable store."""

    def __init__(
        self,
        data_dir: Path,
        *,
        push_concurrency: int = 32,
        fsync: bool = False,
        behaviour: Behaviour | None = None,
        reset_store: bool = False,
        push_tokens: PushTokens | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.push_tokens = push_tokens or PushTokens()
        self.store = Store(data_dir, fsync=fsync, reset=reset_store)
        self.push_concurrency = push_concurrency
        self.topics: dict[str, TopicState] = {}
        self.subs: dict[str, SubState] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.batches: dict[int, BatchRef] = {}  # stored batches with messages in memory
        self.last_seq = 0
        self._next_topic_id = 1
        self._next_sub_id = 1
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.clock = Clock(self.loop)
        self.scheduler = Scheduler(self.loop, self.clock)
        self.behaviour = behaviour or Behaviour()
        self.dice = Dice(self.behaviour.seed)
        self.closing = False
        # Held by every administrator operation that changes something, from its checks to its
        # commit: one sees the committed result of the other (store first, then memory).
        self.admin = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by the server once the push machinery exists: called when a sub's push config changes.
        self.on_push_change: Callable[[SubState], None] = lambda sub: None
        self.snapshots = Snapshots(self)
        self.iam = IamPolicies(self.store)
        self.schemas = SchemaRegistry(self.store, self.topics, self.iam, self.admin)
        self.iam.exists.update(
            topics=self.topics.__contains__,
            subscriptions=self.subs.__contains__,
            snapshots=self.snapshots.by_name.__contains__,
            schemas=self.schemas.exists,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the store into memory (before serving) and start the writer thread; a store
        that cannot be read raises StoreUnusable naming the file."""
        try:
            self._load()
        except (sqlite3.DatabaseError, DecodeError) as exc:
            self.store.close_sync()
            raise self.store.damaged(exc) from None
        self.store.start()
        self._spawn(self._collect_garbage())
        for sub in self.subs.values():
            self._arm_expiry(sub)
            self._arm_retention(sub)

    def _load(self) -> None:
        state = self.store.load()
        self.schemas.load()
        self.last_seq = state.last_seq
        for topic_id, name, body in state.topics:
            pb = Topic.FromString(body)
            schema = pb.schema_settings if pb.HasField("schema_settings") else None
            self.topics[name] = TopicState(
                topic_id, name, pb, topic_config(pb, stored=True), TopicSubscriptions(), schema
            )
            self._next_topic_id = max(self._next_topic_id, topic_id + 1)
        by_id: dict[int, SubState] = {}
        for sub_id, name, topic, start_seq, body in state.subscriptions:
            pb = Subscription.FromString(body)
            try:
                config = subscription_config(pb, stored=True)
            except BrokerError:
                _LOG.exception("stored subscription %s is invalid; skipped", name)
                continue
            sub = SubState(self, sub_id, name, topic, start_seq, pb, config)
            self.subs[name] = sub
            by_id[sub_id] = sub
            self._next_sub_id = max(self._next_sub_id, sub_id + 1)
            owner = self.topics.get(topic)
            if owner is not None and not pb.detached:
                owner.subs.attach(sub)
        pending = self.store.pending_rows()
        self._load_messages(sorted({seq for _, seq, _, _ in pending}))
        messages = self.messages
        for sub_id, seq, attempts, acked in pending:
            owning_sub = by_id.get(sub_id)
            msg = messages.get(seq)
            if owning_sub is None or msg is None:
                continue  # a row a crash left behind; swept below
            if acked:
                owning_sub.add_acked(msg)
            else:
                owning_sub.add(msg, attempts)
        self.snapshots.load()
        self.iam.load()

    def _load_messages(self, needed: list[int]) -> None:
        """Read the batches holding the `needed` seqs (sorted) and keep those messages."""
        index = 0
        for first, last, topic, publish_ns in self.store.batch_index():
            while index < len(needed) and needed[index] < first:
                index += 1  # pending rows without a batch: nothing to deliver
            start = index
            while index < len(needed) and needed[index] <= last:
                index += 1
            if start == index:
                continue
            bodies = unpack(self.store.batch_body(first))
            batch = BatchRef(first)
            self.batches[first] = batch
            for seq in needed[start:index]:
                offset = seq - first
                if offset >= len(bodies):
                    continue
                body = bodies[offset]
                key = PubsubMessage.FromString(body).ordering_key
                self.messages[seq] = StoredMessage(seq, topic, body, publish_ns, key, batch)

    async def close(self) -> None:
        """Stop timers and background tasks, commit what is queued and close the store."""
        self.closing = True
        self.scheduler.close()
        for sub in self.subs.values():
            for consumer in list(sub.consumers) + list(sub.waiters):
                consumer.closed = True
                consumer.wake()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def set_behaviour(self, behaviour: Behaviour) -> None:
        """Switch what Google-allowed behaviour the broker shows (a new seed restarts the dice)."""
        if behaviour.seed != self.behaviour.seed:
            self.dice = Dice(behaviour.seed)
        self.behaviour = behaviour

    def advance(self, seconds: float) -> None:
        """Move the broker's clock forward: leases, backoffs, expiry and retention come due."""
        self.clock.advance(seconds)
        self.scheduler.rearm()

    # -- Host protocol (used by SubState) --------------------------------------------------------

    def post(self, statements: list[Statement]) -> None:
        """Write without waiting for the commit."""
        self.store.post(statements)

    def release_message(self, msg: StoredMessage, statements: list[Statement]) -> None:
        """No subscription needs `msg` any more: forget it; once its whole batch is released,
        delete the batch unless its topic retains messages."""
        if self.messages.get(msg.seq) is msg:
            del self.messages[msg.seq]
        batch = msg.batch
        batch.live -= 1
        if batch.live > 0:
            return
        if self.batches.get(batch.first_seq) is batch:
            del self.batches[batch.first_seq]
        topic = self.topics.get(msg.topic)
        if (topic is None or not topic.retention_s) and msg.topic not in self.snapshots.by_topic:
            _merge(statements, _SQL_DELETE_BATCH, (batch.first_seq,))

    def dead_letter(self, sub: SubState, entry: Entry) -> None:
        """Forward a message that reached max_delivery_attempts, then ack it on `sub`."""
        self._spawn(self._dead_letter(sub, entry))

    async def _dead_letter(self, sub: SubState, entry: Entry) -> None:
        target = sub.config.dead_letter_topic
        topic = self.topics.get(target or "")
        if topic is None:
            _LOG.warning(
                "dead-letter topic %s of %s does not exist; redelivering", target, sub.name
            )
            sub.redeliver(entry, max(sub.backoff(entry.attempts), 1.0))
            return
        source = PubsubMessage.FromString(entry.msg.body)
        forwarded = PubsubMessage(data=source.data, ordering_key=source.ordering_key)
        forwarded.attributes.update(source.attributes)
        forwarded.attributes.update(
            {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(entry.attempts),
                "CloudPubSubDeadLetterSourceSubscription": sub.name.rsplit("/", 1)[-1],
                "CloudPubSubDeadLetterSourceSubscriptionProject": project_of(sub.name),
                "CloudPubSubDeadLetterSourceTopicPublishTime": _rfc3339(
                    source.publish_time.seconds * 1_000_000_000 + source.publish_time.nanos
                ),
            }
        )
        try:
            checked = CheckedMessages([forwarded.SerializeToString()], [forwarded.ordering_key])
            await self._publish(topic, [forwarded], checked)
        except Exception as exc:
            if isinstance(exc, StoreFailed):
                _LOG.error("dead-lettering to %s failed (%s); redelivering", target, exc)
            else:
                _LOG.exception("dead-lettering to %s failed; redelivering", target)
            if entry.state == DEAD_LETTERING:
                sub.redeliver(entry, max(sub.backoff(entry.attempts), 1.0))
            return
        if sub.deleted or entry.state != DEAD_LETTERING:
            return
        statements: list[Statement] = []
        sub.ack_entry(entry, statements)
        self.store.post(statements)

    # -- topics ----------------------------------------------------------------------------------

    def topic(self, name: str) -> TopicState:
        """The topic called `name`, or NOT_FOUND."""
        topic = self.topics.get(check_topic(name))
        if topic is None:
            raise not_found("topic", name)
        return topic

    async def create_topic(self, pb: Any) -> Any:
        """CreateTopic."""
        async with self.admin:
            name = check_topic(pb.name)
            if name in self.topics:
                raise already_exists("topic", name)
            retention = topic_config(pb)
            schema = self.schemas.topic_schema(name, pb, None)
            topic_id = self._next_topic_id
            self._next_topic_id += 1
            await self.store.submit(
                [
                    (
                        "INSERT INTO topics (id, name, body) VALUES (?, ?, ?)",
                        [(topic_id, name, pb.SerializeToString())],
                    )
                ],
                what=f"the new topic {name}",
            )
            self.topics[name] = TopicState(
                topic_id, name, pb, retention, TopicSubscriptions(), schema
            )
        return pb

    async def update_topic(self, pb: Any, paths: list[str]) -> Any:
        """UpdateTopic: copy the fields named in the update mask."""
        async with self.admin:
            return await self._update_topic(pb, paths)

    async def _update_topic(self, pb: Any, paths: list[str]) -> Any:
        topic = self.topic(pb.name)
        if not paths:
            raise invalid("The update_mask must name at least one field to update.")
        updated = Topic()
        updated.CopyFrom(topic.pb)
        for path in paths:
            field, _, sub = path.partition(".")
            if field == "name" or field not in Topic.DESCRIPTOR.fields_by_name:
                raise invalid(f"Invalid update_mask path: {path!r}.")
            if field == "schema_settings" and sub:  # e.g. schema_settings.first_revision_id
                if sub not in updated.schema_settings.DESCRIPTOR.fields_by_name:
                    raise invalid(f"Invalid update_mask path: {path!r}.")
                _copy_field(updated.schema_settings, pb.schema_settings, sub)
                continue
            _copy_field(updated, pb, field)
        retention = topic_config(updated)
        schema = self.schemas.topic_schema(topic.name, updated, topic.schema)
        await self.store.submit(
            [
                (
                    "UPDATE topics SET body = ? WHERE id = ?",
                    [(updated.SerializeToString(), topic.topic_id)],
                )
            ],
            what=f"the update of the topic {topic.name}",
        )
        topic.schema = schema
        topic.retention_s = retention
        topic.pb = updated
        return updated

    def list_topics(self, project: str, page_size: int, page_token: str) -> tuple[list[Any], str]:
        """ListTopics, sorted by name, paged by the last name returned."""
        project_id = check_project(project)
        prefix = f"projects/{project_id}/topics/"
        names = sorted(n for n in self.topics if n.startswith(prefix))
        page, token = paged(names, page_size, page_token)
        return [self.topics[n].pb for n in page], token

    def list_topic_subscriptions(
        self, topic_name: str, page_size: int, page_token: str
    ) -> tuple[list[str], str]:
        """ListTopicSubscriptions."""
        topic = self.topic(topic_name)
        return paged(sorted(topic.subs), page_size, page_token)

    async def delete_topic(self, name: str) -> None:
        """DeleteTopic: its subscriptions and snapshots stay, attached to `_deleted-topic_`."""
        async with self.admin:
            topic = self.topic(name)
            statements: list[Statement] = [("DELETE FROM topics WHERE id = ?", [(topic.topic_id,)])]
            self.iam.drop_statement(topic.name, statements)
            held = topic.name in self.snapshots.by_topic
            self.snapshots.topic_deleted_statements(topic.name, statements)
            moved = []
            for sub in topic.subs.values():
                body = Subscription()
                body.CopyFrom(sub.pb)
                body.topic = DELETED_TOPIC
                moved.append((DELETED_TOPIC, body.SerializeToString(), sub.sub_id))
            if moved:
                statements.append(
                    ("UPDATE subscriptions SET topic = ?, body = ? WHERE id = ?", moved)
                )
            await self.store.submit(statements, what=f"the deletion of the topic {topic.name}")
            del self.topics[topic.name]
            self.iam.forget(topic.name)
            self.snapshots.topic_deleted(topic.name)
            for sub in topic.subs.values():
                sub.pb.topic = DELETED_TOPIC
                sub.topic = DELETED_TOPIC
        if held:
            self.sweep(topic.name)

    # -- subscriptions ---------------------------------------------------------------------------

    def sub(self, name: str) -> SubState:
        """The subscription called `name`, or NOT_FOUND."""
        sub = self.subs.get(check_subscription(name))
        if sub is None:
            raise not_found("subscription", name)
        return sub

    async def create_subscription(self, pb: Any) -> Any:
        """CreateSubscription."""
        async with self.admin:
            return await self._create_subscription(pb)

    async def _create_subscription(self, pb: Any) -> Any:
        name = check_subscription(pb.name)
        check_topic(pb.topic)
        if name in self.subs:
            raise already_exists("subscription", name)
        if pb.detached:
            raise invalid("A subscription cannot be created detached; use DetachSubscription.")
        topic = self.topic(pb.topic)
        if len(topic.subs) >= MAX_SUBSCRIPTIONS_PER_TOPIC:
            raise BrokerError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"The topic {topic.name} already has {MAX_SUBSCRIPTIONS_PER_TOPIC} subscriptions, "
                "the maximum.",
            )
        config = subscription_config(pb)
        self.push_tokens.check(pb.push_config)
        if config.dead_letter_topic and config.dead_letter_topic not in self.topics:
            raise not_found("topic", config.dead_letter_topic)
        sub_id = self._next_sub_id
        self._next_sub_id += 1
        start_seq = self.last_seq
        await self.store.submit(
            [
                (
                    "INSERT INTO subscriptions (id, name, topic, start_seq, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(sub_id, name, topic.name, start_seq, pb.SerializeToString())],
                )
            ],
            what=f"the new subscription {name}",
        )
        sub = SubState(self, sub_id, name, topic.name, start_seq, pb, config)
        self.subs[name] = sub
        topic.subs.attach(sub)
        self._arm_expiry(sub)
        self._arm_retention(sub)
        if config.push_endpoint:
            self.on_push_change(sub)
        return pb

    async def update_subscription(self, pb: Any, paths: list[str]) -> Any:
        """UpdateSubscription: change the fields named in the mask (filter/ordering are fixed)."""
        async with self.admin:
            return await self._update_subscription(pb, paths)

    async def _update_subscription(self, pb: Any, paths: list[str]) -> Any:
        sub = self.sub(pb.name)
        if not paths:
            raise invalid("The update_mask must name at least one field to update.")
        updated = Subscription()
        updated.CopyFrom(sub.pb)
        for path in paths:
            field = path.split(".")[0]
            if field in ("name", "topic", "filter", "enable_message_ordering", "detached"):
                raise invalid(f"The field {field!r} of a subscription cannot be updated.")
            if field not in Subscription.DESCRIPTOR.fields_by_name:
                raise invalid(f"Invalid update_mask path: {path!r}.")
            _copy_field(updated, pb, field)
        await self._replace_config(sub, updated)
        return updated

    async def modify_push_config(self, name: str, push_config: Any) -> None:
        """ModifyPushConfig."""
        async with self.admin:
            sub = self.sub(name)
            updated = Subscription()
            updated.CopyFrom(sub.pb)
            updated.push_config.CopyFrom(push_config)
            await self._replace_config(sub, updated)

    async def _replace_config(self, sub: SubState, updated: Any) -> None:
        config = subscription_config(updated)
        push_changed = updated.push_config != sub.pb.push_config
        if push_changed:  # a stored one that the rules refuse is not pushed to (`_pusher`)
            self.push_tokens.check(updated.push_config)
        if config.dead_letter_topic and config.dead_letter_topic not in self.topics:
            raise not_found("topic", config.dead_letter_topic)
        await self.store.submit(
            [(_SQL_SUB_BODY, [(updated.SerializeToString(), sub.sub_id)])],
            what=f"the update of the subscription {sub.name}",
        )
        sub.pb = updated
        sub.config = config
        self._arm_expiry(sub)
        self._arm_retention(sub)
        if push_changed or config.push_endpoint:
            self.on_push_change(sub)
        sub.notify()

    def list_subscriptions(
        self, project: str, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        """ListSubscriptions."""
        project_id = check_project(project)
        prefix = f"projects/{project_id}/subscriptions/"
        names = sorted(n for n in self.subs if n.startswith(prefix))
        page, token = paged(names, page_size, page_token)
        return [self.subs[n].pb for n in page], token

    async def delete_subscription(self, name: str) -> None:
        """DeleteSubscription: its unacked messages go with it."""
        async with self.admin:
            await self._drop_subscription(self.sub(name), "the deletion of")

    async def _drop_subscription(self, sub: SubState, what: str) -> None:
        """Delete `sub` from the store, then from memory (its messages' cleanup is posted)."""
        statements: list[Statement] = [
            ("DELETE FROM subscriptions WHERE id = ?", [(sub.sub_id,)]),
            (_SQL_DROP_PENDING, [(sub.sub_id,)]),
        ]
        self.iam.drop_statement(sub.name, statements)
        await self.store.submit(statements, what=f"{what} the subscription {sub.name}")
        del self.subs[sub.name]
        topic = self.topics.get(sub.topic)
        if topic is not None:
            topic.subs.detach(sub.name)
        sub.close()
        self.dice.forget(sub.name)
        self.iam.forget(sub.name)
        cleanup: list[Statement] = []
        self._drop_messages(sub, cleanup)
        self.store.post(cleanup)
        if sub.config.push_endpoint:
            self.on_push_change(sub)

    def _drop_messages(self, sub: SubState, statements: list[Statement]) -> None:
        """Forget every message of `sub` (unacked and retained), once it takes no new ones; stale
        references go inert. Its pending rows are deleted again: publishes queued while that
        deletion was committed added some."""
        statements.append((_SQL_DROP_PENDING, [(sub.sub_id,)]))
        for entry in sub.entries.values():
            entry.state = DONE
        for msg in [e.msg for e in sub.entries.values()] + list(sub.acked.values()):
            msg.refs -= 1
            if msg.refs <= 0:
                self.release_message(msg, statements)
        sub.entries.clear()
        sub.acked.clear()
        sub.ready.clear()
        sub.keys.clear()

    async def detach_subscription(self, name: str) -> None:
        """DetachSubscription: "All messages retained in the subscription are dropped. Subsequent
        Pull and StreamingPull requests will return FAILED_PRECONDITION. If the subscription is a
        push subscription, pushes to the endpoint will stop." It stays, with `detached` set."""
        async with self.admin:
            sub = self.sub(name)
            if sub.pb.detached:
                return
            body = Subscription()
            body.CopyFrom(sub.pb)
            body.detached = True
            await self.store.submit(
                [
                    (_SQL_SUB_BODY, [(body.SerializeToString(), sub.sub_id)]),
                    (_SQL_DROP_PENDING, [(sub.sub_id,)]),
                ],
                what=f"the detachment of the subscription {sub.name}",
            )
            topic = self.topics.get(sub.topic)
            if topic is not None:
                topic.subs.detach(sub.name)
            sub.pb.detached = True
            cleanup: list[Statement] = []
            self._drop_messages(sub, cleanup)
            self.store.post(cleanup)
            for consumer in list(sub.consumers) + list(sub.waiters):
                consumer.wake()  # open streams end with FAILED_PRECONDITION

    # -- publish ---------------------------------------------------------------------------------

    async def publish(self, topic_name: str, messages: Any) -> list[str]:
        """Publish: returns the message ids once the messages are committed."""
        topic = self.topic(topic_name)
        checked = check_publish(topic_name, messages)
        if topic.schema is not None:
            checked = self.schemas.validate_publish(topic.schema, messages, checked)
        return await self._publish(topic, messages, checked)

    async def _publish(
        self, topic: TopicState, messages: Any, checked: CheckedMessages
    ) -> list[str]:
        """Store and deliver checked `messages`.

        `publish_ns` is on the broker's clock (message ages, retention, Seek); the publish_time
        stamped into the messages is the real time of the same instant.
        """
        offset_ns = self.clock.offset_ns
        publish_ns = time.time_ns() + offset_ns
        first = self.last_seq + 1
        self.last_seq += len(messages)
        subs = topic.subs
        ids = [str(seq) for seq in range(first, self.last_seq + 1)]
        keep = bool(len(subs)) or bool(topic.retention_s) or topic.name in self.snapshots.by_topic
        statements: list[Statement] = [(_SQL_LAST_SEQ, [(self.last_seq,)])]
        stored: list[StoredMessage] = []
        if keep:
            # message_id (field 3) and publish_time (field 4) appended to the publisher's bytes:
            # protobuf reads concatenated fields as one message, so nothing is re-serialized.
            stamp = PubsubMessage(
                publish_time=_timestamp(publish_ns - offset_ns)
            ).SerializeToString()
            name = topic.name
            batch = BatchRef(first)
            full = [
                body + b"\x1a%c%b%b" % (len(message_id), message_id, stamp)
                for body, message_id in zip(
                    checked.bodies,
                    [b"%d" % seq for seq in range(first, self.last_seq + 1)],
                    strict=True,
                )
            ]
            stored = [
                StoredMessage(seq, name, body, publish_ns, key, batch)
                for seq, key, body in zip(
                    range(first, self.last_seq + 1), checked.ordering_keys, full, strict=True
                )
            ]
            statements.append(
                (_SQL_INSERT_BATCH, [(first, self.last_seq, name, publish_ns, pack(full))])
            )
            matched: list[tuple[SubState, list[StoredMessage]]] = []
            ranges: list[tuple[int, int, int]] = []  # subscriptions that take every message
            pending_rows: list[tuple[int, int]] = []
            for sub in subs.unfiltered.values():
                matched.append((sub, stored))
                ranges.append((sub.sub_id, first, self.last_seq))
            if len(subs) > len(subs.unfiltered):
                attributes = [dict(m.attributes) for m in messages]
                # most filtered subscriptions take none of a publish: only the others come back
                for sub, chosen in subs.filtered_matches(stored, attributes):
                    matched.append((sub, chosen))
                    sub_id = sub.sub_id
                    pending_rows.extend((sub_id, m.seq) for m in chosen)
            statements.append((_SQL_INSERT_PENDING_RANGE, ranges))
            statements.append((_SQL_INSERT_PENDING, pending_rows))
        count = len(messages)
        await self.store.submit(
            statements,
            what=f"the {count} message{'s' if count != 1 else ''} of this Publish (no message id "
            "was given out)",
        )
        if keep:
            self._deliver(stored, matched)
        return ids

    def _deliver(
        self, stored: list[StoredMessage], matched: list[tuple[SubState, list[StoredMessage]]]
    ) -> None:
        messages = self.messages
        for msg in stored:
            messages[msg.seq] = msg
        if stored:
            self.batches[stored[0].batch.first_seq] = stored[0].batch
        for sub, chosen in matched:
            if not sub.deleted:
                sub.add_published(chosen)
        cleanup: list[Statement] = []
        for msg in stored:
            if msg.refs == 0:
                self.release_message(msg, cleanup)
        if cleanup:
            self.store.post(cleanup)

    # -- pull and acks ---------------------------------------------------------------------------

    async def pull(
        self, name: str, max_messages: int, return_immediately: bool, wait: float | None
    ) -> list[Entry]:
        """Pull: lease up to `max_messages`; waits (push-woken) for the first unless told not to."""
        sub = self.sub(name)
        if max_messages <= 0:
            raise invalid("max_messages must be a positive integer.")
        if sub.pb.detached:
            raise detached(sub)
        sub.touch()
        consumer = Consumer(sub.config.ack_deadline, max_messages)
        try:
            behaviour = self.behaviour
            limit = behaviour.short_pull_deadline
            short = return_immediately or (wait is not None and wait < limit)
            rate = behaviour.short_pull_rate if short else behaviour.blocking_short_pull_rate
            if rate and sub.ready:
                cut = self._short_pull(sub, max_messages, rate)
                if cut is not None:
                    return sub.take(consumer, cut) if cut else []
            entries = sub.take(consumer, max_messages)
            if entries or return_immediately:
                return entries
            deadline = self.loop.time() + min(wait if wait is not None else _PULL_WAIT, _PULL_WAIT)
            while not entries and not sub.deleted and not self.closing:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    break
                consumer.event.clear()
                sub.waiters.add(consumer)
                try:
                    await asyncio.wait_for(consumer.event.wait(), remaining)
                except TimeoutError:
                    break
                finally:
                    sub.waiters.discard(consumer)
                entries = sub.take(consumer, max_messages)
            if sub.deleted:
                raise not_found("subscription", name)
            if sub.pb.detached:
                raise detached(sub)
            return entries
        finally:
            consumer.closed = True

    def _short_pull(self, sub: SubState, max_messages: int, rate: float) -> int | None:
        """Google may return fewer messages than are ready: how many this pull gets (None: all).

        With probability `rate`, k uniform in 0..n-1 of the n it would return (see _behaviour).
        """
        rng = self.dice.rng("short-pull", sub.name)
        if rng.random() >= rate:
            return None
        limit = min(max_messages, RESPONSE_MAX_MESSAGES)
        available = 0
        for entry in sub.ready:  # stale entries are skipped, as take() does
            if entry.state == READY:
                available += 1
                if available == limit:
                    break
        return rng.randrange(available) if available else None

    async def acknowledge(self, name: str, ack_ids: list[str]) -> None:
        """Acknowledge (unary): commits the acks, then applies them; returns once both are done
        (a failed commit leaves the messages unacked, in memory as in the store)."""
        sub = self.sub(name)
        if not ack_ids:
            raise invalid("No ack ids were given.")
        parsed = parse_ack_ids(ack_ids)
        sub.touch()
        rows = sub.ack_statement(parsed)
        committed: set[int] = set()
        if rows is not None:
            count = len(rows[1])
            await self.store.submit(
                [rows],
                what="the ack of 1 message (it stays unacked)"
                if count == 1
                else f"the acks of {count} messages (they stay unacked)",
            )
            committed = {seq for _, seq in rows[1]}
        cleanup: list[Statement] = []
        sub.ack(parsed, cleanup, committed)
        if cleanup:
            self.store.post(cleanup)

    def modify_ack_deadline(self, name: str, ack_ids: list[str], deadline: int) -> None:
        """ModifyAckDeadline (unary): extend leases or nack (0)."""
        sub = self.sub(name)
        if not ack_ids:
            raise invalid("No ack ids were given.")
        parsed = parse_ack_ids(ack_ids)
        sub.touch()
        sub.modify(parsed, check_ack_deadline(deadline))

    async def seek(self, name: str, request: Any) -> None:
        """Seek to a time (older messages count as acked, retained newer ones come back) or to a
        snapshot (`_snapshots`). Checked and committed before memory changes."""
        async with self.admin:
            sub = self.sub(name)
            if sub.pb.detached:
                raise detached(sub)
            if request.snapshot:
                await self.snapshots.seek(sub, request.snapshot)
                return
            if not request.HasField("time"):
                raise invalid("Seek needs a time (or a snapshot).")
            # A Seek time is real time, like the publish_time clients see; ages are on the clock.
            cutoff = _seek_ns(request.time) + self.clock.offset_ns
            replay = await self._replayable(sub, cutoff)
            older = [e.msg.seq for e in sub.older_than(cutoff)]
            if not sub.config.retain_acked:
                older += [seq for seq, m in sub.acked.items() if m.publish_ns < cutoff]
            newer = [seq for seq, m in sub.acked.items() if m.publish_ns >= cutoff]
            await self.store.submit(
                sub.settle_statements(older, newer + [seq for seq, *_ in replay]),
                what=f"the Seek of {sub.name}",
            )
            statements: list[Statement] = []  # what is committed already, and its cleanup
            sub.ack_older_than(cutoff, statements)
            back = [m for m in sub.acked.values() if m.publish_ns >= cutoff]
            back += [
                self.stored_message(*message)
                for message in replay
                if message[0] not in sub.entries and message[0] not in sub.acked
            ]
            sub.unack(back, statements)
            sub.touch()
            self.rearm_retention(sub)
            if statements:
                self.store.post(statements)

    async def _replayable(
        self, sub: SubState, cutoff: int
    ) -> list[tuple[int, str, bytes, int, str, int]]:
        """The topic-retained messages at/after `cutoff` that `sub` does not hold (and its filter
        takes), as `stored_message` arguments: "messages published to the topic in the last
        message_retention_duration are always available to subscribers ... any attached
        subscription [can] seek to a timestamp that is up to message_retention_duration in the
        past" (Topic): also those published before the subscription existed."""
        topic = self.topics.get(sub.topic)
        if topic is None or not topic.retention_s:
            return []
        since = max(cutoff, self.clock.wall_ns() - int(topic.retention_s * 1e9))
        predicate = sub.config.predicate
        found = []
        for first, publish_ns, blob in await self.store.retained_batches(topic.name, since, 0):
            for seq, body in enumerate(unpack(blob), start=first):
                if seq in sub.entries or seq in sub.acked:
                    continue
                pb = PubsubMessage.FromString(body)
                if predicate is not None and not predicate(dict(pb.attributes)):
                    continue  # never delivered to this subscription: not replayed either
                found.append((seq, topic.name, body, publish_ns, pb.ordering_key, first))
        return found

    def stored_message(
        self, seq: int, topic: str, body: bytes, publish_ns: int, ordering_key: str, first_seq: int
    ) -> StoredMessage:
        """The in-memory message of `seq`, made from its stored batch if no longer in memory."""
        msg = self.messages.get(seq)
        if msg is None:
            batch = self.batches.get(first_seq)
            if batch is None:
                batch = self.batches[first_seq] = BatchRef(first_seq)
            msg = StoredMessage(seq, topic, body, publish_ns, ordering_key, batch)
            self.messages[seq] = msg
        return msg

    # -- timers ----------------------------------------------------------------------------------

    def _arm_expiry(self, sub: SubState) -> None:
        sub.expiry_token += 1
        ttl = sub.config.expiration_ttl
        if ttl is not None:
            self.scheduler.at(sub.last_activity + ttl, self._check_expiry, sub, sub.expiry_token)

    def _check_expiry(self, sub: SubState, token: int) -> None:
        if not sub.deleted and token == sub.expiry_token and not self.closing:
            self._spawn(self._expire(sub, token))

    async def _expire(self, sub: SubState, token: int) -> None:
        """Delete `sub` if it has been idle for its TTL (as an administrator operation would)."""
        async with self.admin:
            ttl = sub.config.expiration_ttl
            if sub.deleted or token != sub.expiry_token or ttl is None:
                return
            if any(not c.closed for c in sub.consumers):
                sub.touch()  # open streams count as activity
            if self.clock.now() - sub.last_activity >= ttl - 0.001:
                try:
                    await self._drop_subscription(sub, "the expiry of")
                except StoreFailed as exc:
                    _LOG.error("%s; trying again in %g s", exc, _EXPIRY_RETRY)
                    self.scheduler.at(
                        self.clock.now() + _EXPIRY_RETRY, self._check_expiry, sub, token
                    )
                else:
                    _LOG.info("subscription %s expired after %gs without activity", sub.name, ttl)
                return
            self.scheduler.at(sub.last_activity + ttl, self._check_expiry, sub, token)

    def rearm_retention(self, sub: SubState) -> None:
        """Messages a Seek brought back may be older than the next retention sweep expects."""
        self._arm_retention(sub)

    def _arm_retention(self, sub: SubState) -> None:
        """Schedule the next retention sweep: when the oldest held message runs out."""
        sub.retention_token += 1
        retention = sub.config.retention_s
        oldest = min(
            (e.msg.publish_ns for e in sub.entries.values()),
            default=None,
        )
        oldest_acked = min((m.publish_ns for m in sub.acked.values()), default=None)
        candidates = [x for x in (oldest, oldest_acked) if x is not None]
        wall = self.clock.wall_ns() / 1e9
        due = min(candidates) / 1e9 + retention if candidates else wall + retention
        # At least 1 s apart, so a steady stream of expiring messages is swept in batches.
        when = self.clock.now() + max(due - wall, 1.0 if candidates else 0.0)
        self.scheduler.at(when, self._check_retention, sub, sub.retention_token)

    def _check_retention(self, sub: SubState, token: int) -> None:
        if sub.deleted or token != sub.retention_token:
            return
        cutoff = self.clock.wall_ns() - int(sub.config.retention_s * 1e9)
        statements: list[Statement] = []
        sub.drop_older_than(cutoff, statements)
        if statements:
            self.store.post(statements)
        self._arm_retention(sub)

    async def _collect_garbage(self) -> None:
        """Sweep the whole store once, then expire topic-retained messages every 10 minutes,
        with a full collection of Python's cyclic garbage (the broker's CLI turns off the
        automatic one, which a large in-memory backlog makes slow)."""
        everything = True
        while True:
            gc.collect()
            await self._sweep_store(everything=everything)
            everything = False
            await asyncio.sleep(_GC_INTERVAL)

    async def _sweep_store(
        self, *, everything: bool = False, sweep: set[str] | None = None
    ) -> None:
        """Delete the stored batches that nothing holds any more (see `Store.collect_garbage`)."""
        keep = {
            t.name: self.clock.wall_ns() - int(t.retention_s * 1e9)
            for t in self.topics.values()
            if t.retention_s
        }
        held_after, held_seqs = self.snapshots.holds()
        if keep or everything or held_after or sweep:
            await self.store.collect_garbage(
                keep,
                set(self.batches),
                everything=everything,
                held_after=held_after,
                held_seqs=held_seqs,
                sweep=sweep,
            )

    def sweep(self, topic: str) -> None:
        """A snapshot stopped holding `topic`'s messages: delete the batches nothing else holds."""
        if not self.closing:
            self._spawn(self._sweep_store(sweep={topic}))


def detached(sub: SubState) -> BrokerError:
    """FAILED_PRECONDITION for a pull, stream or seek on a detached subscription."""
    return failed_precondition(
        f"The subscription {sub.name} is detached from its topic: it receives no messages and "
        "Pull, StreamingPull and Seek fail."
    )


def paged(names: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """One page of sorted `names` and the token of the next (empty on the last page)."""
    if page_size < 0:
        raise invalid("page_size must not be negative.")
    size = page_size or 100
    start = 0
    if page_token:
        start = next((i for i, n in enumerate(names) if n > page_token), len(names))
    chunk = names[start : start + size]
    token = chunk[-1] if start + size < len(names) and chunk else ""
    return chunk, token


def _copy_field(target: Any, source: Any, field: str) -> None:
    """Set `field` of `target` to its value in `source` (an update-mask step)."""
    descriptor = target.DESCRIPTOR.fields_by_name[field]
    target.ClearField(field)
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        getattr(target, field).update(getattr(source, field))
    elif descriptor.is_repeated:
        getattr(target, field).extend(getattr(source, field))
    elif descriptor.message_type is not None:
        if source.HasField(field):
            getattr(target, field).CopyFrom(getattr(source, field))
    else:
        setattr(target, field, getattr(source, field))


def _seek_ns(time: Any) -> int:
    """A Seek time in nanoseconds since 1970, or INVALID_ARGUMENT before anything changes: the
    store keeps times as 64-bit nanoseconds, so the broker takes years 1700-2250."""
    ns = time.seconds * 1_000_000_000 + time.nanos
    if not 0 <= time.nanos < 1_000_000_000 or not _MIN_SEEK_NS <= ns <= _MAX_SEEK_NS:
        raise invalid(
            f"Invalid Seek time: seconds={time.seconds}, nanos={time.nanos}; the relay broker "
            f"takes times from {_rfc3339(_MIN_SEEK_NS)} to {_rfc3339(_MAX_SEEK_NS)} (nanoseconds "
            "since 1970 in 64 bits; nanos 0-999,999,999)."
        )
    return int(ns)


def _timestamp(publish_ns: int) -> Any:
    secs, nanos = divmod(publish_ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=secs, nanos=nanos)


def _rfc3339(publish_ns: int) -> str:
    secs, nanos = divmod(publish_ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{base}.{nanos // 1000:06d}Z"
