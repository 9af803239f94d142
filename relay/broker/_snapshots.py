"""Snapshots and Seek to a snapshot, as Google documents them.

"A snapshot retains the unacknowledged messages of the source subscription at the time of
creation of the snapshot, and any messages published to the topic after the snapshot is created"
(replay-overview). So a snapshot is its backlog (the seqs unacked in the source subscription once
CreateSnapshot completes) plus everything its topic gets above `start_seq`. It holds those
messages in the store, not in memory: their batches outlive the subscriptions' acks (the store's
garbage collection counts snapshots as holders) and Seek reads them back. Its lifetime is
"7 days - (age of oldest unacked message in the subscription)", refused below 1 hour
(Snapshot.expire_time). When its topic is deleted its topic reads `_deleted-topic_` and it holds
nothing more (no subscription can seek to it then).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2
from google.pubsub_v1 import types

from relay.broker._errors import already_exists, failed_precondition, invalid, not_found
from relay.broker._labels import check_labels
from relay.broker._names import DELETED_TOPIC, check_project, check_snapshot, project_of
from relay.broker._state import DEAD_LETTERING, SubState
from relay.broker._store import Statement, unpack

if TYPE_CHECKING:
    from relay.broker._core import Broker

__all__ = ["LIFETIME_NS", "MIN_LIFETIME_NS", "SnapshotState", "Snapshots"]

Snapshot: Any = types.Snapshot.pb()
PubsubMessage: Any = types.PubsubMessage.pb()

LIFETIME_NS = 7 * 24 * 3600 * 1_000_000_000
MIN_LIFETIME_NS = 3600 * 1_000_000_000

_SQL_INSERT = (
    "INSERT INTO snapshots (name, topic, start_seq, expire_ns, body) VALUES (?, ?, ?, ?, ?)"
)
_SQL_INSERT_MESSAGE = "INSERT INTO snapshot_messages (snapshot, seq) VALUES (?, ?)"
_SQL_BODY = "UPDATE snapshots SET topic = ?, body = ? WHERE name = ?"
_SQL_DELETE = "DELETE FROM snapshots WHERE name = ?"
_SQL_DELETE_MESSAGES = "DELETE FROM snapshot_messages WHERE snapshot = ?"


@dataclass(slots=True)
class SnapshotState:
    """One snapshot: what it holds and its protobuf (None while CreateSnapshot runs)."""

    name: str
    topic: str
    start_seq: int  # every message of the topic above this seq is held
    backlog: set[int]  # seqs at or below start_seq that were unacked in the source subscription
    pb: Any
    expire_ns: int


class Snapshots:
    """Every snapshot of the broker; `by_topic` is what holds messages (creating ones included)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.by_name: dict[str, SnapshotState] = {}
        self.by_topic: dict[str, dict[str, SnapshotState]] = {}
        self._creating: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the stored snapshots (at start) and arm their expiry."""
        store = self.broker.store
        backlogs: dict[str, set[int]] = {}
        for name, seq in store.read("SELECT snapshot, seq FROM snapshot_messages"):
            backlogs.setdefault(name, set()).add(seq)
        rows = store.read("SELECT name, topic, start_seq, expire_ns, body FROM snapshots")
        for name, topic, start_seq, expire_ns, body in rows:
            backlog = backlogs.get(name, set())
            pb = Snapshot.FromString(body)
            snap = SnapshotState(name, topic, start_seq, backlog, pb, expire_ns)
            self.by_name[name] = snap
            self._hold(snap)
            self._arm(snap)

    def holds(self) -> tuple[dict[str, int], set[int]]:
        """What the snapshots keep in the store: topic -> lowest start_seq, and backlog seqs."""
        after = {
            topic: min(snap.start_seq for snap in snaps.values())
            for topic, snaps in self.by_topic.items()
        }
        seqs: set[int] = set()
        for snaps in self.by_topic.values():
            for snap in snaps.values():
                seqs |= snap.backlog
        return after, seqs

    def topic_deleted_statements(self, topic: str, statements: list[Statement]) -> None:
        """What DeleteTopic writes for the topic's snapshots (changing nothing yet)."""
        for snap in self.by_topic.get(topic, {}).values():
            if snap.pb is None:
                continue  # still being created: CreateSnapshot sees the topic gone
            body = Snapshot()
            body.CopyFrom(snap.pb)
            body.topic = DELETED_TOPIC
            statements.append((_SQL_BODY, [(DELETED_TOPIC, body.SerializeToString(), snap.name)]))
            statements.append((_SQL_DELETE_MESSAGES, [(snap.name,)]))

    def topic_deleted(self, topic: str) -> None:
        """DeleteTopic was committed: its snapshots stay, on `_deleted-topic_`, and hold
        nothing more."""
        for snap in self.by_topic.pop(topic, {}).values():
            snap.topic = DELETED_TOPIC
            snap.backlog = set()
            if snap.pb is not None:
                snap.pb.topic = DELETED_TOPIC

    # -- RPCs -------------------------------------------------------------------------------------

    async def create(self, request: Any) -> Any:
        """CreateSnapshot: capture the subscription's backlog; hold it and what follows."""
        async with self.broker.admin:
            return await self._create(request)

    async def _create(self, request: Any) -> Any:
        broker = self.broker
        name = check_snapshot(request.name) if request.name else ""
        sub = broker.sub(request.subscription)
        check_labels(request.labels)
        if not name:  # "the server will assign a random name ... on the same project"
            name = f"projects/{project_of(sub.name)}/snapshots/snapshot-{uuid.uuid4().hex}"
        _check_source(sub)
        if name in self.by_name or name in self._creating:
            raise already_exists("snapshot", name)
        snap = SnapshotState(name, sub.topic, broker.last_seq, set(), None, 0)
        self._creating.add(name)
        self._hold(snap)  # from now on nothing above start_seq is deleted
        try:
            # Publishes given a seq up to start_seq were queued before this: once it commits they
            # have all reached the subscription, so its backlog is complete.
            await broker.store.submit([], what=f"the snapshot {name}")
            if sub.deleted:
                raise not_found("subscription", sub.name)
            _check_source(sub)
            if snap.topic == DELETED_TOPIC:
                raise failed_precondition(f"The topic of {sub.name} was deleted meanwhile.")
            now = broker.clock.wall_ns()
            entries = sub.entries
            snap.backlog = {seq for seq in entries if seq <= snap.start_seq}
            oldest = min((entries[seq].msg.publish_ns for seq in snap.backlog), default=now)
            snap.expire_ns = oldest + LIFETIME_NS
            if snap.expire_ns - now < MIN_LIFETIME_NS:
                raise failed_precondition(
                    f"The backlog of {sub.name} is too old: its oldest unacked message was "
                    f"published {(now - oldest) / 3.6e12:.1f} h ago, so the snapshot would expire "
                    "in less than 1 hour (a snapshot lives 7 days minus that age)."
                )
            pb = Snapshot(name=name, topic=snap.topic, expire_time=_timestamp(snap.expire_ns))
            pb.labels.update(request.labels)
            row = (name, snap.topic, snap.start_seq, snap.expire_ns, pb.SerializeToString())
            await broker.store.submit(
                [
                    (_SQL_INSERT, [row]),
                    (_SQL_INSERT_MESSAGE, [(name, seq) for seq in sorted(snap.backlog)]),
                ],
                what=f"the snapshot {name}",
            )
        except BaseException:
            self._creating.discard(name)
            self._release(snap)
            raise
        self._creating.discard(name)
        snap.pb = pb
        self.by_name[name] = snap
        self._arm(snap)
        return snap.pb

    def get(self, name: str) -> SnapshotState:
        """The snapshot called `name`, or NOT_FOUND."""
        snap = self.by_name.get(check_snapshot(name))
        if snap is None:
            raise not_found("snapshot", name)
        return snap

    async def update(self, pb: Any, paths: list[str]) -> Any:
        """UpdateSnapshot: only labels can change ("snapshots cannot be meaningfully modified
        after creation", the Go client's maintainers)."""
        async with self.broker.admin:
            return await self._update(pb, paths)

    async def _update(self, pb: Any, paths: list[str]) -> Any:
        snap = self.get(pb.name)
        if not paths:
            raise invalid("The update_mask must name at least one field to update.")
        for path in paths:
            field = path.split(".")[0]
            if field in ("name", "topic", "expire_time"):
                raise invalid(f"The field {field!r} of a snapshot cannot be updated.")
            if field != "labels":
                raise invalid(f"Invalid update_mask path: {path!r}.")
        check_labels(pb.labels)
        updated = Snapshot()
        updated.CopyFrom(snap.pb)
        updated.labels.clear()
        updated.labels.update(pb.labels)
        await self.broker.store.submit(
            [(_SQL_BODY, [(snap.topic, updated.SerializeToString(), snap.name)])],
            what=f"the update of the snapshot {snap.name}",
        )
        snap.pb = updated
        return updated

    def names(self, project: str) -> list[str]:
        """The names of a project's snapshots, sorted (ListSnapshots)."""
        prefix = f"projects/{check_project(project)}/snapshots/"
        return sorted(n for n in self.by_name if n.startswith(prefix))

    def topic_names(self, topic_name: str) -> list[str]:
        """The names of a topic's snapshots, sorted (ListTopicSnapshots)."""
        topic = self.broker.topic(topic_name)
        return sorted(n for n in self.by_topic.get(topic.name, {}) if n in self.by_name)

    async def delete(self, name: str) -> None:
        """DeleteSnapshot: "all messages retained in the snapshot are immediately dropped"."""
        async with self.broker.admin:
            snap = self.get(name)
            topic = snap.topic
            await self.broker.store.submit(
                self._drop_statements(snap), what=f"the deletion of the snapshot {snap.name}"
            )
            self._forget(snap)
        self.broker.sweep(topic)

    async def seek(self, sub: SubState, name: str) -> None:
        """Seek to a snapshot: the subscription's unacked messages become exactly what the
        snapshot holds (matching the subscription's filter); everything else counts as acked."""
        snap = self.get(name)
        _check_source(sub)
        if snap.topic == DELETED_TOPIC:
            raise failed_precondition(
                f"The topic of snapshot {name} was deleted: no subscription can seek to it."
            )
        if sub.topic != snap.topic:
            raise invalid(
                f"The subscription's topic ({sub.topic}) is different from that of the snapshot "
                f"({snap.topic})."
            )
        broker = self.broker
        start, backlog = snap.start_seq, snap.backlog
        rows = await broker.store.topic_batches(snap.topic, min(backlog, default=start + 1) - 1)
        if sub.deleted:
            raise not_found("subscription", sub.name)
        _check_source(sub)

        def held(seq: int) -> bool:
            return seq > start or seq in backlog

        replay = []
        predicate = sub.config.predicate
        for first, publish_ns, blob in rows:
            for seq, body in enumerate(unpack(blob), start=first):
                if not held(seq) or seq in sub.entries or seq in sub.acked:
                    continue
                pb = PubsubMessage.FromString(body)
                if predicate is not None and not predicate(dict(pb.attributes)):
                    continue  # never delivered to this subscription: not replayed either
                replay.append((seq, snap.topic, body, publish_ns, pb.ordering_key, first))
        # Committed first (what memory will show), then applied; the rows applied again go out
        # with the cleanup (the same values).
        acked = [
            e.msg.seq
            for e in sub.entries.values()
            if e.state != DEAD_LETTERING and not held(e.msg.seq)
        ]
        newer = [seq for seq in sub.acked if held(seq)]
        await broker.store.submit(
            sub.settle_statements(acked, newer + [seq for seq, *_ in replay]),
            what=f"the Seek of {sub.name} to the snapshot {snap.name}",
        )
        back = [msg for seq, msg in sub.acked.items() if held(seq)]
        back += [
            broker.stored_message(*message)
            for message in replay
            if message[0] not in sub.entries and message[0] not in sub.acked
        ]
        statements: list[Statement] = []
        sub.ack_where(lambda entry: not held(entry.msg.seq), statements)
        sub.unack(back, statements)
        sub.touch()
        broker.rearm_retention(sub)
        if statements:
            broker.store.post(statements)

    # -- internals --------------------------------------------------------------------------------

    def _hold(self, snap: SnapshotState) -> None:
        if snap.topic != DELETED_TOPIC:
            self.by_topic.setdefault(snap.topic, {})[snap.name] = snap

    def _release(self, snap: SnapshotState) -> None:
        held = self.by_topic.get(snap.topic)
        if held is not None and held.get(snap.name) is snap:
            del held[snap.name]
            if not held:
                del self.by_topic[snap.topic]

    def _drop_statements(self, snap: SnapshotState) -> list[Statement]:
        statements: list[Statement] = [
            (_SQL_DELETE_MESSAGES, [(snap.name,)]),
            (_SQL_DELETE, [(snap.name,)]),
        ]
        self.broker.iam.drop_statement(snap.name, statements)
        return statements

    def _forget(self, snap: SnapshotState) -> None:
        del self.by_name[snap.name]
        self._release(snap)
        self.broker.iam.forget(snap.name)

    def _arm(self, snap: SnapshotState) -> None:
        broker = self.broker
        delay = (snap.expire_ns - broker.clock.wall_ns()) / 1e9
        broker.scheduler.at(broker.clock.now() + max(delay, 0.0), self._expire, snap)

    def _expire(self, snap: SnapshotState) -> None:
        if self.by_name.get(snap.name) is not snap:
            return  # deleted (or deleted and created again) meanwhile
        if self.broker.clock.wall_ns() < snap.expire_ns - 1_000_000:
            self._arm(snap)
            return
        topic = snap.topic
        self.broker.store.post(self._drop_statements(snap))
        self._forget(snap)
        self.broker.sweep(topic)


def _check_source(sub: SubState) -> None:
    """A detached subscription, or one whose topic is gone, has no backlog to snapshot or seek."""
    if sub.pb.detached:
        raise failed_precondition(f"The subscription {sub.name} is detached from its topic.")
    if sub.topic == DELETED_TOPIC:
        raise failed_precondition(f"The topic of the subscription {sub.name} has been deleted.")


def _timestamp(ns: int) -> Any:
    secs, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=secs, nanos=nanos)
