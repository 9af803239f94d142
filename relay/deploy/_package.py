"""A function's source archive: its folder plus relay's own wheel, byte-for-byte reproducible.

relay is not on PyPI, so each function's requirements.txt names `./relay-<version>-py3-none-any.whl`
and the archive carries that wheel, built here from the installed relay (the same files `uv build`
puts in it). Every entry has a fixed timestamp and mode and the entries are sorted, so the same
sources always give the same bytes: the archive's digest tells whether a deploy changes the code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import relay
from relay.topology import Function

_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = frozenset({"__pycache__"})
MAX_ARCHIVE_BYTES = 100 * 2**20
"""Google refuses source uploads over 100 MB (compressed)."""


class PackageError(ValueError):
    """A function's folder cannot be packaged as Google's build would need it."""


@dataclass(frozen=True)
class Archive:
    """A function's zipped source, ready for the upload URL."""

    function: str
    data: bytes
    files: tuple[str, ...]

    @property
    def sha256(self) -> str:
        """Hex digest of the archive's bytes."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def digest_label(self) -> str:
        """What relay labels the function with (`relay-source`): 32 hex digits of the digest, as a
        label value holds at most 63 characters."""
        return self.sha256[:32]


def wheel_name() -> str:
    """`relay-<version>-py3-none-any.whl` for the installed relay."""
    return f"relay-{metadata.version('relay')}-py3-none-any.whl"


def relay_wheel() -> bytes:
    """relay's wheel, built from the installed package (its METADATA and entry points as
    installed; the JSON Schemas as relay/_schemas, where a checkout keeps them in schemas/)."""
    version = metadata.version("relay")
    distribution = metadata.distribution("relay")
    dist_info = f"relay-{version}.dist-info"
    package = Path(relay.__file__).resolve().parent
    files: list[tuple[str, bytes]] = [
        (f"relay/{path.relative_to(package).as_posix()}", path.read_bytes())
        for path in _walk(package)
        if path.suffix != ".pyc"
    ]
    schemas = package.parent / "schemas"
    if not (package / "_schemas").is_dir() and schemas.is_dir():
        files += [
            (f"relay/_schemas/{path.relative_to(schemas).as_posix()}", path.read_bytes())
            for path in _walk(schemas)
        ]
    files.append((f"{dist_info}/METADATA", (distribution.read_text("METADATA") or "").encode()))
    entry_points = distribution.read_text("entry_points.txt")
    if entry_points:
        files.append((f"{dist_info}/entry_points.txt", entry_points.encode()))
    files.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: relay deploy\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        )
    )
    files.sort()
    record = "".join(f"{name},sha256={_record_hash(data)},{len(data)}\n" for name, data in files)
    files.append((f"{dist_info}/RECORD", f"{record}{dist_info}/RECORD,,\n".encode()))
    return _zip(files)


def package(function: Function, wheel: bytes | None = None) -> Archive:
    """Zip `function.source` with relay's wheel beside its requirements.txt."""
    name = wheel_name()
    requirements = function.source / "requirements.txt"
    if not requirements.is_file():
        raise PackageError(
            f"{function.name}: {function.source} has no requirements.txt; Google's build installs "
            f"the function's dependencies from it (relay's wheel as ./{name})"
        )
    listed = {
        line.split("#", 1)[0].strip().removeprefix("./")
        for line in requirements.read_text(encoding="utf-8").splitlines()
    }
    if name not in listed:
        raise PackageError(
            f"{function.name}: {requirements} does not name ./{name}: relay is not on PyPI, so "
            "the build installs it from the wheel relay deploy puts beside requirements.txt"
        )
    files = [
        (path.relative_to(function.source).as_posix(), path.read_bytes())
        for path in _walk(function.source)
        if path.suffix != ".pyc" and not (path.name.startswith("relay-") and path.suffix == ".whl")
    ]
    files.append((name, wheel if wheel is not None else relay_wheel()))
    files.sort()
    data = _zip(files)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise PackageError(
            f"{function.name}: the archive is {len(data)} bytes, over Google's 100 MB upload limit"
        )
    return Archive(function.name, data, tuple(file for file, _ in files))


def _walk(root: Path) -> Iterator[Path]:
    """Regular files under `root`, sorted; skips __pycache__ and hidden files and folders."""
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.name in _SKIPPED_DIRS or path.is_symlink():
            continue
        if path.is_dir():
            yield from _walk(path)
        elif path.is_file():
            yield path


def _zip(files: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
