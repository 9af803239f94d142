"""Every limit at its boundary: at the limit passes, one over fails with an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.protocol import (
    DEFAULT_OFFLOAD_THRESHOLD,
    MAX_ATTRIBUTE_KEY_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    Event,
    InvalidAttributeError,
    LimitError,
    LocalBlobStore,
    check_message,
    from_message,
    to_binary,
    to_structured,
)

BASE_ATTRIBUTES = 5  # ce-specversion, ce-id, ce-source, ce-type, content-type


def event(**kwargs: object) -> Event:
    fields: dict[str, object] = {"id": "1", "source": "s", "type": "t"}
    fields.update(kwargs)
    return Event(**fields)  # type: ignore[arg-type]


def test_the_numbers() -> None:
    assert (MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES) == (100, 256, 1024)
    assert MAX_MESSAGE_BYTES == 10_000_000
    assert DEFAULT_OFFLOAD_THRESHOLD == 1_048_576


def test_attribute_count() -> None:
    at_limit = {f"x{i}": "v" for i in range(MAX_ATTRIBUTES - BASE_ATTRIBUTES)}
    message = to_binary(event(extensions=at_limit))
    assert len(message.attributes) == MAX_ATTRIBUTES
    with pytest.raises(LimitError) as info:
        to_binary(event(extensions={**at_limit, "one": "more"}))
    assert info.value.field == "attributes"
    assert (info.value.limit, info.value.actual) == (100, 101)
    assert "100" in str(info.value)


def test_attribute_count_counts_the_dataref_slot(tmp_path: Path) -> None:
    at_limit = {f"x{i}": "v" for i in range(MAX_ATTRIBUTES - BASE_ATTRIBUTES)}
    store = LocalBlobStore(tmp_path)
    with pytest.raises(LimitError) as info:
        to_binary(
            event(extensions=at_limit, data="x" * 100), blob_store=store, offload_threshold=10
        )
    assert info.value.field == "attributes"
    assert list(tmp_path.iterdir()) == []  # checked before anything was stored
    fewer = dict(list(at_limit.items())[:-1])
    message = to_binary(
        event(extensions=fewer, data="x" * 100), blob_store=store, offload_threshold=10
    )
    assert len(message.attributes) == MAX_ATTRIBUTES


@pytest.mark.parametrize("char", ["v", "é", "€"])
def test_attribute_value_bytes(char: str) -> None:
    size = len(char.encode())
    value = char * (MAX_ATTRIBUTE_VALUE_BYTES // size) + "v" * (MAX_ATTRIBUTE_VALUE_BYTES % size)
    assert len(value.encode()) == MAX_ATTRIBUTE_VALUE_BYTES
    to_binary(event(extensions={"big": value}))
    with pytest.raises(LimitError) as info:
        to_binary(event(extensions={"big": value + "v"}))
    assert info.value.field == "ce-big"
    assert (info.value.limit, info.value.actual) == (1024, 1025)


@pytest.mark.parametrize("attribute", ["id", "source", "type", "subject"])
def test_core_attribute_value_bytes(attribute: str) -> None:
    to_binary(event(**{attribute: "a" * MAX_ATTRIBUTE_VALUE_BYTES}))
    with pytest.raises(LimitError) as info:
        to_binary(event(**{attribute: "a" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)}))
    assert info.value.field == f"ce-{attribute}"


def test_attribute_key_bytes() -> None:
    check_message(b"", {"k" * MAX_ATTRIBUTE_KEY_BYTES: "v"})
    with pytest.raises(LimitError) as info:
        check_message(b"", {"k" * (MAX_ATTRIBUTE_KEY_BYTES + 1): "v"})
    assert info.value.field == "k" * 257
    assert (info.value.limit, info.value.actual) == (256, 257)


def test_extension_name_length() -> None:
    to_binary(event(extensions={"a" * 20: "v"}))
    with pytest.raises(InvalidAttributeError) as info:
        event(extensions={"a" * 21: "v"})
    assert info.value.field == "a" * 21


def test_message_size_binary() -> None:
    attributes = to_binary(event(data=b"", datacontenttype="application/octet-stream")).attributes
    overhead = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
    data = b"x" * (MAX_MESSAGE_BYTES - overhead)
    message = to_binary(
        event(data=data, datacontenttype="application/octet-stream"), offload_threshold=None
    )
    assert len(message.data) + overhead == MAX_MESSAGE_BYTES
    with pytest.raises(LimitError) as info:
        to_binary(
            event(data=data + b"x", datacontenttype="application/octet-stream"),
            offload_threshold=None,
        )
    assert info.value.field == "message"
    assert (info.value.limit, info.value.actual) == (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1)


def test_message_size_structured() -> None:
    empty = to_structured(event(data=""))
    overhead = len(empty.data) + sum(len(k) + len(v) for k, v in empty.attributes.items())
    text = "x" * (MAX_MESSAGE_BYTES - overhead)
    to_structured(event(data=text), offload_threshold=None)
    with pytest.raises(LimitError) as info:
        to_structured(event(data=text + "x"), offload_threshold=None)
    assert info.value.field == "message"


@pytest.mark.parametrize("encode", [to_binary, to_structured])
def test_offload_threshold_boundary(encode: object, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    at = event(data=b"x" * 100, datacontenttype="application/octet-stream")
    over = event(data=b"x" * 101, datacontenttype="application/octet-stream")
    inline = encode(at, blob_store=store, offload_threshold=100)  # type: ignore[operator]
    assert b"dataref" not in inline.data
    assert "ce-dataref" not in inline.attributes
    assert from_message(*inline) == at
    offloaded = encode(over, blob_store=store, offload_threshold=100)  # type: ignore[operator]
    assert from_message(*offloaded).data == over.data
    with pytest.raises(LimitError) as info:
        encode(over, offload_threshold=100)  # type: ignore[operator]
    assert info.value.field == "data"
    assert (info.value.limit, info.value.actual) == (100, 101)
    assert "blob store" in str(info.value)


def test_default_threshold_without_store() -> None:
    at = event(data=b"x" * DEFAULT_OFFLOAD_THRESHOLD, datacontenttype="application/octet-stream")
    to_binary(at)
    with pytest.raises(LimitError) as info:
        to_binary(event(data=b"x" * (DEFAULT_OFFLOAD_THRESHOLD + 1), datacontenttype="a/b"))
    assert info.value.field == "data"


def test_offloaded_data_may_exceed_the_message_limit(tmp_path: Path) -> None:
    big = event(data=b"x" * (MAX_MESSAGE_BYTES + 1), datacontenttype="application/octet-stream")
    message = to_binary(big, blob_store=LocalBlobStore(tmp_path))
    assert message.data == b""
    assert from_message(*message).data == big.data


def test_dataref_value_over_the_limit_is_caught(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200) / ("g" * 200) / ("h" * 200)
    with pytest.raises(LimitError) as info:
        to_binary(event(data="x" * 20), blob_store=LocalBlobStore(deep), offload_threshold=1)
    assert info.value.field == "ce-dataref"
