"""One structured JSON log line per request, in the form Cloud Logging parses from stdout."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TOPIC_PROJECT = re.compile(r"^projects/([^/]+)/topics/")
_write_lock = threading.Lock()


def trace_fields(traceparent: str | None, reply_to: str | None) -> dict[str, Any]:
    """Cloud Logging trace fields from a W3C traceparent (project from env or the replyto topic)."""
    if not traceparent:
        return {}
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return {}
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCP_PROJECT")
    if not project and reply_to:
        topic = _TOPIC_PROJECT.match(reply_to)
        project = topic.group(1) if topic else None
    trace_id, span_id, flags = match.groups()
    trace = f"projects/{project}/traces/{trace_id}" if project else trace_id
    return {
        "logging.googleapis.com/trace": trace,
        "logging.googleapis.com/spanId": span_id,
        "logging.googleapis.com/trace_sampled": bool(int(flags, 16) & 1),
    }


def emit(entry: dict[str, Any]) -> None:
    """Write one JSON line to stdout (sys.stdout looked up now, so test capture works)."""
    line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
    with _write_lock:
        sys.stdout.write(line)
        sys.stdout.flush()
