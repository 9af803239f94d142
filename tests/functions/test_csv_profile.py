"""The csv_profile example's pure parts: profiling and reading file:// URIs."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import pytest

from relay.functions import NonRetryableError
from relay.protocol import BlobStores, GcsBlobStore, LocalBlobStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def csv_profile() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "csv_profile_main", ROOT / "functions/csv_profile/main.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_counts_rows_columns_and_nulls(csv_profile: ModuleType) -> None:
    text = "id,name,score\n1,ann,3\n2,,\n3,bob\n\n4, ,5\n"
    assert csv_profile.profile(text) == {
        "rows": 4,
        "columns": ["id", "name", "score"],
        "nulls": {"id": 0, "name": 2, "score": 2},
    }


def test_profile_empty_and_delimiter(csv_profile: ModuleType) -> None:
    assert csv_profile.profile("") == {"rows": 0, "columns": [], "nulls": {}}
    assert csv_profile.profile("a;b\n1;\n", ";")["nulls"] == {"a": 0, "b": 1}


def test_read_text_file_uri(csv_profile: ModuleType, tmp_path: Path) -> None:
    allowed = BlobStores([LocalBlobStore(tmp_path)])
    path = tmp_path / "data set.csv"
    path.write_bytes("\ufeffa,b\n1,2\n".encode())
    assert csv_profile.read_text(path.as_uri(), allowed) == "a,b\n1,2\n"
    with pytest.raises(NonRetryableError) as missing:
        csv_profile.read_text((tmp_path / "nope.csv").as_uri(), allowed)
    assert missing.value.error_type == "NotFound"
    with pytest.raises(NonRetryableError) as other_scheme:
        csv_profile.read_text("http://example.com/x.csv", allowed)
    assert other_scheme.value.error_type == "NotAllowed"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(NonRetryableError) as bad:
        csv_profile.read_text(path.as_uri(), allowed)
    assert bad.value.error_type == "BadCsv"


def _refused(csv_profile: ModuleType, uri: str, allowed: BlobStores) -> str:
    with pytest.raises(NonRetryableError) as refused:
        csv_profile.read_text(uri, allowed)
    assert refused.value.error_type == "NotAllowed"
    return str(refused.value)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        f"file:///proc/{os.getpid()}/environ",
        "file:///dev/zero",
        "file://otherhost/etc/passwd",
    ],
)
def test_files_outside_the_sources_are_refused(
    csv_profile: ModuleType, tmp_path: Path, uri: str
) -> None:
    message = _refused(csv_profile, uri, BlobStores([LocalBlobStore(tmp_path)]))
    assert "CSV_PROFILE_SOURCES" in message


def test_no_sources_configured_refuses_every_file(csv_profile: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    assert "none is configured" in _refused(csv_profile, path.as_uri(), BlobStores())


def test_links_and_dot_dot_never_leave_the_root(csv_profile: ModuleType, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret.csv"
    (root / "sub").mkdir(parents=True)
    outside.write_text("password\nhunter2\n")
    (root / "link.csv").symlink_to(outside)
    (root / "sub" / "back").symlink_to(tmp_path)
    (root / "inside.csv").write_text("a\n1\n")
    (root / "inner-link.csv").symlink_to(root / "inside.csv")
    allowed = BlobStores([LocalBlobStore(root)])
    for uri in [
        (root / "link.csv").as_uri(),
        (root / "sub" / "back" / "secret.csv").as_uri(),
        f"{root.as_uri()}/../secret.csv",
        f"{root.as_uri()}/sub/%2E%2E/%2E%2E/secret.csv",
        (root / "inner-link.csv").as_uri(),  # links are never followed, even inside
    ]:
        _refused(csv_profile, uri, allowed)
    assert csv_profile.read_text((root / "inside.csv").as_uri(), allowed) == "a\n1\n"


def test_a_fifo_is_refused_without_hanging(csv_profile: ModuleType, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    started = time.monotonic()
    message = _refused(csv_profile, fifo.as_uri(), BlobStores([LocalBlobStore(tmp_path)]))
    assert "not a regular file" in message
    assert time.monotonic() - started < 1.0


def test_a_file_larger_than_the_limit_is_refused_unread(
    csv_profile: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_profile, "MAX_BYTES", 10)
    path = tmp_path / "big.csv"
    path.write_text("a\n" + "1\n" * 10)
    with pytest.raises(NonRetryableError) as big:
        csv_profile.read_text(path.as_uri(), BlobStores([LocalBlobStore(tmp_path)]))
    assert big.value.error_type == "TooLarge"


class _FakeStorage:
    """Records the calls csv_profile makes to google-cloud-storage and serves one object."""

    def __init__(self, objects: dict[tuple[str, str], bytes]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str, dict[str, object]]] = []

    def bucket(self, bucket: str) -> _FakeStorage.Bucket:
        return _FakeStorage.Bucket(self, bucket)

    class Bucket:
        def __init__(self, storage: _FakeStorage, name: str) -> None:
            self.storage, self.name = storage, name

        def blob(self, name: str) -> _FakeStorage.Blob:
            return _FakeStorage.Blob(self.storage, self.name, name)

    class Blob:
        def __init__(self, storage: _FakeStorage, bucket: str, name: str) -> None:
            self.storage, self.bucket, self.name = storage, bucket, name

        def download_as_bytes(self, **kwargs: object) -> bytes:
            from google.api_core import exceptions

            assert set(kwargs) == {"end"}, kwargs  # bounded read
            self.storage.calls.append((self.bucket, self.name, kwargs))
            try:
                return self.storage.objects[(self.bucket, self.name)]
            except KeyError:
                raise exceptions.NotFound(f"gs://{self.bucket}/{self.name}") from None


def test_read_text_gs_uri(csv_profile: ModuleType) -> None:
    fake = _FakeStorage(
        {("data-bucket", "in/people.csv"): b"a,b\n1,\n", ("data-bucket", "secret"): b"s"}
    )
    allowed = BlobStores([GcsBlobStore("data-bucket", "in", client=fake)])
    assert csv_profile.read_text("gs://data-bucket/in/people.csv", allowed) == "a,b\n1,\n"
    with pytest.raises(NonRetryableError) as missing:
        csv_profile.read_text("gs://data-bucket/in/absent.csv", allowed)
    assert missing.value.error_type == "NotFound"
    for uri in [
        "gs://data-bucket/secret",  # the bucket, outside the prefix
        "gs://data-bucket/in/../secret",
        "gs://data-bucket/in/%2E%2E/secret",
        "gs://other-bucket/in/people.csv",
        "gs://data-bucket/inside-not/people.csv",  # a prefix is a folder, not a string start
    ]:
        _refused(csv_profile, uri, allowed)
    assert [(b, n) for b, n, _ in fake.calls] == [
        ("data-bucket", "in/people.csv"),
        ("data-bucket", "in/absent.csv"),
    ]


def test_sources_come_from_the_environment(
    csv_profile: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_profile, "_sources", None)
    monkeypatch.setenv("CSV_PROFILE_SOURCES", f"{tmp_path}, gs://bucket/prefix")
    assert [repr(store) for store in csv_profile.sources()] == [
        f"LocalBlobStore({str(tmp_path)!r})",
        "GcsBlobStore('bucket', 'prefix/')",
    ]
