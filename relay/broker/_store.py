"""Durable state of the broker in SQLite (WAL), written by one thread with group commit.

All writes go through `Store.submit` (awaitable: resolves once committed) or `Store.post`
(fire-and-forget, committed with the next batch). The writer thread drains every queued operation
into one transaction, so concurrent publishes share one commit. Reads happen once, at start
(`Store.load`); at run time the broker serves from memory and never queries SQLite.

Tables: topics, subscriptions (the protobuf as a blob), batches (the messages of one Publish
call, seqs first_seq..last_seq, as one blob of length-prefixed serialized PubsubMessages: one row
per request keeps the writer fast) and pending (one row per subscription and unacked message with
its delivery count; `acked=1` rows are acked messages kept for Seek when retain_acked_messages is
set), schemas and schema_revisions (one row per revision, in commit order; a deleted revision
keeps its row with a NULL definition, so the topics naming it still know where it stood).
Snapshots (`_snapshots`): snapshots plus snapshot_messages (the seqs of the backlog each one
captured); IAM policies (`_iam`): iam_policies, one serialized google.iam.v1.Policy per resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadedState", "Statement", "Store", "pack", "unpack"]

_LOG = logging.getLogger("relay.broker.store")

Statement = tuple[str, Sequence[Sequence[Any]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL, start_seq INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
    topic TEXT NOT NULL, publish_ns INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (sub_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sub_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schemas (name TEXT PRIMARY KEY, type INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schema_revisions (schema TEXT NOT NULL, ordinal INTEGER NOT NULL,
    revision_id TEXT NOT NULL, create_ns INTEGER NOT NULL, definition TEXT,
    compiled BLOB NOT NULL, PRIMARY KEY (schema, ordinal));
CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, topic TEXT NOT NULL,
    start_seq INTEGER NOT NULL, expire_ns INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_messages (snapshot TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (snapshot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS iam_policies (resource TEXT PRIMARY KEY, body BLOB NOT NULL);
"""


_LENGTH = struct.Struct(">I")

# WAL checkpoints run in a thread of their own (PASSIVE: they never block the writer), this often
# while there were commits. SQLite's automatic checkpoint would run inside a commit, fsync and
# all, and stall every Publish waiting on that commit (about 100 ms here, once every few seconds
# at 1,000 publishes/s); it stays on as a backstop at a size the checkpointer should never let
# the WAL reach.
_CHECKPOINT_SECONDS = 1.0
_AUTOCHECKPOINT_PAGES = 65_536


def pack(bodies: list[bytes]) -> bytes:
    """One blob of length-prefixed message bodies (a batch row)."""
    length = _LENGTH.pack
    return b"".join([length(len(body)) + body for body in bodies])


def unpack(blob: bytes) -> list[bytes]:
    """The message bodies of a batch blob, in order."""
    bodies = []
    view = memoryview(blob)
    offset = 0
    size = len(blob)
    while offset < size:
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        bodies.append(bytes(view[offset : offset + length]))
        offset += length
    return bodies


@dataclass
class LoadedState:
    """Everything read from the database at start."""

    topics: list[tuple[int, str, bytes]] = field(default_factory=list)
    subscriptions: list[tuple[int, str, str, int, bytes]] = field(default_factory=list)
    last_seq: int = 0


@dataclass(slots=True)
class _Op:
    statements: list[Statement]
    future: asyncio.Future[None] | None
    loop: asyncio.AbstractEventLoop | None
    call: Callable[[sqlite3.Connection], None] | None = None


class Store:
    """The SQLite file plus its single writer thread."""

    def __init__(self, data_dir: Path, *, fsync: bool = False) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "broker.sqlite3"
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a broker crash (kill -9); FULL also survives an OS crash.
        self._conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._conn.execute("PRAGMA cache_size=-65536")
        self._conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        self._conn.executescript(_SCHEMA)
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        self._reader_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._committed = threading.Event()  # set by the writer, cleared by the checkpointer
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # -- start -----------------------------------------------------------------------------------

    def load(self) -> LoadedState:
        """Read topics, subscriptions and the message sequence; drop rows no subscription owns."""
        conn = self._conn
        conn.execute("BEGIN")
        conn.execute("DELETE FROM pending WHERE sub_id NOT IN (SELECT id FROM subscriptions)")
        conn.execute("COMMIT")
        state = LoadedState()
        state.topics = list(conn.execute("SELECT id, name, body FROM topics ORDER BY id"))
        state.subscriptions = list(
            conn.execute("SELECT id, name, topic, start_seq, body FROM subscriptions ORDER BY id")
        )
        row = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        top = conn.execute("SELECT MAX(last_seq) FROM batches").fetchone()
        state.last_seq = max(row[0] if row else 0, top[0] or 0)
        return state

    def schema_rows(
        self,
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int, str, int, Any, bytes]]]:
        """(name, type) of every schema and (schema, ordinal, revision_id, create_ns, definition,
        compiled) of every revision, by ordinal (at start, before the writer runs)."""
        conn = self._conn
        schemas = list(conn.execute("SELECT name, type FROM schemas"))
        revisions = list(
            conn.execute(
                "SELECT schema, ordinal, revision_id, create_ns, definition, compiled "
                "FROM schema_revisions ORDER BY schema, ordinal"
            )
        )
        return schemas, revisions

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query (at start, before the writer runs)."""
        return list(self._conn.execute(sql, params))

    def pending_rows(self) -> list[tuple[int, int, int, int]]:
        """(sub_id, seq, attempts, acked) of every pending row, by seq."""
        return list(
            self._conn.execute("SELECT sub_id, seq, attempts, acked FROM pending ORDER BY seq")
        )

    def batch_index(self) -> list[tuple[int, int, str, int]]:
        """(first_seq, last_seq, topic, publish_ns) of every stored batch, by first_seq."""
        return list(
            self._conn.execute(
                "SELECT first_seq, last_seq, topic, publish_ns FROM batches ORDER BY first_seq"
            )
        )

    def batch_body(self, first_seq: int) -> bytes:
        """The blob of one batch (at start, before the writer runs)."""
        row = self._conn.execute(
            "SELECT body FROM batches WHERE first_seq = ?", (first_seq,)
        ).fetchone()
        return bytes(row[0]) if row else b""

    async def retained_batches(
        self, topic: str, since_ns: int, after_seq: int
    ) -> list[tuple[int, int, bytes]]:
        """(first_seq, publish_ns, blob) of `topic`'s batches published at/after `since_ns`."""

        def read() -> list[tuple[int, int, bytes]]:
            with self._reader_lock:
                return list(
                    self._reader.execute(
                        "SELECT first_seq, publish_ns, body FROM batches WHERE topic = ? "
                        "AND publish_ns >= ? AND last_seq > ? ORDER BY first_seq",
                        (topic, since_ns, after_seq),
                    )
                )

        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def topic_batches(self, topic: str, after_seq: int) -> list[tuple[int, int, bytes]]:
        """(first_seq, publish_ns, blob) of `topic`'s batches holding a seq above `after_seq`."""

        def read() -> list[tuple[int, int, bytes]]:
            with self._reader_lock:
                return list(
                    self._reader.execute(
                        "SELECT first_seq, publish_ns, body FROM batches WHERE topic = ? "
                        "AND last_seq > ? ORDER BY first_seq",
                        (topic, after_seq),
                    )
                )

        return await asyncio.get_running_loop().run_in_executor(None, read)

    def collect_garbage(
        self,
        keep_topics: dict[str, int],
        live: set[int],
        *,
        everything: bool,
        held_after: dict[str, int] | None = None,
        held_seqs: set[int] | None = None,
        sweep: set[str] | None = None,
    ) -> asyncio.Future[None]:
        """Delete batches nothing holds: no subscription, no snapshot, no topic's retention.

        `live` holds the first_seq of every batch with a message still in memory (a subscription
        needs it); `keep_topics` maps topic name -> oldest publish_ns still retained for it;
        snapshots hold `held_after` (topic -> the batches above that seq) and `held_seqs` (the
        seqs of their backlogs). With `everything` all topics are swept (at start: rows a crash
        or a deletion left behind), otherwise only the retaining ones, the snapshot-holding ones
        and those in `sweep` (the others lose their rows when the last message is acked). Runs
        in the writer thread, inside its transaction, so publishes queued later are never touched.
        """
        keep = list(keep_topics.items())
        alive = [(first,) for first in live]
        after = list((held_after or {}).items())
        seqs = [(seq,) for seq in held_seqs or ()]
        scoped = set(keep_topics) | set(held_after or ()) | (sweep or set())
        scope_topics = [(topic,) for topic in scoped]

        def collect(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (topic TEXT PRIMARY KEY, since INT)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS live (first_seq INTEGER PRIMARY KEY)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS held (topic TEXT PRIMARY KEY, above INT)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS held_seq (seq INTEGER PRIMARY KEY)")
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS scope (topic TEXT PRIMARY KEY)")
            for table in ("keep", "live", "held", "held_seq", "scope"):
                conn.execute(f"DELETE FROM {table}")
            conn.executemany("INSERT INTO keep VALUES (?, ?)", keep)
            conn.executemany("INSERT INTO live VALUES (?)", alive)
            conn.executemany("INSERT INTO held VALUES (?, ?)", after)
            conn.executemany("INSERT INTO held_seq VALUES (?)", seqs)
            conn.executemany("INSERT INTO scope VALUES (?)", scope_topics)
            scope = "" if everything else "topic IN (SELECT topic FROM scope) AND "
            conn.execute(
                f"DELETE FROM batches WHERE {scope}first_seq NOT IN (SELECT first_seq FROM live) "
                "AND publish_ns < COALESCE((SELECT since FROM keep "
                "WHERE keep.topic = batches.topic), 1 << 62) "
                "AND last_seq <= COALESCE((SELECT above FROM held "
                "WHERE held.topic = batches.topic), 1 << 62) "
                "AND NOT EXISTS (SELECT 1 FROM held_seq "
                "WHERE held_seq.seq BETWEEN batches.first_seq AND batches.last_seq)"
            )

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Op([], future, loop, collect))
        return future

    def start(self) -> None:
        """Start the writer thread; from now on only it touches the connection."""
        self._thread = threading.Thread(target=self._run, name="relay-broker-writer", daemon=True)
        self._thread.start()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="relay-broker-checkpointer", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL frames into the database file, off the commit path."""
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            while not self._closing.wait(_CHECKPOINT_SECONDS):
                if self._committed.is_set():
                    self._committed.clear()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            _LOG.exception("broker store checkpoint failed; SQLite's own takes over")
        finally:
            conn.close()

    # -- writes ----------------------------------------------------------------------------------

    def submit(self, statements: list[Statement]) -> asyncio.Future[None]:
        """Queue statements for the next transaction; the future resolves once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Op(statements, future, loop))
        return future

    def post(self, statements: list[Statement]) -> None:
        """Queue statements without waiting for their commit."""
        self._queue.put(_Op(statements, None, None))

    async def close(self) -> None:
        """Commit everything queued, stop the writer thread and close the database."""
        loop = asyncio.get_running_loop()
        if self._checkpointer is not None:
            self._closing.set()
            await loop.run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._thread is not None:
            self._queue.put(None)
            await loop.run_in_executor(None, self._thread.join)
            self._thread = None
        self._conn.close()
        self._reader.close()

    def close_sync(self) -> None:
        """Close without a running writer (start failed before `start`)."""
        self._conn.close()
        self._reader.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            batch: list[_Op] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
            while len(batch) < 20_000:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    continue
                batch.append(nxt)
            if not batch:
                continue
            try:
                self._apply(batch)
            except Exception:
                # One bad operation must not fail the others: redo them one by one.
                _LOG.warning("broker store batch failed; retrying its operations one by one")
                for op in batch:
                    try:
                        self._apply([op])
                    except Exception as exc:
                        _LOG.exception("broker store operation failed")
                        self._resolve([op], exc)
                    else:
                        self._resolve([op], None)
            else:
                self._resolve(batch, None)
            self._committed.set()

    def _apply(self, batch: list[_Op]) -> None:
        """Run `batch` in one transaction (rolled back if anything fails)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for op in batch:
                if op.call is not None:
                    op.call(conn)
                for sql, rows in op.statements:
                    if len(rows) == 1:
                        conn.execute(sql, rows[0])
                    elif rows:
                        conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _resolve(batch: list[_Op], error: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for op in batch:
            if op.future is not None and op.loop is not None:
                by_loop.setdefault(op.loop, []).append(op.future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(f"the broker store failed: {error}"))
