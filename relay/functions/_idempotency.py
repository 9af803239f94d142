"""Idempotency stores: remember the result of each request id so a duplicate republishes it.

With a store, a redelivered request whose result is stored does not run the handler again: relay
publishes the stored result message (same CloudEvent id) once more. The first writer wins: a
result is stored with create-if-absent, and a concurrent duplicate that loses the race publishes
the winner's result. Only final outcomes are stored (succeeded, failed non-retryable).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from relay.protocol import Message


class IdempotencyStore(Protocol):
    """Stored results by request id."""

    def get(self, key: str) -> Message | None:
        """The stored result message for `key`, or None."""
        ...

    def put_if_absent(self, key: str, message: Message) -> Message:
        """Store `message` unless `key` already has one; return the message that is stored."""
        ...


def _encode(key: str, message: Message) -> bytes:
    return json.dumps(
        {
            "key": key,
            "data": base64.b64encode(message.data).decode("ascii"),
            "attributes": dict(message.attributes),
        },
        separators=(",", ":"),
    ).encode("utf-8")


def _decode(raw: bytes) -> Message:
    document = json.loads(raw)
    return Message(base64.b64decode(document["data"]), dict(document["attributes"]))


def _object_name(key: str) -> str:
    """A fixed-length, path-safe name for any request id."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class MemoryIdempotencyStore:
    """In-process store for tests and single-instance runs (lost on restart)."""

    def __init__(self) -> None:
        self._results: dict[str, Message] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Message | None:
        """The stored result for `key`, or None."""
        with self._lock:
            return self._results.get(key)

    def put_if_absent(self, key: str, message: Message) -> Message:
        """Store unless present; return what is stored."""
        with self._lock:
            return self._results.setdefault(key, message)


class FileIdempotencyStore:
    """One file per request id under `root`; create-if-absent with an atomic hard link."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / f"{_object_name(key)}.json"

    def get(self, key: str) -> Message | None:
        """The stored result for `key`, or None."""
        try:
            return _decode(self._path(key).read_bytes())
        except FileNotFoundError:
            return None

    def put_if_absent(self, key: str, message: Message) -> Message:
        """Write to a temp file, then link it into place: the link fails if another won."""
        target = self._path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_encode(key, message))
            try:
                os.link(tmp, target)
            except FileExistsError:
                stored = self.get(key)
                return stored if stored is not None else message
            return message
        finally:
            os.unlink(tmp)


class GcsIdempotencyStore:
    """Results as GCS objects `gs://bucket/<prefix><sha256(id)>.json`, created with
    if_generation_match=0 (fails if the object exists): the first writer wins across instances.

    Give the bucket a lifecycle rule (e.g. delete after 7 days) so old results expire.
    `client` is a google.cloud.storage.Client (created lazily when None).
    """

    def __init__(
        self, bucket: str, prefix: str = "relay-idempotency/", *, client: Any = None
    ) -> None:
        self.bucket_name = bucket
        self.prefix = prefix
        self._client = client
        self._lock = threading.Lock()

    def _blob(self, key: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # import_module: google.cloud.storage has no type information for mypy
                    storage: Any = importlib.import_module("google.cloud.storage")
                    self._client = storage.Client()
        name = f"{self.prefix}{_object_name(key)}.json"
        return self._client.bucket(self.bucket_name).blob(name)

    def get(self, key: str) -> Message | None:
        """Download the stored result, or None when the object does not exist."""
        from google.api_core import exceptions

        try:
            raw = self._blob(key).download_as_bytes()
        except exceptions.NotFound:
            return None
        return _decode(raw)

    def put_if_absent(self, key: str, message: Message) -> Message:
        """Create the object only if absent; on a lost race return the stored winner."""
        from google.api_core import exceptions

        try:
            self._blob(key).upload_from_string(
                _encode(key, message), content_type="application/json", if_generation_match=0
            )
        except exceptions.PreconditionFailed:
            stored = self.get(key)
            return stored if stored is not None else message
        return message
