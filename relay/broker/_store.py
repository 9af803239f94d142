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
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STORE_FILE",
    "LoadedState",
    "Statement",
    "Store",
    "StoreFailed",
    "StoreUnusable",
    "pack",
    "unpack",
]

_LOG = logging.getLogger("relay.broker.store")

STORE_FILE = "broker.sqlite3"
_SIDE_FILES = ("-wal", "-shm")  # SQLite's WAL and shared-memory index, named after the store
# Files a broker leaves in its data dir besides the store (`_oidc`): their presence without a
# usable store means the store was lost, not that the data dir is new.
_USED_MARKERS = ("oidc-key.pem", "oidc-cert.pem")
_RESET_HINT = (
    "Restore it (with its -wal file, if there is one) from a copy, or start the broker with "
    "--reset-store to begin with an empty store (the old files are moved aside, not deleted)."
)
_WHAT_RESET = "topics, subscriptions, messages, snapshots, schemas and IAM policies"


class StoreUnusable(Exception):
    """The data dir's store cannot be used: missing although the dir was used, or damaged.

    The broker refuses to start (`relay broker` prints the message and exits 1)."""


class StoreFailed(Exception):
    """A write was not committed; `full` when SQLite said the disk (or the file) is full."""

    def __init__(self, path: Path, what: str, error: BaseException) -> None:
        self.path = path
        self.what = what
        self.full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        super().__init__(f"{what} was not stored in {path}: {error}")


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
    what: str = "a write the broker made on its own"


def _store_problem(path: Path) -> str | None:
    """Why the store at `path` is unusable for a data dir that was used before, or None: a
    missing or empty file would silently become a new, empty store."""
    if not path.exists():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    return None


def _used_before(data_dir: Path) -> str | None:
    """The file that shows a broker used `data_dir` before, or None for a new data dir."""
    names = (*_USED_MARKERS, *(STORE_FILE + suffix for suffix in _SIDE_FILES))
    return next((name for name in names if (data_dir / name).exists()), None)


def _move_aside(path: Path) -> Path | None:
    """Rename the store and its side files to `<store>.reset-<UTC time>` (+ -wal, -shm), so
    SQLite can still open the pair; returns the new store path (None: nothing was there)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.reset-{stamp}")
    moved = None
    for suffix in ("", *_SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
            moved = target
    return moved


def _private(path: Path) -> None:
    """Create `path` (if need be) readable by its owner only; SQLite gives its -wal and -shm
    files the store's permissions."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", *_SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), 0o600)


def _damaged(path: Path, error: BaseException) -> StoreUnusable:
    return StoreUnusable(f"the store {path} is damaged ({error}). {_RESET_HINT}")


class Store:
    """The SQLite file plus its single writer thread.

    A data dir that a broker used before (it holds the OIDC key, or SQLite's side files) must
    still hold its store: a missing, empty or damaged one raises StoreUnusable instead of
    starting empty; `reset` moves the old store aside and starts with an empty one.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = False, reset: bool = False) -> None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = data_dir / STORE_FILE
        if reset:
            moved = _move_aside(self.path)
            _LOG.warning(
                "--reset-store: starting with an empty store: the %s of the old one are not "
                "loaded%s",
                _WHAT_RESET,
                f"; it was moved to {moved} (delete it once you do not need it)"
                if moved
                else " (there was no store)",
            )
        marker = None if reset else _used_before(data_dir)
        if marker is not None:
            problem = _store_problem(self.path)
            if problem is not None:
                raise StoreUnusable(
                    f"the data dir {data_dir} was used by a relay broker before (it holds "
                    f"{marker}), but its store {self.path} {problem}: starting would silently "
                    f"lose every topic, subscription and message. {_RESET_HINT}"
                )
        _private(self.path)
        try:
            self._conn = self._open(fsync, used=marker is not None)
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from None
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        self._reader_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._committed = threading.Event()  # set by the writer, cleared by the checkpointer
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def _open(self, fsync: bool, *, used: bool) -> sqlite3.Connection:
        """Connect, check every page (`quick_check`), set the pragmas, create missing tables.

        A store without relay's tables is somebody else's file, or a lost one if `used`."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "topics" not in tables and (tables or used):
                raise sqlite3.DatabaseError("it holds no relay broker tables")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a broker crash (kill -9); FULL also an OS crash.
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def damaged(self, error: BaseException) -> StoreUnusable:
        """The StoreUnusable to raise when reading the store at start failed with `error`."""
        return _damaged(self.path, error)

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
        # A Publish whose write failed gave out no message id but used up its seqs, and a
        # subscription or snapshot created since stored one of them: never give those out again.
        tops = conn.execute(
            "SELECT (SELECT MAX(last_seq) FROM batches), "
            "(SELECT MAX(start_seq) FROM subscriptions), (SELECT MAX(start_seq) FROM snapshots)"
        ).fetchone()
        state.last_seq = max(row[0] if row else 0, *(top or 0 for top in tops))
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
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.OperationalError as exc:  # a full disk: try again later
                        _LOG.warning("broker store checkpoint failed: %s", exc)
                        self._committed.set()
        except sqlite3.Error:
            _LOG.exception("broker store checkpoint failed; SQLite's own takes over")
        finally:
            conn.close()

    # -- writes ----------------------------------------------------------------------------------

    def submit(self, statements: list[Statement], *, what: str) -> asyncio.Future[None]:
        """Queue statements for the next transaction; the future resolves once it is committed,
        or fails with StoreFailed saying `what` was not stored (e.g. "the topic T")."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Op(statements, future, loop, None, what))
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
                for op in batch:
                    try:
                        self._apply([op])
                    except Exception as exc:
                        self._failed(op, exc)
                    else:
                        self._resolve([op], None)
            else:
                self._resolve(batch, None)
            self._committed.set()

    def _failed(self, op: _Op, error: Exception) -> None:
        """Log a write that was rolled back (one line for SQLite's own errors: a full disk fails
        every write until there is room) and fail its future."""
        failure = StoreFailed(self.path, op.what, error)
        if isinstance(error, sqlite3.OperationalError):
            _LOG.error("%s", failure)
        else:
            _LOG.error("%s", failure, exc_info=error)
        self._resolve([op], failure)

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
            future.set_exception(error)
