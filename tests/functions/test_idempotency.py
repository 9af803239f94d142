"""Idempotency stores: first writer wins, duplicates get the stored result back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

from relay.functions import (
    FileIdempotencyStore,
    GcsIdempotencyStore,
    IdempotencyStore,
    MemoryIdempotencyStore,
)
from relay.protocol import Message

FIRST = Message(b'{"n":1}', {"ce-id": "r1", "content-type": "application/json"})
SECOND = Message(b'{"n":2}', {"ce-id": "r2"})


class FakeGcs:
    """Records every call and behaves like GCS for the calls relay makes (and only those)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)


class FakeBucket:
    def __init__(self, gcs: FakeGcs, name: str) -> None:
        self.gcs, self.name = gcs, name

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self.gcs, self.name, name)


class FakeBlob:
    def __init__(self, gcs: FakeGcs, bucket: str, name: str) -> None:
        self.gcs, self.bucket, self.name = gcs, bucket, name

    def download_as_bytes(self, **kwargs: Any) -> bytes:
        assert kwargs == {}, f"unexpected download arguments {kwargs}"
        with self.gcs.lock:
            self.gcs.calls.append(("download", self.bucket, self.name, kwargs))
            stored = self.gcs.objects.get((self.bucket, self.name))
        if stored is None:
            raise exceptions.NotFound(f"gs://{self.bucket}/{self.name}")
        return stored[0]

    def upload_from_string(self, data: bytes, **kwargs: Any) -> None:
        assert isinstance(data, bytes)
        # relay must never overwrite: every upload is a create-if-absent.
        assert kwargs == {"content_type": "application/json", "if_generation_match": 0}, kwargs
        with self.gcs.lock:
            self.gcs.calls.append(("upload", self.bucket, self.name, kwargs))
            if (self.bucket, self.name) in self.gcs.objects:
                raise exceptions.PreconditionFailed("generation mismatch")
            self.gcs.objects[(self.bucket, self.name)] = (data, kwargs["content_type"])


@pytest.fixture(params=["memory", "file", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> IdempotencyStore:
    if request.param == "memory":
        return MemoryIdempotencyStore()
    if request.param == "file":
        return FileIdempotencyStore(tmp_path / "results")
    return GcsIdempotencyStore("bucket", client=FakeGcs())


def test_first_writer_wins(store: IdempotencyStore) -> None:
    assert store.get("src\nid-1") is None
    assert store.put_if_absent("src\nid-1", FIRST) == FIRST
    assert store.put_if_absent("src\nid-1", SECOND) == FIRST
    assert store.get("src\nid-1") == FIRST
    assert store.get("src\nid-2") is None


def test_concurrent_writers_agree(store: IdempotencyStore) -> None:
    winners: list[Message] = []
    candidates = [Message(f'{{"n":{i}}}'.encode(), {"i": str(i)}) for i in range(8)]
    threads = [
        threading.Thread(target=lambda m=m: winners.append(store.put_if_absent("k", m)))
        for m in candidates
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(winners) == 8
    assert all(winner == winners[0] for winner in winners)
    assert store.get("k") == winners[0]


def test_gcs_store_calls() -> None:
    gcs = FakeGcs()
    store = GcsIdempotencyStore("results-bucket", prefix="idem/", client=gcs)
    assert store.get("a") is None
    store.put_if_absent("a", FIRST)
    assert store.put_if_absent("a", SECOND) == FIRST
    names = {name for _, _, name, _ in gcs.calls}
    assert len(names) == 1
    (name,) = names
    assert name.startswith("idem/")
    assert name.endswith(".json")
    assert len(name) == len("idem/") + 69
    assert [call[0] for call in gcs.calls] == ["download", "upload", "upload", "download"]
    assert all(call[1] == "results-bucket" for call in gcs.calls)
    assert gcs.objects[("results-bucket", name)][1] == "application/json"


def test_file_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileIdempotencyStore(tmp_path)
    store.put_if_absent("x", FIRST)
    store.put_if_absent("x", SECOND)
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]
