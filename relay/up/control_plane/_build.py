"""The local stand-in for Cloud Build: unpack an uploaded archive and install what it names.

Google's Python build unpacks the source, pip-installs requirements.txt and fails with a log when
it cannot. Here the wheels the archive carries (relay's, `./relay-<v>-py3-none-any.whl`) are
installed into the revision's own site folder, so the function runs the uploaded relay and not the
one of this checkout; every other requirement (and every dependency of those wheels) must already
be satisfied by this environment, which stands in for PyPI. What it did goes to the build log.
"""

from __future__ import annotations

import io
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement


class BuildFailure(RuntimeError):
    """The archive cannot be built; the message says why (the log has the steps)."""


def build(archive: bytes, root: Path, *, runtime: str, log: Path) -> tuple[Path, Path]:
    """Unpack `archive` into `root/source`, install its wheels into `root/site`; returns both.

    Raises BuildFailure when the archive is not a zip, has no main.py, names a wheel it does not
    carry, or needs a package this environment lacks.
    """
    source, site = root / "source", root / "site"
    lines: list[str] = [f"runtime {runtime}, served by Python {sys.version.split()[0]}"]
    try:
        try:
            with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
                _unpack(bundle, source)
        except zipfile.BadZipFile as exc:
            raise BuildFailure(f"the uploaded source is not a zip archive: {exc}") from None
        lines.append(f"unpacked {sum(1 for p in source.rglob('*') if p.is_file())} files")
        if not (source / "main.py").is_file():
            raise BuildFailure("the source has no main.py at its top level")
        requirements = source / "requirements.txt"
        if requirements.is_file():
            for line in requirements.read_text(encoding="utf-8").splitlines():
                text = line.split("#", 1)[0].strip()
                if text:
                    lines.append(_install(text, source, site))
        else:
            lines.append("no requirements.txt")
        lines.append("build succeeded")
        return source, site
    except BuildFailure as exc:
        lines.append(f"build failed: {exc}")
        raise
    finally:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _unpack(bundle: zipfile.ZipFile, target: Path) -> None:
    for info in bundle.infolist():
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts:
            raise BuildFailure(f"the archive holds a path outside its folder: {info.filename!r}")
    target.mkdir(parents=True, exist_ok=True)
    bundle.extractall(target)


def _install(line: str, source: Path, site: Path) -> str:
    if line.endswith(".whl"):
        wheel = (source / line).resolve()
        if not wheel.is_relative_to(source.resolve()) or not wheel.is_file():
            raise BuildFailure(f"requirements.txt names {line}, which the archive does not hold")
        return _install_wheel(wheel, site)
    if line.startswith("-"):
        raise BuildFailure(f"requirements.txt option {line!r} is not supported here")
    _check_installed(line, f"requirements.txt line {line!r}")
    return f"{line}: satisfied by this environment"


def _install_wheel(wheel: Path, site: Path) -> str:
    """A pure-Python wheel is a zip of its files: extracting it is installing it."""
    with zipfile.ZipFile(wheel) as bundle:
        names = bundle.namelist()
        infos = [name for name in names if name.endswith(".dist-info/WHEEL")]
        if not infos or b"Root-Is-Purelib: true" not in bundle.read(infos[0]):
            raise BuildFailure(f"{wheel.name} is not a pure-Python wheel")
        meta = Parser().parsestr(bundle.read(infos[0].replace("WHEEL", "METADATA")).decode())
        _unpack(bundle, site)
    for requirement in meta.get_all("Requires-Dist") or []:
        _check_installed(requirement, f"{wheel.name} (Requires-Dist)")
    return f"{wheel.name}: installed ({len(names)} files)"


def _check_installed(text: str, where: str) -> None:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise BuildFailure(f"{where}: not a requirement: {exc}") from None
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        return
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        raise BuildFailure(
            f"{where}: {requirement.name} is not installed in relay up's environment (the local "
            "build installs nothing from PyPI)"
        ) from None
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        raise BuildFailure(
            f"{where}: needs {requirement}, relay up's environment has {requirement.name} {version}"
        )
