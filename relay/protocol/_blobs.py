"""Blob stores for the claim check (`dataref`): a local directory (file://) and Cloud Storage (gs://).

A store reads only inside itself (`contains`): a local store under its root, opening each path
component without following links and refusing anything but a regular file; a Cloud Storage store
under its bucket and prefix. `BlobStores` is the ordered set a reader is configured with.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from relay.protocol._errors import DataRefError, DataRefRefusedError, LimitError

_KEY = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SCHEMES = ("file", "gs")
_NOT_REGULAR = "not a regular file (links, FIFOs and devices are never read)"


@runtime_checkable
class BlobStore(Protocol):
    """Where offloaded event data lives. `put` returns the URI that `get` reads back."""

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` (overwriting) and return its URI."""
        ...

    def contains(self, uri: str) -> bool:
        """Whether `uri` names a blob inside this store (decided from the URI alone)."""
        ...

    def get(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        """Read the blob at `uri`, at most `max_bytes` (DataRefRefusedError if it is not
        inside the store, LimitError if larger, DataRefError if it cannot be read)."""
        ...


def _content_addressed(key: str, data: bytes) -> bool:
    return key.rsplit("/", 1)[-1] == hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise DataRefError(f"invalid blob key {key!r}", field="dataref")
    return key


def _shown(uri: str) -> str:
    return repr(uri if len(uri) <= 200 else uri[:200] + "...")


def _refused(uri: str, why: str) -> DataRefRefusedError:
    return DataRefRefusedError(f"dataref {_shown(uri)} refused: {why}", field="dataref")


def _too_large(uri: str, max_bytes: int) -> LimitError:
    return LimitError(
        f"dataref {_shown(uri)} is larger than {max_bytes} bytes",
        field="dataref",
        limit=max_bytes,
        actual=max_bytes + 1,
    )


def _relative_parts(path: PurePosixPath, root: PurePosixPath) -> tuple[str, ...] | None:
    """`path`'s components below `root`, compared as written (no '..', nothing resolved);
    () for the root itself (a store made from one blob's URI reads that blob)."""
    if ".." in path.parts or not path.is_relative_to(root):
        return None
    return path.relative_to(root).parts


class LocalBlobStore:
    """Blobs as files under `root` (file:// URIs): the embedded default, shared by local processes.

    `get` reads only regular files under `root`, reached without following a link, so a message
    cannot point it at other files, FIFOs or devices.
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

    def contains(self, uri: str) -> bool:
        return self._parts(uri) is not None

    def get(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        parts = self._parts(uri)
        if parts is None:
            raise _refused(uri, f"not a file under the blob store {self.root}")
        return _read_confined(self.root, parts, uri, max_bytes)

    def _parts(self, uri: str) -> tuple[str, ...] | None:
        try:
            path = _file_path(uri)
        except DataRefError:
            return None
        return _relative_parts(PurePosixPath(path), PurePosixPath(self.root))


def _read_confined(root: Path, parts: tuple[str, ...], uri: str, max_bytes: int | None) -> bytes:
    """Read root/parts, opening each component relative to the last with O_NOFOLLOW."""
    if not parts:
        root, parts = root.parent, (root.name,)
    flags = os.O_RDONLY | os.O_CLOEXEC
    opened: list[int] = []
    try:
        try:
            opened.append(os.open(root, flags | os.O_DIRECTORY))
            for name in parts[:-1]:
                opened.append(
                    os.open(name, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=opened[-1])
                )
            # Look before opening, so a FIFO or device is never opened; check again after.
            if not stat.S_ISREG(
                os.stat(parts[-1], dir_fd=opened[-1], follow_symlinks=False).st_mode
            ):
                raise _refused(uri, "not a regular file (links, FIFOs and devices are never read)")
            opened.append(
                os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=opened[-1])
            )
            info = os.fstat(opened[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refused(uri, "a path component is a link or not a folder") from None
            raise DataRefError(
                f"cannot read dataref {_shown(uri)}: {exc.strerror or exc}", field="dataref"
            ) from exc
        if not stat.S_ISREG(info.st_mode):
            raise _refused(uri, _NOT_REGULAR)
        if max_bytes is not None and info.st_size > max_bytes:
            raise _too_large(uri, max_bytes)
        with os.fdopen(opened.pop(), "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(uri, max_bytes)
        return data
    finally:
        for fd in opened:
            os.close(fd)


def _file_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise DataRefError(f"not a local file URI: {_shown(uri)}", field="dataref")
    return Path(unquote(parts.path))


def _gs_parts(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "gs" or not parts.netloc:
        raise DataRefError(f"not a gs://bucket/name URI: {_shown(uri)}", field="dataref")
    return parts.netloc, unquote(parts.path.lstrip("/"))


class GcsBlobStore:
    """Blobs in a Cloud Storage bucket (gs:// URIs) under `prefix`, for production.

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

    def contains(self, uri: str) -> bool:
        return self._name(uri) is not None

    def get(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        name = self._name(uri)
        if name is None:
            raise _refused(uri, f"not an object under gs://{self.bucket}/{self.prefix}")
        try:
            blob = self.client.bucket(self.bucket).blob(name)
            if max_bytes is None:
                data = blob.download_as_bytes()
            else:  # `end` is inclusive: one byte more tells "larger than max_bytes"
                data = blob.download_as_bytes(end=max_bytes)
        except Exception as exc:
            raise DataRefError(
                f"cannot read dataref {_shown(uri)}: {exc}", field="dataref"
            ) from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(uri, max_bytes)
        return bytes(data)

    def _name(self, uri: str) -> str | None:
        try:
            bucket, name = _gs_parts(uri)
        except DataRefError:
            return None
        if bucket != self.bucket or not name.startswith(self.prefix):
            return None
        below = name[len(self.prefix) :].split("/")
        if not below[0] or any(part in ("", ".", "..") for part in below):
            return None
        return name


class BlobStores:
    """The blob stores a reader may resolve datarefs in, in order; results are written to the
    first. A dataref outside all of them is refused before anything is read."""

    def __init__(self, stores: Iterable[BlobStore] = ()) -> None:
        self._stores = tuple(stores)

    @classmethod
    def parse(cls, spec: str) -> BlobStores:
        """Comma-separated `gs://bucket/prefix`, `file:///folder` or folder paths (relative
        ones to the working directory), e.g. the value of RELAY_BLOB_STORES."""
        stores: list[BlobStore] = []
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            scheme = urlsplit(entry).scheme
            if scheme == "gs":
                bucket, prefix = _gs_parts(entry)
                stores.append(GcsBlobStore(bucket, prefix))
            elif scheme == "file":
                stores.append(LocalBlobStore(_file_path(entry)))
            elif not scheme:
                stores.append(LocalBlobStore(entry))
            else:
                raise DataRefError(
                    f"blob store {entry!r}: only gs://bucket/prefix, file:///folder or a folder",
                    field="dataref",
                )
        return cls(stores)

    def __repr__(self) -> str:
        return f"BlobStores({list(self._stores)!r})"

    def __iter__(self) -> Iterator[BlobStore]:
        return iter(self._stores)

    def __bool__(self) -> bool:
        return bool(self._stores)

    @property
    def writer(self) -> BlobStore | None:
        """Where offloaded data is written: the first store, if any."""
        return self._stores[0] if self._stores else None

    def put(self, key: str, data: bytes) -> str:
        if self.writer is None:
            raise DataRefError("no blob store is configured to write to", field="dataref")
        return self.writer.put(key, data)

    def contains(self, uri: str) -> bool:
        return any(store.contains(uri) for store in self._stores)

    def get(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        scheme = urlsplit(uri).scheme if isinstance(uri, str) else ""
        if scheme not in _SCHEMES:
            raise _refused(str(uri), "only file:// and gs:// URIs inside a configured blob store")
        for store in self._stores:
            if store.contains(uri):
                return store.get(uri, max_bytes=max_bytes)
        where = ", ".join(map(repr, self._stores)) or "none is configured"
        raise _refused(uri, f"outside every configured blob store ({where})")


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
    raise DataRefRefusedError(
        f"no blob store for {_shown(uri)}: supported schemes are file:// and gs://",
        field="dataref",
    )
