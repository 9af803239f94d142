"""csv_profile: profiles a CSV file (request type dev.relay.example.csv.profile).

Request data: {"uri": "file:///path/x.csv" or "gs://bucket/x.csv", "delimiter": ","}.
Result: {"uri", "rows", "columns": [names], "nulls": {column: empty-cell count}}. The first row is
the header. file:// is read locally (for runs with relay broker); gs:// with google-cloud-storage
(one client per instance). A missing or unparsable file is a non-retryable failure; other storage
errors are retryable.
"""

from __future__ import annotations

import csv
import io
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.functions import NonRetryableError, Request, relay_function

MAX_BYTES = 512 * 1024 * 1024
_storage_client: Any = None
_storage_lock = threading.Lock()


def _storage() -> Any:
    """The instance's google.cloud.storage.Client, created on first gs:// read."""
    global _storage_client
    with _storage_lock:
        if _storage_client is None:
            from google.cloud import storage

            _storage_client = storage.Client()
        return _storage_client


def read_text(uri: str) -> str:
    """The text of a file:// or gs:// object (UTF-8, BOM tolerated)."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise NonRetryableError(f"file URI with a remote host: {uri}", error_type="BadUri")
        try:
            with open(unquote(parts.path), "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise NonRetryableError(f"cannot read {uri}: {exc}", error_type="NotFound") from None
    elif parts.scheme == "gs":
        from google.api_core import exceptions

        try:
            blob = _storage().bucket(parts.netloc).blob(parts.path.lstrip("/"))
            raw = blob.download_as_bytes(end=MAX_BYTES)
        except (exceptions.NotFound, exceptions.Forbidden) as exc:
            raise NonRetryableError(f"cannot read {uri}: {exc}", error_type="NotFound") from None
    else:
        raise NonRetryableError(f"unsupported URI scheme: {uri}", error_type="BadUri")
    if len(raw) > MAX_BYTES:
        raise NonRetryableError(f"{uri} is larger than {MAX_BYTES} bytes", error_type="TooLarge")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NonRetryableError(f"{uri} is not UTF-8 text: {exc}", error_type="BadCsv") from None


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
    result = profile(read_text(uri), request.data.get("delimiter", ","))
    return {"uri": uri, **result}
