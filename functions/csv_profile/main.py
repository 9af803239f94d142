"""csv_profile: profiles a CSV file (request type dev.relay.example.csv.profile).

Request data: {"uri": "file:///path/x.csv" or "gs://bucket/x.csv", "delimiter": ","}.
Result: {"uri", "rows", "columns": [names], "nulls": {column: empty-cell count}}. The first row is
the header. The file must lie inside one of the places CSV_PROFILE_SOURCES names (comma-separated
local folders or gs://bucket/prefix): a local file is reached without following links and must be
a regular file; anything else is refused, non-retryable, and nothing is read. A missing or
unparsable file is a non-retryable failure; other storage errors are retryable.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from typing import Any

from relay.functions import NonRetryableError, Request, relay_function
from relay.protocol import BlobStores, DataRefError, DataRefRefusedError, LimitError

MAX_BYTES = 512 * 1024 * 1024
SOURCES_ENV = "CSV_PROFILE_SOURCES"
_sources: BlobStores | None = None
_sources_lock = threading.Lock()


def sources() -> BlobStores:
    """Where CSV files may be read from: CSV_PROFILE_SOURCES, parsed on first use."""
    global _sources
    with _sources_lock:
        if _sources is None:
            _sources = BlobStores.parse(os.environ.get(SOURCES_ENV, ""))
        return _sources


def read_text(uri: str, allowed: BlobStores) -> str:
    """The text (UTF-8, BOM tolerated) of the file at `uri`, if `allowed` holds it."""
    try:
        raw = allowed.get(uri, max_bytes=MAX_BYTES)
    except DataRefRefusedError as exc:
        raise NonRetryableError(
            f"{exc} (allowed: {SOURCES_ENV})", error_type="NotAllowed"
        ) from None
    except LimitError:
        raise NonRetryableError(
            f"{uri} is larger than {MAX_BYTES} bytes", error_type="TooLarge"
        ) from None
    except DataRefError as exc:
        if _missing(exc):
            raise NonRetryableError(f"cannot read {uri}: {exc}", error_type="NotFound") from None
        raise  # a storage error that may pass: Pub/Sub retries
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NonRetryableError(f"{uri} is not UTF-8 text: {exc}", error_type="BadCsv") from None


def _missing(exc: DataRefError) -> bool:
    """Whether the read failed because the file is not there or not readable by this function."""
    from google.api_core import exceptions

    cause = exc.__cause__
    local = (FileNotFoundError, IsADirectoryError, PermissionError)
    return isinstance(cause, (*local, exceptions.NotFound, exceptions.Forbidden))


def profile(text: str, delimiter: str = ",") -> dict[str, Any]:
    """Row count (header excluded), column names and per-column counts of empty cells."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return {"rows": 0, "columns": [], "nulls": {}}
        nulls = [0] * len(header)
        rows = 0
        for row in reader:
            if not row:
                continue  # blank line
            rows += 1
            for index in range(len(header)):
                if index >= len(row) or not row[index].strip():
                    nulls[index] += 1
    except csv.Error as exc:
        raise NonRetryableError(f"malformed CSV: {exc}", error_type="BadCsv") from None
    return {"rows": rows, "columns": header, "nulls": dict(zip(header, nulls, strict=True))}


@relay_function
def csv_profile(request: Request) -> dict[str, Any]:
    """Profile the CSV file the request names."""
    uri = request.data["uri"]
    result = profile(read_text(uri, sources()), request.data.get("delimiter", ","))
    return {"uri": uri, **result}
