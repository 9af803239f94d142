"""Schemas: the shipped ones, the registry, RELAY_SCHEMA_PATH and packaging into the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from relay.protocol import (
    EXAMPLE_CSV_PROFILE,
    EXAMPLE_ECHO,
    RESULT_FAILED,
    RESULT_SUCCEEDED,
    ProtocolError,
    SchemaRegistry,
    SchemaValidationError,
    default_registry,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_shipped_schemas_are_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    files = sorted(SCHEMAS.glob("*.json"))
    assert {f.stem for f in files} == {
        RESULT_SUCCEEDED,
        RESULT_FAILED,
        EXAMPLE_ECHO,
        EXAMPLE_CSV_PROFILE,
    }
    for path in files:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith("/" + path.name)
        assert schema["description"]


def test_default_registry_has_the_shipped_types() -> None:
    registry = default_registry()
    assert set(registry) == {RESULT_SUCCEEDED, RESULT_FAILED, EXAMPLE_ECHO, EXAMPLE_CSV_PROFILE}
    assert default_registry() is registry  # cached


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        (EXAMPLE_ECHO, {}),
        (EXAMPLE_ECHO, {"fail": "boom", "crash": 0, "anything": [1]}),
        (EXAMPLE_CSV_PROFILE, {"uri": "file:///tmp/x.csv"}),
        (EXAMPLE_CSV_PROFILE, {"uri": "gs://b/x.csv", "delimiter": ";"}),
        (RESULT_SUCCEEDED, None),
        (RESULT_SUCCEEDED, [1, "two"]),
        (RESULT_FAILED, {"error": {"type": "E", "message": "", "retryable": True, "attempt": 1}}),
        ("unknown.type", {"anything": "goes"}),
    ],
)
def test_valid_data(event_type: str, data: Any) -> None:
    default_registry().validate(event_type, data)


@pytest.mark.parametrize(
    ("event_type", "data", "path"),
    [
        (EXAMPLE_ECHO, [], "$"),
        (EXAMPLE_ECHO, {"fail": 1}, "$.fail"),
        (EXAMPLE_ECHO, {"crash": -1}, "$.crash"),
        (EXAMPLE_ECHO, {"crash": 1.5}, "$.crash"),
        (EXAMPLE_CSV_PROFILE, {}, "$.uri"),
        (EXAMPLE_CSV_PROFILE, {"uri": "https://x/y.csv"}, "$.uri"),
        (EXAMPLE_CSV_PROFILE, {"uri": "gs://b/x", "delimiter": ""}, "$.delimiter"),
        (EXAMPLE_CSV_PROFILE, {"uri": "gs://b/x", "delimiter": ",;"}, "$.delimiter"),
        (EXAMPLE_CSV_PROFILE, {"uri": "gs://b/x", "extra": 1}, "$.extra"),
        (RESULT_FAILED, {}, "$.error"),
        (
            RESULT_FAILED,
            {"error": {"type": "E", "message": "m", "retryable": True}},
            "$.error.attempt",
        ),
        (
            RESULT_FAILED,
            {"error": {"type": "E", "message": "m", "retryable": "no", "attempt": 1}},
            "$.error.retryable",
        ),
    ],
)
def test_invalid_data_names_path_and_reason(event_type: str, data: Any, path: str) -> None:
    with pytest.raises(SchemaValidationError) as info:
        default_registry().validate(event_type, data)
    assert info.value.field == info.value.path == path
    assert info.value.reason
    assert path in str(info.value)
    assert event_type in str(info.value)


def test_validator_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema

    compiled: list[object] = []
    original = jsonschema.Draft202012Validator.__init__

    def counting(self: object, *args: Any, **kwargs: Any) -> None:
        compiled.append(args[0] if args else kwargs.get("schema"))
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jsonschema.Draft202012Validator, "__init__", counting)
    schema = {"type": "object"}
    registry = SchemaRegistry({"t": schema})
    for _ in range(5):
        registry.validate("t", {})
    with pytest.raises(SchemaValidationError):
        registry.validate("t", [])
    assert sum(s is schema for s in compiled) == 1
    other = {"type": "array"}
    registry.register("t", other)  # re-registering recompiles
    registry.validate("t", [])
    registry.validate("t", [1])
    assert sum(s is other for s in compiled) == 1


def test_invalid_schema_is_a_protocol_error() -> None:
    registry = SchemaRegistry({"t": {"type": "no-such-type"}})
    with pytest.raises(ProtocolError) as info:
        registry.validate("t", {})
    assert info.value.field == "t"
    with pytest.raises(ProtocolError):
        SchemaRegistry({"t": [1]})  # type: ignore[dict-item]


def test_schema_path_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "com.example.thing.json").write_text(json.dumps({"type": "integer"}))
    (two / "com.example.thing.json").write_text(json.dumps({"type": "string"}))
    (two / f"{EXAMPLE_ECHO}.json").write_text(json.dumps({"type": "array"}))
    monkeypatch.setenv("RELAY_SCHEMA_PATH", f"{one}:{two}")
    registry = default_registry()
    assert (
        registry is not default_registry.__wrapped__()
        if hasattr(default_registry, "__wrapped__")
        else True
    )
    registry.validate("com.example.thing", "later wins")
    registry.validate(EXAMPLE_ECHO, [])  # overrides the shipped schema
    registry.validate(EXAMPLE_CSV_PROFILE, {"uri": "gs://b/x"})  # shipped ones still there
    with pytest.raises(SchemaValidationError):
        registry.validate("com.example.thing", 1)


def test_schema_path_env_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SCHEMA_PATH", str(tmp_path / "missing"))
    with pytest.raises(ProtocolError) as info:
        default_registry()
    assert info.value.field == "RELAY_SCHEMA_PATH"
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv("RELAY_SCHEMA_PATH", str(tmp_path))
    with pytest.raises(ProtocolError) as info:
        default_registry()
    assert info.value.field == "bad"


def test_schemas_ship_in_the_wheel(tmp_path: Path) -> None:
    """Build the real wheel and import relay.protocol from it: the registry finds relay/_schemas."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel"
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(root)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = (tmp_path / "dist").glob("relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"relay/_schemas/{p.name}" for p in SCHEMAS.glob("*.json")} <= names
        archive.extractall(tmp_path / "site")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import relay.protocol as p, relay.protocol._schemas as s;"
        "print(p.__file__); print(s.shipped_schema_dir()); print(len(p.default_registry()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "site")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0].startswith(str(tmp_path / "site"))
    assert out[1] == str(tmp_path / "site" / "relay" / "_schemas")
    assert out[2] == "4"
