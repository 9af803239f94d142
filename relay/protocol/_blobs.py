"""Blob stores for the claim check (`dataref`): a local directory (file://) and Cloud Storage (gs://)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from relay.protocol._errors import DataRefError

_KEY = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


@runtime_checkable
class BlobStore(Protocol):
    """Where offloaded event data lives. `put` returns the URI that `get` reads back."""

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (overwriting) and return its URI."""
        ...

    def get(self, uri: str) -> bytes:
        """Read the blob at `uri` (raises DataRefError when it cannot)."""
        ...


def _content_addressed(key: str, data: bytes) -> bool:
    return key.rsplit("/", 1)[-1] == hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise DataRefError(f"invalid blob key {key!r}", field="dataref")
    return key


class LocalBlobStore:
    """Blobs as files under `root` (file:// URIs): the embedded default, shared by local processes.

    `get` only reads files at or under `root`, so a message cannot point it at arbitrary files.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def put(self, key: str, data: bytes) -> str:
        path = self.root / _check_key(key)
        try:
            if path.is_file() and _content_addressed(key, data):
                return path.as_uri()  # the same sha256 key holds the same bytes: nothing to write
            import tempfile  # lazily: only writers need it, and it is slow to import

            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise DataRefError(f"cannot write blob {path}: {exc}", field="dataref") from None
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        path = _file_path(uri)
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise DataRefError(f"dataref {uri!r} is outside the blob store {root}", field="dataref")
        try:
            return resolved.read_bytes()
        except OSError as exc:
            raise DataRefError(
                f"cannot read dataref {uri!r}: {exc.strerror or exc}", field="dataref"
            ) from None


def _file_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise DataRefError(f"not a local file URI: {uri!r}", field="dataref")
    return Path(unquote(parts.path))


def _gs_parts(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise DataRefError(f"not a gs://bucket/name URI: {uri!r}", field="dataref")
    return parts.netloc, unquote(parts.path.lstrip("/"))


class GcsBlobStore:
    """Blobs in a Cloud Storage bucket (gs:// URIs), for production.

    google-cloud-storage is imported only when the first client is made; pass `client` to reuse one.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client

    def __repr__(self) -> str:
        return f"GcsBlobStore({self.bucket!r}, {self.prefix!r})"

    @property
    def client(self) -> Any:
        """The google.cloud.storage.Client, made on first use."""
        if self._client is None:
            # import_module: google.cloud.storage ships no type information for mypy
            storage: Any = importlib.import_module("google.cloud.storage")
            self._client = storage.Client()
        return self._client

    def put(self, key: str, data: bytes) -> str:
        name = self.prefix + _check_key(key)
        try:
            blob = self.client.bucket(self.bucket).blob(name)
            if _content_addressed(key, data):
                # Only create: a publish retry finds the object there and uploads nothing again.
                from google.api_core.exceptions import PreconditionFailed

                with contextlib.suppress(PreconditionFailed):
                    blob.upload_from_string(
                        data, content_type="application/octet-stream", if_generation_match=0
                    )
            else:
                blob.upload_from_string(data, content_type="application/octet-stream")
        except Exception as exc:
            raise DataRefError(
                f"cannot write gs://{self.bucket}/{name}: {exc}", field="dataref"
            ) from exc
        return f"gs://{self.bucket}/{name}"

    def get(self, uri: str) -> bytes:
        bucket, name = _gs_parts(uri)
        if bucket != self.bucket:
            raise DataRefError(f"dataref {uri!r} is not in bucket {self.bucket!r}", field="dataref")
        if not name:
            raise DataRefError(f"dataref {uri!r} names no object", field="dataref")
        try:
            data = self.client.bucket(bucket).blob(name).download_as_bytes()
        except Exception as exc:
            raise DataRefError(f"cannot read dataref {uri!r}: {exc}", field="dataref") from exc
        return bytes(data)


def blob_store_for(uri: str) -> BlobStore:
    """The store for a URI by scheme: file:///dir: LocalBlobStore, gs://bucket/p: GcsBlobStore.

    Given a blob's own URI, the store can read that blob.
    """
    scheme = urlsplit(uri).scheme if isinstance(uri, str) else ""
    if scheme == "file":
        return LocalBlobStore(_file_path(uri))
    if scheme == "gs":
        bucket, prefix = _gs_parts(uri)
        return GcsBlobStore(bucket, prefix)
    raise DataRefError(
        f"no blob store for {uri!r}: supported schemes are file:// and gs://", field="dataref"
    )
