"""The csv_profile example's pure parts: profiling and reading file:// URIs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from relay.functions import NonRetryableError

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
    path = tmp_path / "data set.csv"
    path.write_bytes("\ufeffa,b\n1,2\n".encode())
    assert csv_profile.read_text(path.as_uri()) == "a,b\n1,2\n"
    with pytest.raises(NonRetryableError) as missing:
        csv_profile.read_text((tmp_path / "nope.csv").as_uri())
    assert missing.value.error_type == "NotFound"
    with pytest.raises(NonRetryableError):
        csv_profile.read_text("http://example.com/x.csv")
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(NonRetryableError) as bad:
        csv_profile.read_text(path.as_uri())
    assert bad.value.error_type == "BadCsv"


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


def test_read_text_gs_uri(csv_profile: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeStorage({("data-bucket", "in/people.csv"): b"a,b\n1,\n"})
    monkeypatch.setattr(csv_profile, "_storage_client", fake)
    assert csv_profile.read_text("gs://data-bucket/in/people.csv") == "a,b\n1,\n"
    with pytest.raises(NonRetryableError) as missing:
        csv_profile.read_text("gs://data-bucket/in/absent.csv")
    assert missing.value.error_type == "NotFound"
    assert [(b, n) for b, n, _ in fake.calls] == [
        ("data-bucket", "in/people.csv"),
        ("data-bucket", "in/absent.csv"),
    ]
