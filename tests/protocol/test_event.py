"""Event: validation at construction, immutability, extension views."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay.protocol import (
    DecodeError,
    Event,
    InvalidAttributeError,
    LimitError,
    ProtocolError,
    SchemaValidationError,
)


def make(**kwargs: object) -> Event:
    fields: dict[str, object] = {"id": "1", "source": "//test", "type": "dev.relay.test"}
    fields.update(kwargs)
    return Event(**fields)  # type: ignore[arg-type]


def test_defaults() -> None:
    event = make(data={"a": 1})
    assert event.specversion == "1.0"
    assert event.datacontenttype == "application/json"
    assert event.time is None
    assert event.subject is None
    assert event.dataschema is None
    assert dict(event.extensions) == {}
    assert event.correlationid is None
    assert event.replyto is None
    assert event.dataref is None


def test_frozen_and_read_only_extensions() -> None:
    source = {"correlationid": "c1"}
    event = make(extensions=source)
    source["correlationid"] = "changed"
    assert event.correlationid == "c1"
    with pytest.raises(TypeError):
        event.extensions["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.id = "2"  # type: ignore[misc]


def test_extension_views() -> None:
    event = make(
        extensions={
            "correlationid": "corr",
            "causationid": "cause",
            "replyto": "projects/relay-test/topics/results",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "a=b",
            "dataref": "file:///tmp/blob",
            "expirytime": "2030-01-02T03:04:05.5+01:00",
        }
    )
    assert event.correlationid == "corr"
    assert event.causationid == "cause"
    assert event.replyto == "projects/relay-test/topics/results"
    assert event.traceparent.startswith("00-")  # type: ignore[union-attr]
    assert event.tracestate == "a=b"
    assert event.dataref == "file:///tmp/blob"
    assert event.expirytime == datetime(2030, 1, 2, 2, 4, 5, 500000, tzinfo=UTC)


def test_expired() -> None:
    event = make(extensions={"expirytime": "2030-01-01T00:00:00Z"})
    assert not event.expired(datetime(2029, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert event.expired(datetime(2030, 1, 1, tzinfo=UTC))
    assert make(extensions={"expirytime": "2000-01-01T00:00:00Z"}).expired()
    assert not make(extensions={"expirytime": "9000-01-01T00:00:00Z"}).expired()
    assert not make().expired()


def test_with_extensions_sets_and_removes() -> None:
    event = make(extensions={"correlationid": "c", "partitionkey": "p"})
    changed = event.with_extensions(correlationid="d", partitionkey=None, sequence="7")
    assert dict(changed.extensions) == {"correlationid": "d", "sequence": "7"}
    assert dict(event.extensions) == {"correlationid": "c", "partitionkey": "p"}
    with pytest.raises(InvalidAttributeError) as info:
        event.with_extensions(Bad="x")
    assert info.value.field == "Bad"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "id"),
        ({"source": ""}, "source"),
        ({"type": ""}, "type"),
        ({"id": 5}, "id"),
        ({"specversion": "0.3"}, "specversion"),
        ({"time": datetime(2020, 1, 1)}, "time"),  # naive
        ({"time": "2020-01-01T00:00:00Z"}, "time"),  # not a datetime
        ({"subject": ""}, "subject"),
        ({"dataschema": "not a uri"}, "dataschema"),
        ({"datacontenttype": "json"}, "datacontenttype"),
        ({"datacontenttype": "application/cloudevents+json"}, "datacontenttype"),
        ({"extensions": {"UPPER": "x"}}, "UPPER"),
        ({"extensions": {"a" * 21: "x"}}, "a" * 21),
        ({"extensions": {"": "x"}}, ""),
        ({"extensions": {"with-dash": "x"}}, "with-dash"),
        ({"extensions": {"subject": "x"}}, "subject"),
        ({"extensions": {"data": "x"}}, "data"),
        ({"extensions": {"x": 1}}, "x"),
        ({"extensions": {"x": "\ud800"}}, "x"),
        ({"extensions": {"replyto": "topics/x"}}, "replyto"),
        ({"extensions": {"replyto": "projects/p/topics/results"}}, "replyto"),  # project too short
        ({"extensions": {"replyto": "projects/relay-test/topics/goog-x"}}, "replyto"),
        ({"extensions": {"replyto": "projects/relay-test/topics/1abc"}}, "replyto"),
        ({"extensions": {"replyto": "projects/relay-test/subscriptions/abc"}}, "replyto"),
        ({"extensions": {"expirytime": "tomorrow"}}, "expirytime"),
        ({"extensions": {"expirytime": "2020-13-01T00:00:00Z"}}, "expirytime"),
        ({"extensions": {"expirytime": "2020-01-01 00:00:00"}}, "expirytime"),
        ({"extensions": {"dataref": "no scheme"}}, "dataref"),
        ({"extensions": {"correlationid": ""}}, "correlationid"),
        ({"data": {1, 2}}, "data"),
        ({"data": float("nan")}, "data"),
        ({"data": {"x": object()}}, "data"),
        ({"data": 5, "datacontenttype": "text/plain"}, "data"),
        ({"extensions": ["x"]}, "extensions"),
    ],
)
def test_invalid_construction_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidAttributeError) as info:
        make(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_valid_forms_accepted() -> None:
    make(extensions={"replyto": "projects/example.com:my-project/topics/a.b~c+d%e_f-g"})
    make(extensions={"x": "", "a" * 20: "v", "abc123": "1"})
    make(time=datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=-3))))
    make(extensions={"expirytime": "1985-04-12T23:20:50.52Z"})
    make(extensions={"expirytime": "1990-12-31T23:59:60Z"})  # leap second
    make(extensions={"expirytime": "1996-12-19t16:39:57-08:00"})


def test_data_normalisation() -> None:
    assert make(data=bytearray(b"ab"), datacontenttype="text/plain").data == b"ab"
    assert make(data="héllo", datacontenttype="text/plain").data == "héllo".encode()
    assert make(data=None, datacontenttype="text/plain").data == b""
    assert make(data="text").data == "text"  # a JSON string
    assert make(data=b"{}").data == b"{}"  # pre-encoded JSON stays bytes


def test_repr_abbreviates_data() -> None:
    event = make(data=b"x" * 10_000, datacontenttype="application/octet-stream")
    assert "<10000 bytes>" in repr(event)
    assert len(repr(make(data=["y" * 10_000]))) < 600


def test_errors_are_value_errors_and_pickle() -> None:
    event = make()
    errors = [
        LimitError("too big", field="data", limit=1, actual=2, event=event),
        SchemaValidationError("bad", path="$.a", reason="why", event=event),
        DecodeError("nope", field="data"),
    ]
    for error in errors:
        assert isinstance(error, ProtocolError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.field == error.field
        assert copy.event == error.event
    limit = pickle.loads(pickle.dumps(errors[0]))
    assert (limit.limit, limit.actual) == (1, 2)
    schema = errors[1]
    assert isinstance(schema, SchemaValidationError)
    assert (schema.path, schema.reason, schema.errors) == ("$.a", "why", (("$.a", "why"),))
