"""Blob stores: local directory, Cloud Storage (a recording fake client), scheme dispatch."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound, PreconditionFailed

from relay.protocol import (
    BlobStore,
    BlobStores,
    DataRefError,
    DataRefRefusedError,
    GcsBlobStore,
    LimitError,
    LocalBlobStore,
    blob_store_for,
    from_message,
    new_request,
    to_binary,
    to_structured,
)


def test_local_put_get(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    uri = store.put("abc", b"data")
    assert uri == (tmp_path / "blobs" / "abc").as_uri()
    assert store.get(uri) == b"data"
    assert store.put("abc", b"data") == uri  # idempotent
    assert store.put("nested/key.bin", b"x") == (tmp_path / "blobs" / "nested" / "key.bin").as_uri()
    assert store.put("abc", b"dat2") == uri  # same size, other bytes: overwritten
    assert store.get(uri) == b"dat2"
    assert store.put("abc", b"other") == uri
    assert store.get(uri) == b"other"
    assert [p.name for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".tmp")] == []
    assert isinstance(store, BlobStore)


def test_local_content_addressed_put_skips_the_write(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = hashlib.sha256(b"payload").hexdigest()
    uri = store.put(key, b"payload")
    before = (tmp_path / key).stat().st_mtime_ns
    assert store.put(key, b"payload") == uri
    assert (tmp_path / key).stat().st_mtime_ns == before


def test_local_relative_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = LocalBlobStore("rel").put("k", b"1")
    assert uri == (tmp_path / "rel" / "k").as_uri()


@pytest.mark.parametrize("key", ["", "../escape", "a/../../b", "/abs", "sp ace", "a//b"])
def test_local_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(DataRefError):
        LocalBlobStore(tmp_path).put(key, b"x")


def test_local_get_errors(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "root")
    (tmp_path / "secret").write_bytes(b"s")
    for uri in [
        (tmp_path / "root" / "missing").as_uri(),
        (tmp_path / "secret").as_uri(),  # outside the root
        (tmp_path / "root" / ".." / "secret").as_uri(),
        "gs://bucket/x",
        "file://otherhost/x",
    ]:
        with pytest.raises(DataRefError) as info:
            store.get(uri)
        assert info.value.field == "dataref"


def test_local_unwritable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataRefError):
        LocalBlobStore(tmp_path / "file").put("k", b"x")


def test_blob_store_for(tmp_path: Path) -> None:
    local = blob_store_for(tmp_path.as_uri())
    assert isinstance(local, LocalBlobStore)
    assert local.root == tmp_path
    uri = local.put("k", b"v")
    assert blob_store_for(uri).get(uri) == b"v"  # a blob's own URI reads it
    gcs = blob_store_for("gs://bucket/some/prefix/")
    assert isinstance(gcs, GcsBlobStore)
    assert (gcs.bucket, gcs.prefix) == ("bucket", "some/prefix/")
    for bad in ["s3://b/k", "https://x/y", "relative/path", "gs:///nobucket", ""]:
        with pytest.raises(DataRefError):
            blob_store_for(bad)


# ---------------------------------------------------------------------------- Cloud Storage fake


class FakeBlob:
    def __init__(self, client: FakeClient, bucket: str, name: str) -> None:
        self.client, self.bucket, self.name = client, bucket, name

    def upload_from_string(
        self, data: bytes, content_type: str | None = None, if_generation_match: int | None = None
    ) -> None:
        assert isinstance(data, bytes)
        self.client.calls.append(("upload", self.bucket, self.name, content_type))
        if if_generation_match == 0 and (self.bucket, self.name) in self.client.objects:
            raise PreconditionFailed(
                "At least one of the pre-conditions you specified did not hold."
            )  # type: ignore[no-untyped-call]
        self.client.objects[(self.bucket, self.name)] = data

    def download_as_bytes(self, end: int | None = None) -> bytes:
        """Like google.cloud.storage's: `end` is the last byte's index (inclusive)."""
        self.client.calls.append(("download", self.bucket, self.name, None))
        try:
            data = self.client.objects[(self.bucket, self.name)]
            return data if end is None else data[: end + 1]
        except KeyError:
            raise NotFound(f"No such object: {self.bucket}/{self.name}") from None  # type: ignore[no-untyped-call]


class FakeBucket:
    def __init__(self, client: FakeClient, name: str) -> None:
        self.client, self.name = client, name

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self.client, self.name, name)


class FakeClient:
    """Records the calls GcsBlobStore makes on google.cloud.storage.Client and its objects."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str | None]] = []
        self.objects: dict[tuple[str, str], bytes] = {}

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)


def test_gcs_put_get() -> None:
    client = FakeClient()
    store = GcsBlobStore("my-bucket", "relay/blobs", client=client)
    uri = store.put("abc", b"payload")
    assert uri == "gs://my-bucket/relay/blobs/abc"
    assert store.get(uri) == b"payload"
    assert client.calls == [
        ("upload", "my-bucket", "relay/blobs/abc", "application/octet-stream"),
        ("download", "my-bucket", "relay/blobs/abc", None),
    ]
    assert GcsBlobStore("b", client=client).put("k", b"") == "gs://b/k"


def test_gcs_errors() -> None:
    client = FakeClient()
    store = GcsBlobStore("my-bucket", client=client)
    with pytest.raises(DataRefError) as info:
        store.get("gs://my-bucket/missing")
    assert "No such object" in str(info.value)
    assert client.calls == [("download", "my-bucket", "missing", None)]
    for uri in ["gs://other-bucket/x", "gs://my-bucket/", "file:///x"]:
        with pytest.raises(DataRefError):
            store.get(uri)
    assert len(client.calls) == 1  # refused before any call
    with pytest.raises(DataRefError):
        store.put("../x", b"")


def test_gcs_offload_round_trip() -> None:
    client = FakeClient()
    store = GcsBlobStore("relay-data", "offload", client=client)
    event = new_request(
        "dev.relay.example.echo",
        {"rows": list(range(1000))},
        source="s",
        reply_to="projects/relay-test/topics/results",
    )
    for encode in (to_binary, to_structured):
        message = encode(event, blob_store=store, offload_threshold=100)
        decoded = from_message(*message, blob_store=store)
        assert decoded.data == event.data
        assert decoded.dataref is not None
        digest = hashlib.sha256(b'{"rows":[' + ",".join(map(str, range(1000))).encode() + b"]}")
        assert decoded.dataref == f"gs://relay-data/offload/{digest.hexdigest()}"
    assert [c[0] for c in client.calls] == ["upload", "download", "upload", "download"]
    # the publish retry found the object and did not replace it
    assert len(client.objects) == 1


def test_gcs_content_addressed_put_only_creates() -> None:
    client = FakeClient()
    store = GcsBlobStore("b", client=client)
    key = hashlib.sha256(b"same").hexdigest()
    assert store.put(key, b"same") == store.put(key, b"same") == f"gs://b/{key}"
    assert [c[0] for c in client.calls] == ["upload", "upload"]
    assert client.objects == {("b", key): b"same"}


def test_gcs_client_is_lazy() -> None:
    before = {name for name in sys.modules if name.startswith("google.cloud.storage")}
    store = GcsBlobStore("b")
    assert repr(store) == "GcsBlobStore('b', '')"
    after = {name for name in sys.modules if name.startswith("google.cloud.storage")}
    assert after == before


# ---------------------------------------------------------------------- confinement (BlobStores)


def test_local_get_never_follows_links_or_reads_special_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"s")
    (root / "ok").write_bytes(b"fine")
    (root / "link").symlink_to(tmp_path / "secret")
    (root / "inner").symlink_to(root / "ok")
    (root / "sub" / "up").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    store = LocalBlobStore(root)
    assert store.get((root / "ok").as_uri()) == b"fine"
    for name in ["link", "inner", "sub/up/secret", "fifo", "sub"]:
        with pytest.raises(DataRefRefusedError):
            store.get(f"{root.as_uri()}/{name}")


def test_get_is_bounded_by_max_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    uri = store.put("k", b"12345")
    assert store.get(uri, max_bytes=5) == b"12345"
    with pytest.raises(LimitError) as big:
        store.get(uri, max_bytes=4)
    assert big.value.limit == 4
    client = FakeClient()
    gcs = GcsBlobStore("b", client=client)
    gcs_uri = gcs.put("k", b"12345")
    with pytest.raises(LimitError):
        gcs.get(gcs_uri, max_bytes=4)


def test_gcs_reads_only_under_its_prefix() -> None:
    client = FakeClient()
    store = GcsBlobStore("b", "in", client=client)
    client.objects[("b", "secret")] = b"s"
    for uri in ["gs://b/secret", "gs://b/in/../secret", "gs://b/in/%2E%2E/secret", "gs://b/inx/y",
                "gs://b/in/", "gs://b/in//x", "gs://c/in/x"]:  # fmt: skip
        assert not store.contains(uri)
        with pytest.raises(DataRefRefusedError):
            store.get(uri)
    assert client.calls == []
    assert store.contains("gs://b/in/x/y")


def test_blob_stores_read_inside_any_and_write_to_the_first(tmp_path: Path) -> None:
    first, second = LocalBlobStore(tmp_path / "a"), LocalBlobStore(tmp_path / "b")
    stores = BlobStores([first, second])
    uri = stores.put("k", b"v")
    assert uri == (tmp_path / "a" / "k").as_uri()
    other = second.put("k", b"w")
    assert (stores.get(uri), stores.get(other)) == (b"v", b"w")
    assert stores.writer is first
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "k").write_bytes(b"x")
    for refused in [(tmp_path / "c" / "k").as_uri(), "http://x/k", "s3://b/k", "gs://b/k", ""]:
        with pytest.raises(DataRefRefusedError):
            stores.get(refused)
    with pytest.raises(DataRefRefusedError, match="none is configured"):
        BlobStores().get(uri)
    with pytest.raises(DataRefError, match="no blob store is configured"):
        BlobStores().put("k", b"v")


def test_blob_stores_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stores = list(BlobStores.parse(f" gs://b/p/ , {tmp_path.as_uri()}/x ,rel,"))
    assert [repr(store) for store in stores] == [
        "GcsBlobStore('b', 'p/')",
        f"LocalBlobStore({str(tmp_path / 'x')!r})",
        f"LocalBlobStore({str(tmp_path / 'rel')!r})",
    ]
    assert not BlobStores.parse("")
    for bad in ["s3://b/p", "gs://", "file://host/x"]:
        with pytest.raises(DataRefError):
            BlobStores.parse(bad)


def test_check_envelope_runs_before_any_dataref_is_read(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    event = new_request(
        "dev.relay.example.echo",
        {"rows": list(range(100))},
        source="s",
        reply_to="projects/relay-test/topics/results",
    )
    message = to_binary(event, blob_store=store, offload_threshold=10)
    (blob,) = tmp_path.iterdir()
    blob.unlink()  # a read now fails: the check must come first

    class Refused(Exception):
        pass

    def refuse(envelope: object) -> None:
        raise Refused

    with pytest.raises(Refused):
        from_message(*message, blob_store=store, check_envelope=refuse)
    with pytest.raises(DataRefError):
        from_message(*message, blob_store=store)
