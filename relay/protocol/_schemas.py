"""JSON Schemas for event data, one per CloudEvents type; jsonschema is imported on first use."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from relay.protocol._errors import ProtocolError, SchemaValidationError

SCHEMA_PATH_ENV = "RELAY_SCHEMA_PATH"
_MAX_REASON = 300
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SchemaRegistry:
    """Maps a CloudEvents type to a JSON Schema (draft 2020-12); types without a schema pass.

    Each type's validator is compiled once, on its first validation.
    """

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._schemas: dict[str, Mapping[str, Any]] = {}
        self._validators: dict[str, Any] = {}
        self._lock = threading.Lock()
        for event_type, schema in (schemas or {}).items():
            self.register(event_type, schema)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._schemas

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._schemas))

    def __len__(self) -> int:
        return len(self._schemas)

    def __repr__(self) -> str:
        return f"SchemaRegistry({sorted(self._schemas)!r})"

    def register(self, event_type: str, schema: Mapping[str, Any]) -> None:
        """Register (or replace) the schema for `event_type`."""
        if not isinstance(event_type, str) or not event_type:
            raise ProtocolError(f"invalid event type {event_type!r}", field="type")
        if not isinstance(schema, Mapping | bool):
            raise ProtocolError(
                f"schema for {event_type!r} must be a JSON object", field=event_type
            )
        with self._lock:
            self._schemas[event_type] = schema
            self._validators.pop(event_type, None)

    def load_dir(self, directory: str | os.PathLike[str]) -> None:
        """Register every `<ce-type>.json` file in `directory` (the file name is the type)."""
        for path in sorted(Path(directory).glob("*.json")):
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"cannot load schema {path}: {exc}", field=path.stem) from None
            self.register(path.name[: -len(".json")], schema)

    def schema_for(self, event_type: str) -> Mapping[str, Any] | None:
        """The schema registered for `event_type`, or None."""
        return self._schemas.get(event_type)

    def validate(self, event_type: str, data: Any) -> None:
        """Raise SchemaValidationError (JSON path + reason) unless `data` matches the schema."""
        validator = self._validator(event_type)
        if validator is None:
            return
        from jsonschema.exceptions import best_match

        errors = list(validator.iter_errors(data))
        if not errors:
            return
        found = tuple(
            (_path_of(error), _short(error.message))
            for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
        )
        best = best_match(errors)
        path, reason = _path_of(best), _short(best.message)
        raise SchemaValidationError(
            f"data of {event_type!r} is invalid at {path}: {reason}",
            path=path,
            reason=reason,
            errors=found,
        )

    def _validator(self, event_type: str) -> Any:
        schema = self._schemas.get(event_type)
        if schema is None:
            return None
        validator = self._validators.get(event_type)
        if validator is None:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ProtocolError(
                    f"schema for {event_type!r} is not a valid JSON Schema: {_short(exc.message)}",
                    field=event_type,
                ) from None
            validator = Draft202012Validator(schema)
            with self._lock:
                self._validators[event_type] = validator
        return validator


def _path_of(error: Any) -> str:
    """JSON path of the failing value; for a missing or unexpected member, the member's own path."""
    path: str = error.json_path
    instance, schema = error.instance, error.schema
    names: list[str] = []
    if isinstance(instance, dict) and isinstance(schema, dict):
        if error.validator == "required":
            names = [name for name in error.validator_value if name not in instance]
        elif error.validator == "additionalProperties":
            names = sorted(set(instance) - set(schema.get("properties", {})))
    if len(names) == 1:
        name = names[0]
        return f"{path}.{name}" if _IDENTIFIER.fullmatch(name) else f"{path}[{json.dumps(name)}]"
    return path


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def shipped_schema_dir() -> Path:
    """relay's own schemas: `relay/_schemas` in a wheel, the top-level `schemas/` in a checkout."""
    package_root = Path(__file__).resolve().parent.parent
    packaged = package_root / "_schemas"
    if packaged.is_dir():
        return packaged
    return package_root.parent / "schemas"


_DEFAULT: dict[str, SchemaRegistry] = {}
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> SchemaRegistry:
    """Shipped schemas plus each directory in RELAY_SCHEMA_PATH (os.pathsep list, later wins).

    Shared and cached per RELAY_SCHEMA_PATH value: register extra types in your own SchemaRegistry.
    """
    extra = os.environ.get(SCHEMA_PATH_ENV, "")
    with _DEFAULT_LOCK:
        registry = _DEFAULT.get(extra)
        if registry is None:
            registry = SchemaRegistry()
            registry.load_dir(shipped_schema_dir())
            for directory in filter(None, extra.split(os.pathsep)):
                if not Path(directory).is_dir():
                    raise ProtocolError(
                        f"{SCHEMA_PATH_ENV} entry {directory!r} is not a directory",
                        field=SCHEMA_PATH_ENV,
                    )
                registry.load_dir(directory)
            _DEFAULT[extra] = registry
        return registry
