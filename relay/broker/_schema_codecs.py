"""Schema definitions and message validation: Avro and protocol buffers, JSON and binary.

Google's rules (cloud.google.com/pubsub/docs/schemas, .../publish-topics-schema):
- a definition is at most 300 KB; Avro 1.11 and proto2/proto3 are supported;
- a protocol buffer schema "must define only one top-level type" and "import statements that
  reference other types are not supported";
- JSON-encoded messages use Avro's JSON encoding (a union value other than null is written
  `{"<type name>": value}`) or protobuf's JSON mapping; binary ones are Avro binary or the
  protobuf wire format, and binary data left over after the value is an error ("Too much data
  to parse for schema").

Heavy parts load only when a schema is used: fastavro (Avro definitions) is imported on the
first Avro definition, and .proto text is compiled by grpcio-tools' protoc in a child process
(`python -m grpc_tools.protoc --descriptor_set_out`). The child process keeps protoc's error
messages (file:line:column) out of the broker's stderr, bounds a hostile definition by a
timeout and keeps the broker alive whatever protoc does; grpcio-tools (about 8 MB, protobuf's
own compiler) is chosen over a pure-Python .proto parser because it accepts exactly what protoc
accepts. The compiled FileDescriptorProto is stored with the revision, so Publish and a broker
restart never compile again.

Message validation is relay's own walk over the parsed schema (not a decoder library): it
never builds values, refuses nesting deeper than `MAX_DEPTH` and bounds the work on
zero-length items (an Avro array of a billion nulls fits in a few bytes), so hostile messages
cost at most a few passes over their bytes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from relay.broker._errors import invalid

__all__ = [
    "AVRO",
    "BINARY",
    "JSON",
    "MAX_DEFINITION_BYTES",
    "MAX_DEPTH",
    "PROTOCOL_BUFFER",
    "Codec",
    "compile_definition",
    "load_codec",
]

# google.pubsub.v1.Schema.Type and google.pubsub.v1.Encoding values.
PROTOCOL_BUFFER = 1
AVRO = 2
JSON = 1
BINARY = 2

MAX_DEFINITION_BYTES = 300_000  # Google: "The schema definition field can't exceed 300 KB."
MAX_DEPTH = 200  # nesting of a definition's JSON or of a message value (relay's bound)
_PROTOC_TIMEOUT = 30.0
_PROTO_FILE = "schema.proto"


class Codec(Protocol):
    """A parsed revision: says what is wrong with a message, or None when it conforms."""

    def problem(self, data: bytes, encoding: int) -> str | None: ...


async def compile_definition(schema_type: int, definition: str) -> bytes:
    """Check a definition (INVALID_ARGUMENT naming the problem); return the compiled form the
    revision keeps: a serialized FileDescriptorProto for protobuf, nothing for Avro."""
    size = len(definition.encode())
    if size > MAX_DEFINITION_BYTES:
        raise invalid(
            f"Invalid schema definition: it is {size} bytes; the maximum is "
            f"{MAX_DEFINITION_BYTES} bytes."
        )
    if not definition.strip():
        raise invalid("Invalid schema definition: the definition is empty.")
    if schema_type == AVRO:
        _avro_codec(definition)
        return b""
    if schema_type == PROTOCOL_BUFFER:
        loop = asyncio.get_running_loop()
        compiled = await loop.run_in_executor(None, _compile_proto, definition)
        _ProtoCodec(compiled)  # the descriptor must also load into a pool
        return compiled
    raise invalid(f"Invalid schema type: {schema_type}; expected AVRO or PROTOCOL_BUFFER.")


def load_codec(schema_type: int, definition: str, compiled: bytes) -> Codec:
    """The codec of an already checked revision."""
    if schema_type == AVRO:
        return _avro_codec(definition)
    return _ProtoCodec(compiled)


def _failsafe(check: Callable[[bytes, int], str | None], data: bytes, encoding: int) -> str | None:
    try:
        return check(data, encoding)
    except RecursionError:
        return f"The message is nested more than {MAX_DEPTH} levels deep."
    except Exception as exc:  # whatever a decoder raises, the message is at fault
        return f"The message could not be decoded: {' '.join(str(exc).split())}"


# -- protocol buffers ----------------------------------------------------------------------------


def _compile_proto(definition: str) -> bytes:
    """Run protoc on `definition`; return the FileDescriptorProto of its one file."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory(prefix="relay-schema-") as tmp:
        (Path(tmp) / _PROTO_FILE).write_text(definition, encoding="utf-8")
        out = Path(tmp) / "schema.pb"
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"-I{tmp}",
                    f"--descriptor_set_out={out}",
                    _PROTO_FILE,
                ],
                capture_output=True,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                timeout=_PROTOC_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise invalid(
                f"Invalid schema definition: protoc did not finish in {_PROTOC_TIMEOUT:g} s."
            ) from exc
        if result.returncode != 0 or not out.exists():
            text = result.stderr.decode(errors="replace").replace(f"{tmp}/", "")
            lines = text.splitlines()
            problems = [line for line in lines if line.startswith(_PROTO_FILE)]
            shown = "; ".join((problems or lines[-1:] or ["protoc failed"])[:5])
            raise invalid(f"Invalid schema definition: {shown}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    file = files[-1]
    if file.dependency:
        raise invalid(
            "Invalid schema definition: import statements are not supported (it imports "
            f"{', '.join(repr(d) for d in file.dependency)}); define the types it uses inside "
            "its message."
        )
    if len(file.message_type) != 1 or file.enum_type or file.service or file.extension:
        raise invalid(
            "Invalid schema definition: a protocol buffer schema must define exactly one "
            f"top-level type, a message (this one has {len(file.message_type)} messages, "
            f"{len(file.enum_type)} enums, {len(file.service)} services and "
            f"{len(file.extension)} extensions at the top level)."
        )
    return bytes(file.SerializeToString())


class _ProtoCodec:
    """The one top-level message of a compiled .proto, in a descriptor pool of its own."""

    def __init__(self, compiled: bytes) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        file = descriptor_pb2.FileDescriptorProto.FromString(compiled)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        full_name = ".".join(p for p in (file.package, file.message_type[0].name) if p)
        self._cls: Any = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    def problem(self, data: bytes, encoding: int) -> str | None:
        return _failsafe(self._check, data, encoding)

    def _check(self, data: bytes, encoding: int) -> str | None:
        from google.protobuf import json_format

        message = self._cls()
        if encoding == JSON:
            json_format.Parse(data.decode("utf-8"), message, max_recursion_depth=MAX_DEPTH)
        else:
            message.ParseFromString(data)
        missing = message.FindInitializationErrors()
        if missing:
            return f"Required fields are missing: {', '.join(missing[:10])}."
        return None


# -- Avro ----------------------------------------------------------------------------------------

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _avro_codec(definition: str) -> _AvroCodec:
    """Parse an Avro definition (fastavro resolves names and checks defaults; relay adds the
    spec's rules fastavro lets through: names, required attributes, unions)."""
    try:
        raw = json.loads(definition)
    except RecursionError:
        raise invalid(f"Invalid schema definition: nested more than {MAX_DEPTH} levels.") from None
    except ValueError as exc:
        raise invalid(f"Invalid schema definition: not valid JSON: {exc}") from None
    _check_depth(raw)
    _AvroRules().check(raw, "schema")
    from fastavro.schema import parse_schema

    named: dict[str, Any] = {}
    try:
        parsed = parse_schema(raw, named_schemas=named, _write_hint=False)
    except RecursionError:
        raise invalid(f"Invalid schema definition: nested more than {MAX_DEPTH} levels.") from None
    except Exception as exc:  # fastavro raises many kinds (SchemaParseException, KeyError...)
        raise invalid(f"Invalid schema definition: {type(exc).__name__}: {exc}") from None
    return _AvroCodec(parsed, named)


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"Invalid schema definition: nested more than {MAX_DEPTH} levels.")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and all(
        part
        and (part[0].isalpha() or part[0] == "_")
        and part.isascii()
        and all(c.isalnum() or c == "_" for c in part)
        for part in name.split(".")
    )


class _AvroRules:
    """The Avro 1.11 schema rules fastavro does not enforce, checked on the definition as
    written (fastavro then resolves the type references)."""

    def check(self, node: Any, where: str) -> None:
        if isinstance(node, str):
            return
        if isinstance(node, list):
            self._union(node, where)
            return
        if not isinstance(node, dict) or "type" not in node:
            raise invalid(f"Invalid schema definition: {where}: a schema needs a type.")
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            self.check(kind, where)
        elif kind in _NAMED:
            self._named_type(node, kind, where)
        elif kind == "array":
            self._child(node, "items", where)
        elif kind == "map":
            self._child(node, "values", where)

    def _child(self, node: dict[str, Any], key: str, where: str) -> None:
        if key not in node:
            raise invalid(f"Invalid schema definition: {where}: {node['type']} needs {key!r}.")
        self.check(node[key], f"{where}.{key}")

    def _named_type(self, node: dict[str, Any], kind: str, where: str) -> None:
        name = node.get("name")
        if not _valid_name(name):
            raise invalid(f"Invalid schema definition: {where}: invalid {kind} name {name!r}.")
        where = str(name)
        if kind == "fixed":
            size = node.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid(f"Invalid schema definition: {where}: invalid fixed size {size!r}.")
        elif kind == "enum":
            symbols = node.get("symbols")
            if not isinstance(symbols, list) or not all(
                isinstance(s, str) and _valid_name(s) and "." not in s for s in symbols
            ):
                raise invalid(f"Invalid schema definition: {where}: invalid enum symbols.")
        else:
            fields = node.get("fields")
            if not isinstance(fields, list):
                raise invalid(f"Invalid schema definition: {where}: a record needs 'fields'.")
            names: set[str] = set()
            for field in fields:
                field_name = field.get("name") if isinstance(field, dict) else None
                if not _valid_name(field_name) or "." in str(field_name):
                    raise invalid(
                        f"Invalid schema definition: {where}: invalid field name {field_name!r}."
                    )
                if field_name in names:
                    raise invalid(
                        f"Invalid schema definition: {where}: duplicate field {field_name!r}."
                    )
                names.add(str(field_name))
                if "type" not in field:
                    raise invalid(
                        f"Invalid schema definition: {where}.{field_name}: a field needs a type."
                    )
                self.check(field["type"], f"{where}.{field_name}")

    def _union(self, branches: list[Any], where: str) -> None:
        if not branches:
            raise invalid(f"Invalid schema definition: {where}: a union needs at least one type.")
        seen: set[str] = set()
        for branch in branches:
            if isinstance(branch, list):
                raise invalid(f"Invalid schema definition: {where}: unions cannot nest.")
            self.check(branch, where)
            key = _written_name(branch)
            if key in seen:
                raise invalid(f"Invalid schema definition: {where}: the union has {key} twice.")
            seen.add(key)


def _written_name(node: Any) -> str:
    """A union branch's type as written: a type name, or the name of a type defined inline."""
    if isinstance(node, str):
        return node
    kind = node.get("type") if isinstance(node, dict) else None
    if isinstance(kind, (dict, list)):
        return _written_name(kind)
    if kind in _NAMED:
        return str(node.get("name"))
    return str(kind)


def _branch_name(named: dict[str, Any], node: Any) -> str:
    """The name a union branch goes by in Avro's JSON encoding."""
    if isinstance(node, str):
        return node
    kind = node["type"]
    if isinstance(kind, (dict, list)) or kind in named:
        return _branch_name(named, kind)
    if kind in _NAMED:
        return str(node["name"])
    return str(kind)


class _Truncated(Exception):
    """The binary data ended inside a value."""


class _Budget(Exception):
    """A message holds more values than its size allows (zero-length items)."""


class _AvroCodec:
    """Validates Avro binary and Avro JSON messages against one parsed schema."""

    def __init__(self, schema: Any, named: dict[str, Any]) -> None:
        self._schema = schema
        self._named = named

    def problem(self, data: bytes, encoding: int) -> str | None:
        return _failsafe(self._check, data, encoding)

    def _check(self, data: bytes, encoding: int) -> str | None:
        if encoding == JSON:
            try:
                value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
            except RecursionError:
                raise
            except ValueError as exc:
                return f"The message is not valid JSON: {exc}"
            return self._json(self._schema, value, "message", 0)
        reader = _Reader(data)
        try:
            problem = self._binary(self._schema, reader, 0)
        except _Truncated:
            return "Not enough data to parse for schema: the message ends inside a value."
        except _Budget:
            return "The message holds more values than its size allows."
        if problem is None and reader.pos != len(data):
            return (
                f"Too much data to parse for schema: {len(data) - reader.pos} bytes are left "
                "after the value."
            )
        return problem

    def _resolve(self, node: Any) -> Any:
        """A type reference or a {"type": <reference>} wrapper -> the schema it names."""
        while True:
            if isinstance(node, str):
                if node in self._named:
                    node = self._named[node]
                    continue
                return node
            if isinstance(node, dict) and isinstance(node["type"], (dict, list)):
                node = node["type"]
                continue
            if isinstance(node, dict) and node["type"] in self._named:
                node = node["type"]
                continue
            return node

    # -- JSON (Avro's JSON encoding) -------------------------------------------------------------

    def _json(self, node: Any, value: Any, path: str, depth: int) -> str | None:
        if depth > MAX_DEPTH:
            return f"{path}: nested more than {MAX_DEPTH} levels deep."
        node = self._resolve(node)
        if isinstance(node, list):
            return self._json_union(node, value, path, depth)
        kind = node if isinstance(node, str) else node["type"]
        check = _JSON_PRIMITIVES.get(kind)
        if check is not None:
            return None if check(value) else _mismatch(path, value, kind)
        if kind == "record" or kind == "error":
            if not isinstance(value, dict):
                return _mismatch(path, value, f"record {node['name']}")
            fields = node["fields"]
            names = {f["name"] for f in fields}
            extra = [k for k in value if k not in names]
            if extra:
                return f"{path}: field {extra[0]!r} is not in record {node['name']}."
            for field in fields:
                name = field["name"]
                if name not in value:
                    return f"{path}: field {name!r} of record {node['name']} is missing."
                problem = self._json(field["type"], value[name], f"{path}.{name}", depth + 1)
                if problem:
                    return problem
            return None
        if kind == "enum":
            if isinstance(value, str) and value in node["symbols"]:
                return None
            return f"{path}: {_show(value)} is not a symbol of enum {node['name']}."
        if kind == "fixed":
            size = node["size"]
            if isinstance(value, str) and len(value) == size and _latin1(value):
                return None
            return _mismatch(path, value, f"fixed {node['name']} of {size} bytes")
        if kind == "array":
            if not isinstance(value, list):
                return _mismatch(path, value, "array")
            for index, item in enumerate(value):
                problem = self._json(node["items"], item, f"{path}[{index}]", depth + 1)
                if problem:
                    return problem
            return None
        if kind == "map":
            if not isinstance(value, dict):
                return _mismatch(path, value, "map")
            for key, item in value.items():
                problem = self._json(node["values"], item, f"{path}[{key!r}]", depth + 1)
                if problem:
                    return problem
            return None
        return f"{path}: unsupported schema type {kind!r}."

    def _json_union(self, branches: list[Any], value: Any, path: str, depth: int) -> str | None:
        names = [_branch_name(self._named, b) for b in branches]
        if value is None:
            if "null" in names:
                return None
            return f"{path}: null is not one of the union's types {names}."
        if not isinstance(value, dict) or len(value) != 1:
            return (
                f"{path}: a union value must be null or an object with one key naming its type "
                f"(one of {names}), not {_show(value)}."
            )
        ((key, inner),) = value.items()
        if key not in names or key == "null":
            return f"{path}: {key!r} is not one of the union's types {names}."
        return self._json(branches[names.index(key)], inner, f"{path}.{key}", depth + 1)

    # -- binary ----------------------------------------------------------------------------------

    def _binary(self, node: Any, reader: _Reader, depth: int) -> str | None:
        if depth > MAX_DEPTH:
            return f"The message is nested more than {MAX_DEPTH} levels deep."
        reader.spend()
        node = self._resolve(node)
        if isinstance(node, list):
            index = reader.long()
            if not 0 <= index < len(node):
                return f"Union branch {index} does not exist (the union has {len(node)} types)."
            return self._binary(node[index], reader, depth + 1)
        kind = node if isinstance(node, str) else node["type"]
        if kind == "null":
            return None
        if kind == "boolean":
            byte = reader.take(1)[0]
            return None if byte in (0, 1) else f"Invalid boolean byte {byte}."
        if kind == "int":
            value = reader.long()
            return None if -(2**31) <= value < 2**31 else f"{value} does not fit an int."
        if kind == "long":
            reader.long()
            return None
        if kind == "float":
            reader.take(4)
            return None
        if kind == "double":
            reader.take(8)
            return None
        if kind == "bytes" or kind == "string":
            size = reader.long()
            if size < 0:
                return f"Negative {kind} length {size}."
            raw = reader.take(size)
            if kind == "string":
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return f"A string is not valid UTF-8: {exc}."
            return None
        if kind == "fixed":
            reader.take(node["size"])
            return None
        if kind == "enum":
            index = reader.long()
            count = len(node["symbols"])
            if 0 <= index < count:
                return None
            return f"Enum {node['name']} has no symbol {index} (it has {count})."
        if kind == "record" or kind == "error":
            for field in node["fields"]:
                problem = self._binary(field["type"], reader, depth + 1)
                if problem:
                    return problem
            return None
        if kind == "array" or kind == "map":
            return self._blocks(node, kind, reader, depth)
        return f"Unsupported schema type {kind!r}."

    def _blocks(self, node: dict[str, Any], kind: str, reader: _Reader, depth: int) -> str | None:
        item = node["items"] if kind == "array" else node["values"]
        while True:
            count = reader.long()
            if count == 0:
                return None
            if count < 0:
                count = -count
                reader.long()  # the block's size in bytes
            for _ in range(count):
                if kind == "map":
                    problem = self._binary("string", reader, depth + 1)
                    if problem:
                        return problem
                problem = self._binary(item, reader, depth + 1)
                if problem:
                    return problem


class _Reader:
    """Avro binary primitives over bytes, with a budget of values (see _Budget)."""

    __slots__ = ("budget", "data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.budget = 2 * len(data) + 10_000

    def spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise _Budget

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def long(self) -> int:
        """A zig-zag varint of at most 10 bytes (a 64-bit long)."""
        data = self.data
        result = 0
        shift = 0
        for _ in range(10):
            if self.pos >= len(data):
                raise _Truncated
            byte = data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
        raise ValueError("a varint is longer than 10 bytes")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _latin1(text: str) -> bool:
    return all(ord(c) < 256 for c in text)


def _is_int(value: Any, bits: int) -> bool:
    limit = 1 << (bits - 1)
    return isinstance(value, int) and not isinstance(value, bool) and -limit <= value < limit


_JSON_PRIMITIVES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "int": lambda v: _is_int(v, 32),
    "long": lambda v: _is_int(v, 64),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bytes": lambda v: isinstance(v, str) and _latin1(v),
    "string": lambda v: isinstance(v, str),
}


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mismatch(path: str, value: Any, expected: str) -> str:
    return f"{path}: {_show(value)} does not match the schema, which expects {expected}."
