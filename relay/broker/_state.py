"""In-memory delivery state of one subscription: ready queue, leases, ordering keys, backoff.

Everything here runs on the event loop and never blocks: durable changes are returned as SQL
statements (or posted to the store) and delivery wakes waiting consumers through asyncio events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from relay.broker._behaviour import Behaviour, Dice
from relay.broker._clock import Clock
from relay.broker._errors import invalid, plain
from relay.broker._store import Statement
from relay.broker._timers import Scheduler

__all__ = [
    "BatchRef",
    "Consumer",
    "Entry",
    "Host",
    "StoredMessage",
    "SubConfig",
    "SubState",
    "ack_id_of",
    "check_ack_deadline",
    "parse_ack_id",
    "parse_ack_ids",
]

READY, DELAYED, LEASED, BLOCKED, DONE, DEAD_LETTERING = range(6)

# Caps of one Pull/StreamingPull response. The client's emulator channel keeps gRPC's default
# 4 MiB receive limit, so responses stay below it (a single bigger message still goes alone).
RESPONSE_MAX_MESSAGES = 1_000
RESPONSE_MAX_BYTES = 4 * 1024 * 1024 - 256 * 1024

_SQL_ATTEMPTS = "UPDATE pending SET attempts = ? WHERE sub_id = ? AND seq = ?"
_SQL_DELETE = "DELETE FROM pending WHERE sub_id = ? AND seq = ?"
_SQL_ACKED = "UPDATE pending SET acked = 1 WHERE sub_id = ? AND seq = ?"
_SQL_UNACKED = "INSERT OR REPLACE INTO pending (sub_id, seq, attempts, acked) VALUES (?, ?, ?, 0)"
# <seq>-<delivery attempt>: seqs are SQLite integers (at most 19 digits), attempts far fewer.
_ACK_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,10})")


class BatchRef:
    """A stored batch (the messages of one Publish call): how many of them are still held."""

    __slots__ = ("first_seq", "live")

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.live = 0


class StoredMessage:
    """A published message held in memory while any subscription still needs it.

    `body` is the serialized google.pubsub.v1.PubsubMessage (message_id and publish_time set):
    the same bytes as in the store, parsed again only when delivered. Creating one counts it
    as live in its batch; `Host.release_message` uncounts it.
    """

    __slots__ = ("batch", "body", "ordering_key", "publish_ns", "refs", "seq", "size", "topic")

    def __init__(
        self,
        seq: int,
        topic: str,
        body: bytes,
        publish_ns: int,
        ordering_key: str,
        batch: BatchRef,
    ) -> None:
        self.seq = seq
        self.topic = topic
        self.body = body
        self.size = len(body)
        self.publish_ns = publish_ns
        self.ordering_key = ordering_key
        self.refs = 0
        self.batch = batch
        batch.live += 1


class Entry:
    """One message in one subscription: its state, delivery count and current lease."""

    __slots__ = ("attempts", "deadline", "msg", "owner", "state")

    def __init__(self, msg: StoredMessage, attempts: int = 0) -> None:
        self.msg = msg
        self.attempts = attempts  # deliveries so far; also names the current delivery
        self.state = READY
        self.deadline = 0.0
        self.owner: Consumer | None = None


class Consumer:
    """Something messages are leased to: a StreamingPull stream, a Pull call or a push worker."""

    __slots__ = (
        "closed",
        "deadline_s",
        "event",
        "max_bytes",
        "max_messages",
        "outstanding",
        "outstanding_bytes",
        "receipt",
        "sends_receipts",
    )

    def __init__(self, deadline_s: float, max_messages: int = 0, max_bytes: int = 0) -> None:
        self.event = asyncio.Event()
        self.deadline_s = deadline_s
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.outstanding = 0
        self.outstanding_bytes = 0
        self.closed = False
        # The first entry of the last response sent, until the client confirms it got it (a
        # "receipt" ModifyAckDeadline, an ack or a nack); `sends_receipts` once a modack has.
        self.receipt: Entry | None = None
        self.sends_receipts = False

    def has_room(self, size: int) -> bool:
        """Whether one more message of `size` bytes fits in the flow-control limits."""
        if self.max_messages and self.outstanding >= self.max_messages:
            return False
        return not (
            self.max_bytes and self.outstanding and self.outstanding_bytes + size > self.max_bytes
        )

    def wake(self) -> None:
        """Wake the task waiting on this consumer."""
        self.event.set()

    def confirmed(self, entry: Entry, *, modack: bool) -> None:
        """The client modacked, acked or nacked `entry`: if it opened the last response, that
        response has arrived and the next may go. A modack of it marks a receipt-sending client."""
        if self.receipt is entry:
            self.receipt = None
            self.sends_receipts = self.sends_receipts or modack
            self.event.set()


def _confirm(entry: Entry, *, modack: bool) -> None:
    """The client acted on `entry` (an ack, a nack or a modack): tell the consumer holding it."""
    if entry.owner is not None:
        entry.owner.confirmed(entry, modack=modack)


class Host(Protocol):
    """What a subscription needs from the broker."""

    scheduler: Scheduler
    loop: asyncio.AbstractEventLoop
    clock: Clock
    behaviour: Behaviour
    dice: Dice

    def post(self, statements: list[Statement]) -> None: ...

    def release_message(self, msg: StoredMessage, statements: list[Statement]) -> None: ...

    def dead_letter(self, sub: SubState, entry: Entry) -> None: ...


@dataclass(frozen=True, slots=True)
class SubConfig:
    """The delivery settings of a subscription, derived from its protobuf."""

    ack_deadline: float
    predicate: Callable[[Mapping[str, str]], bool] | None
    ordered: bool
    retain_acked: bool
    retention_s: float
    dead_letter_topic: str | None
    max_attempts: int
    min_backoff: float | None  # None: no retry policy
    max_backoff: float
    push_endpoint: str
    expiration_ttl: float | None  # None: never expires
    exactly_once: bool = False


def ack_id_of(entry: Entry) -> str:
    """The ack id of the entry's current delivery: `<seq>-<delivery attempt>`.

    Delivery counts are stored, so ack ids stay distinct across broker restarts too.
    """
    return f"{entry.msg.seq}-{entry.attempts}"


def parse_ack_id(ack_id: str) -> tuple[int, int]:
    """(seq, delivery attempt) of an ack id; INVALID_ARGUMENT naming it (shortened) for anything
    else: ASCII digits only (str.isdigit() takes Arabic-Indic ones too), few enough for int()."""
    match = _ACK_ID.fullmatch(ack_id)
    if match is None:
        raise invalid(
            f"You have passed an invalid ack ID to the service (ack_id={plain(ack_id, 100)}); "
            "relay broker ack ids are <message id>-<delivery attempt> in ASCII digits."
        )
    return int(match[1]), int(match[2])


def check_ack_deadline(seconds: int) -> int:
    """`seconds` if ModifyAckDeadline takes it (0-600), else INVALID_ARGUMENT."""
    if not 0 <= seconds <= 600:
        raise invalid(
            f"Invalid ack deadline given: {seconds} seconds; it must be between 0 and 600."
        )
    return seconds


def parse_ack_ids(ack_ids: Iterable[str]) -> list[tuple[int, int]]:
    """Every ack id parsed, before anything is changed (one bad id refuses the request)."""
    return [parse_ack_id(ack_id) for ack_id in ack_ids]


class SubState:
    """Runtime state of one subscription."""

    def __init__(
        self,
        host: Host,
        sub_id: int,
        name: str,
        topic: str,
        start_seq: int,
        pb: Any,
        config: SubConfig,
    ) -> None:
        self.host = host
        self.sub_id = sub_id
        self.name = name
        self.topic = topic
        self.start_seq = start_seq
        self.pb = pb
        self.config = config
        self.entries: dict[int, Entry] = {}
        self.acked: dict[int, StoredMessage] = {}  # retained acked messages (for Seek)
        self.ready: deque[Entry] = deque()
        self.keys: dict[str, deque[Entry]] = {}
        self.waiters: set[Consumer] = set()
        self.consumers: set[Consumer] = set()  # open streams and push workers
        self.last_activity = host.clock.now()
        self.deleted = False
        self.expiry_token = 0  # bumped on every (re)arm: older timer items are ignored
        self.retention_token = 0

    # -- adding ----------------------------------------------------------------------------------

    def add(self, msg: StoredMessage, attempts: int = 0) -> None:
        """Take a newly published (or reloaded) message; call `notify()` after a batch."""
        entry = Entry(msg, attempts)
        self.entries[msg.seq] = entry
        msg.refs += 1
        if self.config.ordered and msg.ordering_key:
            queue = self.keys.get(msg.ordering_key)
            if queue is None:
                self.keys[msg.ordering_key] = queue = deque()
            queue.append(entry)
            if len(queue) > 1:
                entry.state = BLOCKED
                return
        self.ready.append(entry)

    def add_published(self, msgs: list[StoredMessage]) -> None:
        """Take newly published messages, in order, and wake the waiting consumers."""
        if self.config.ordered:
            for msg in msgs:
                self.add(msg)
        else:  # the same as add() for each, in bulk: this runs for every published message
            fresh = [Entry(msg) for msg in msgs]
            self.entries.update(zip([msg.seq for msg in msgs], fresh, strict=True))
            for msg in msgs:
                msg.refs += 1
            if self.host.behaviour.reorder_rate:
                fresh = self._hold_back(fresh)
            self.ready.extend(fresh)
        self.notify()

    def _hold_back(self, fresh: list[Entry]) -> list[Entry]:
        """Google delivers messages without an ordering guarantee in any order: hold some back
        for a moment so later ones overtake them (the behaviour's reorder_rate); returns the
        entries to queue now."""
        behaviour = self.host.behaviour
        rng = self.host.dice.rng("reorder", self.name)
        now = []
        for entry in fresh:
            delay = rng.uniform(0.0, behaviour.reorder_max_delay)
            if rng.random() < behaviour.reorder_rate and delay > 0:
                self.redeliver(entry, delay)  # queued when due
            else:
                now.append(entry)
        return now

    def add_acked(self, msg: StoredMessage) -> None:
        """Remember an acked message for Seek (retain_acked_messages)."""
        self.acked[msg.seq] = msg
        msg.refs += 1

    def notify(self) -> None:
        """Wake every consumer waiting for messages.

        Woken consumers stay in `waiters` until they run (they remove themselves), so `take` can
        leave a fair share of a burst to the others.
        """
        if self.ready and self.waiters:
            for consumer in self.waiters:
                consumer.wake()

    def touch(self) -> None:
        """Record subscriber activity (for the expiration policy)."""
        self.last_activity = self.host.clock.now()

    # -- leasing ---------------------------------------------------------------------------------

    def take(self, consumer: Consumer, limit: int = RESPONSE_MAX_MESSAGES) -> list[Entry]:
        """Lease up to `limit` ready messages to `consumer` within its flow-control limits."""
        ready = self.ready
        if not ready:
            return []
        others = len(self.waiters) - (consumer in self.waiters)
        if others > 0:  # consumers woken for the same messages get their share
            limit = min(limit, -(-len(ready) // (others + 1)))
        out: list[Entry] = []
        size_sum = 0
        while ready and len(out) < limit:
            entry = ready[0]
            if entry.state != READY:
                ready.popleft()
                continue
            size = entry.msg.size
            if not consumer.has_room(size) or (out and size_sum + size > RESPONSE_MAX_BYTES):
                break
            ready.popleft()
            size_sum += size
            entry.state = LEASED
            entry.attempts += 1
            entry.owner = consumer
            consumer.outstanding += 1
            consumer.outstanding_bytes += size
            out.append(entry)
        if out:
            deadline = self.host.clock.now() + consumer.deadline_s
            for entry in out:
                entry.deadline = deadline
            self.host.scheduler.at(deadline, self._check_leases, out)
            sub_id = self.sub_id
            self.host.post([(_SQL_ATTEMPTS, [(e.attempts, sub_id, e.msg.seq) for e in out])])
        return out

    def _release(self, entry: Entry) -> None:
        owner = entry.owner
        if owner is None:
            return
        entry.owner = None
        owner.outstanding -= 1
        owner.outstanding_bytes -= entry.msg.size
        if owner.receipt is entry:  # expired or taken back: nothing more to wait for
            owner.receipt = None
        if not owner.closed and self.ready:
            owner.wake()

    def _check_leases(self, entries: list[Entry]) -> None:
        now = self.host.clock.now() + 0.001
        for entry in entries:
            if entry.state == LEASED and entry.deadline <= now:
                self.retry(entry)

    # -- acks and nacks --------------------------------------------------------------------------

    def _ackable(self, seq: int) -> Entry | None:
        entry = self.entries.get(seq)
        if entry is None or entry.state == DONE or entry.state == DEAD_LETTERING:
            return None
        return entry

    def ack_statement(self, parsed: list[tuple[int, int]]) -> Statement | None:
        """The pending-table change `ack(parsed)` would make, changing nothing: a unary
        Acknowledge commits it first, so a failed write leaves memory as the store has it."""
        rows = [(self.sub_id, seq) for seq, _ in parsed if self._ackable(seq) is not None]
        if not rows:
            return None
        return (_SQL_ACKED if self.config.retain_acked else _SQL_DELETE, rows)

    def ack(
        self,
        parsed: list[tuple[int, int]],
        statements: list[Statement],
        committed: Collection[int] = (),
    ) -> None:
        """Acknowledge deliveries (parsed ack ids); append the durable changes to `statements`,
        but for the seqs in `committed` (their `ack_statement` rows) only what follows."""
        deleted: list[tuple[int, int]] = []
        sub_id = self.sub_id
        echo = self.host.behaviour.redeliver_acked_rate
        for seq, _attempt in parsed:
            entry = self._ackable(seq)
            if entry is None:
                continue
            _confirm(entry, modack=False)
            self._remove(entry)
            if seq not in committed:
                deleted.append((sub_id, seq))
            if echo:
                self._maybe_redeliver_acked(entry, echo)
            if self.config.retain_acked and seq not in self.acked:
                self.acked[seq] = entry.msg
            else:
                self._drop_ref(entry.msg, statements)
        if deleted:
            statements.append((_SQL_ACKED if self.config.retain_acked else _SQL_DELETE, deleted))
        if self.config.ordered:
            self.notify()  # the next message of an ordering key may be ready now

    def _maybe_redeliver_acked(self, entry: Entry, rate: float) -> None:
        """At-least-once: Google may deliver an acked message again (the behaviour's
        redeliver_acked_rate), never on an exactly-once subscription nor out of key order."""
        msg = entry.msg
        if self.config.exactly_once or (self.config.ordered and msg.ordering_key):
            return
        rng = self.host.dice.rng("redeliver-acked", self.name)
        if rng.random() >= rate:
            return
        msg.refs += 1  # held until the second delivery is queued (or the subscription is gone)
        delay = rng.uniform(*self.host.behaviour.redeliver_delay)
        self.host.scheduler.at(self.host.clock.now() + delay, self._redeliver_acked, msg, entry)

    def _redeliver_acked(self, msg: StoredMessage, acked: Entry) -> None:
        statements: list[Statement] = []
        if not self.deleted and msg.seq not in self.entries:
            self.add(msg, acked.attempts)  # a new delivery attempt, so a new ack id
            self.notify()
        self._drop_ref(msg, statements)
        if statements:
            self.host.post(statements)

    def ack_entry(self, entry: Entry, statements: list[Statement]) -> None:
        """Acknowledge one entry (dead-lettered or dropped), never retaining it."""
        if entry.state == DONE:
            return
        self._remove(entry)
        statements.append((_SQL_DELETE, [(self.sub_id, entry.msg.seq)]))
        self._drop_ref(entry.msg, statements)
        self.notify()

    def modify(self, parsed: list[tuple[int, int]], seconds: int) -> None:
        """ModifyAckDeadline (parsed ack ids): extend the leases, or nack them when `seconds` is
        0 (check it first with `check_ack_deadline`)."""
        entries = self.entries
        if seconds == 0:
            for seq, attempt in parsed:
                entry = entries.get(seq)
                if entry is not None and entry.state == LEASED and entry.attempts == attempt:
                    _confirm(entry, modack=False)
                    self.retry(entry)
            return
        deadline = self.host.clock.now() + seconds
        extended = []
        for seq, attempt in parsed:
            entry = entries.get(seq)
            if entry is not None and entry.state == LEASED and entry.attempts == attempt:
                entry.deadline = deadline
                extended.append(entry)
                _confirm(entry, modack=True)
        if extended:
            self.host.scheduler.at(deadline, self._check_leases, extended)

    def retry(self, entry: Entry) -> None:
        """A delivery failed (nack, expired lease, failed push): redeliver or dead-letter."""
        self._release(entry)
        config = self.config
        if config.dead_letter_topic and entry.attempts >= config.max_attempts:
            entry.state = DEAD_LETTERING
            self.host.dead_letter(self, entry)
            return
        self.redeliver(entry, self.backoff(entry.attempts))

    def redeliver(self, entry: Entry, delay: float) -> None:
        """Make the entry deliverable again after `delay` seconds."""
        if delay <= 0:
            entry.state = READY
            self.ready.append(entry)
            self.notify()
            return
        entry.state = DELAYED
        entry.deadline = self.host.clock.now() + delay
        self.host.scheduler.at(entry.deadline, self._undelay, entry)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before redelivering after `attempts` failed deliveries."""
        config = self.config
        doublings = min(max(attempts - 1, 0), 30)  # bounded: attempts can grow without limit
        if config.min_backoff is None:
            if config.push_endpoint:  # Google's push backoff: 100 ms doubling up to 60 s
                return float(min(0.1 * 2**doublings, 60.0))
            return 0.0
        return float(min(config.min_backoff * 2**doublings, config.max_backoff))

    def _undelay(self, entry: Entry) -> None:
        if entry.state == DELAYED and entry.deadline <= self.host.clock.now() + 0.001:
            entry.state = READY
            self.ready.append(entry)
            self.notify()

    def _remove(self, entry: Entry) -> None:
        """Take the entry out of every in-memory structure (acked, dropped or dead-lettered)."""
        self._release(entry)
        entry.state = DONE
        seq = entry.msg.seq
        del self.entries[seq]
        key = entry.msg.ordering_key
        if key and self.config.ordered:
            queue = self.keys.get(key)
            if queue:
                if queue[0] is entry:
                    queue.popleft()
                    if queue:
                        head = queue[0]
                        if head.state == BLOCKED:
                            head.state = READY
                            self.ready.append(head)
                else:
                    with contextlib.suppress(ValueError):
                        queue.remove(entry)
                if not queue:
                    del self.keys[key]

    def _drop_ref(self, msg: StoredMessage, statements: list[Statement]) -> None:
        msg.refs -= 1
        if msg.refs <= 0:
            self.host.release_message(msg, statements)

    # -- whole-subscription operations -----------------------------------------------------------

    def drop_older_than(self, cutoff_ns: int, statements: list[Statement]) -> None:
        """Drop unacked and retained messages published before `cutoff_ns` (retention, Seek)."""
        for entry in self.older_than(cutoff_ns):
            self._remove(entry)
            statements.append((_SQL_DELETE, [(self.sub_id, entry.msg.seq)]))
            self._drop_ref(entry.msg, statements)
        for seq, msg in [(s, m) for s, m in self.acked.items() if m.publish_ns < cutoff_ns]:
            del self.acked[seq]
            statements.append((_SQL_DELETE, [(self.sub_id, seq)]))
            self._drop_ref(msg, statements)
        self.notify()  # ordering keys may have moved on

    def older_than(self, cutoff_ns: int) -> list[Entry]:
        """The unacked entries published before `cutoff_ns` that a Seek or retention acks."""
        return [
            e
            for e in self.entries.values()
            if e.msg.publish_ns < cutoff_ns and e.state != DEAD_LETTERING
        ]

    def settle_statements(self, acked: list[int], unacked: list[int]) -> list[Statement]:
        """The pending-table change of acking the `acked` seqs and unacking the `unacked` ones,
        changing nothing: a Seek commits it before it changes memory."""
        sub_id = self.sub_id
        statements: list[Statement] = []
        if acked:
            sql = _SQL_ACKED if self.config.retain_acked else _SQL_DELETE
            statements.append((sql, [(sub_id, seq) for seq in acked]))
        if unacked:
            statements.append((_SQL_UNACKED, [(sub_id, seq, 0) for seq in unacked]))
        return statements

    def ack_older_than(self, cutoff_ns: int, statements: list[Statement]) -> None:
        """Seek: everything published before `cutoff_ns` counts as acknowledged."""
        if not self.config.retain_acked:
            self.drop_older_than(cutoff_ns, statements)
            return
        marked = []
        for entry in self.older_than(cutoff_ns):
            self._remove(entry)
            self.acked[entry.msg.seq] = entry.msg
            marked.append((self.sub_id, entry.msg.seq))
        if marked:
            statements.append((_SQL_ACKED, marked))
        self.notify()

    def ack_where(self, select: Callable[[Entry], bool], statements: list[Statement]) -> None:
        """Seek to a snapshot: the unacked messages `select` picks count as acknowledged."""
        chosen = [e for e in self.entries.values() if e.state != DEAD_LETTERING and select(e)]
        if not chosen:
            return
        retain = self.config.retain_acked
        for entry in chosen:
            self._remove(entry)
            if retain:
                self.acked[entry.msg.seq] = entry.msg
            else:
                self._drop_ref(entry.msg, statements)
        rows = [(self.sub_id, entry.msg.seq) for entry in chosen]
        statements.append((_SQL_ACKED if retain else _SQL_DELETE, rows))
        self.notify()

    def unack(self, msgs: list[StoredMessage], statements: list[Statement]) -> None:
        """Seek: make these messages (retained acked ones, or ones read back) unacked again."""
        rows = []
        for msg in sorted(msgs, key=lambda m: m.seq):
            if msg.seq in self.entries:
                continue
            if self.acked.pop(msg.seq, None) is not None:
                msg.refs -= 1
            self.add(msg)
            rows.append((self.sub_id, msg.seq, 0))
        if rows:
            statements.append((_SQL_UNACKED, rows))
        self.notify()

    def close(self) -> None:
        """The subscription was deleted: wake everyone so streams end with NOT_FOUND."""
        self.deleted = True
        for consumer in list(self.consumers) + list(self.waiters):
            consumer.wake()
        self.waiters.clear()
