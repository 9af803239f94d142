"""Cloud Functions (2nd gen, v2 API) names and limits: the one home of Google's rules that the
topology file, `relay deploy` and the local control plane of `relay up` all check.

Sources: the v2 API reference (google.cloud.functions.v2: Function, ServiceConfig, EventTrigger,
CreateFunctionRequest), Cloud Run functions' memory/vCPU table, runtime list and timeouts.
"""

from __future__ import annotations

import re

from relay.protocol._errors import InvalidAttributeError

# Function ids (the last segment of projects/P/locations/L/functions/F; also the Cloud Run
# service name): lowercase letters, digits and hyphens, a letter first, not ending in a hyphen.
_FUNCTION_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
FUNCTION_ID_RULE = "1-63 lowercase letters, digits and hyphens, starting with a letter"
_REGION = re.compile(r"[a-z]+(?:-[a-z]+)+[0-9]+")
REGION_RULE = "a Google Cloud region such as europe-west1 or us-central1"
_PROJECT = r"(?:[a-z0-9][a-z0-9.-]{0,62}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
_LOCATION_PATH = re.compile(rf"projects/({_PROJECT})/locations/([a-z0-9-]+)")
_FUNCTION_PATH = re.compile(rf"projects/({_PROJECT})/locations/([a-z0-9-]+)/functions/([^/]+)")
_SERVICE_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.:-]+\.gserviceaccount\.com")

PYTHON_RUNTIMES = (
    "python37",
    "python38",
    "python39",
    "python310",
    "python311",
    "python312",
    "python313",
    "python314",
)
"""The Python runtime ids Cloud Run functions knows (python37-39 on the google-18 stack)."""
RELAY_RUNTIMES = tuple(
    runtime for runtime in PYTHON_RUNTIMES if int(runtime.removeprefix("python3")) >= 11
)
"""What relay runs on: Python 3.11 or later."""
DEFAULT_RUNTIME = "python312"

DEFAULT_TIMEOUT_SECONDS = 60
MAX_HTTP_TIMEOUT_SECONDS = 3600
"""HTTP functions (relay's push and pull delivery) run up to 60 minutes."""
MAX_EVENT_TIMEOUT_SECONDS = 540
"""Event-driven functions (an Eventarc trigger) run up to 9 minutes."""
MAX_CONCURRENCY = 1000
MAX_INSTANCES = 1000
DEFAULT_MAX_INSTANCES = 100
"""What Google sets when a deploy names no max_instance_count."""

DEFAULT_MEMORY = "256M"
MIN_MEMORY_BYTES = 128 * 2**20
MAX_MEMORY_BYTES = 32 * 2**30
# (memory up to, default vCPUs): Google's memory/vCPU tiers.
_CPU_TIERS = (
    (128 * 2**20, 0.083),
    (256 * 2**20, 0.167),
    (512 * 2**20, 0.333),
    (1 * 2**30, 0.583),
    (2 * 2**30, 1.0),
    (8 * 2**30, 2.0),
    (16 * 2**30, 4.0),
    (32 * 2**30, 8.0),
)
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(k|M|G|Mi|Gi)?")
_UNITS = {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Mi": 2**20, "Gi": 2**30}
MEMORY_RULE = "a size with a unit of k, M, G, Mi or Gi (e.g. 256Mi, 1Gi), from 128Mi to 32Gi"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENVIRONMENT = frozenset(
    {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "FUNCTION_TARGET"}
)
"""Set by Cloud Run / the functions runtime; a deploy may not set them (nor X_GOOGLE_*)."""
GOOGLE_ADDED_ENVIRONMENT = {"LOG_EXECUTION_ID": "true"}
"""What Google adds to a 2nd-gen function's environment_variables on every deploy."""
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
EVENTARC_SUBSCRIPTION_PREFIX = "eventarc-"
"""Eventarc names the subscription of a Pub/Sub trigger eventarc-REGION-TRIGGER-sub-NNN."""


def check_function_id(value: object, what: str = "function") -> str:
    """`value` if it is a valid function id, else InvalidAttributeError naming the rule."""
    if not isinstance(value, str) or not _FUNCTION_ID.fullmatch(value):
        raise InvalidAttributeError(
            f"{what} {value!r} is not a valid function id ({FUNCTION_ID_RULE})", field=what
        )
    return value


def is_region(value: str) -> bool:
    """Whether `value` has the form of a Google Cloud region."""
    return bool(_REGION.fullmatch(value))


def location_path(project: str, region: str) -> str:
    """`projects/P/locations/R`: the parent of a region's functions."""
    return f"projects/{project}/locations/{region}"


def function_path(project: str, region: str, function: str) -> str:
    """`projects/P/locations/R/functions/F`."""
    return f"{location_path(project, region)}/functions/{function}"


def parse_location_path(value: str) -> tuple[str, str] | None:
    """(project, region) of `projects/P/locations/R`, None if it is not one."""
    match = _LOCATION_PATH.fullmatch(value)
    return (match.group(1), match.group(2)) if match else None


def parse_function_path(value: str) -> tuple[str, str, str] | None:
    """(project, region, function id) of a function's resource name, None if it is not one."""
    match = _FUNCTION_PATH.fullmatch(value)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def is_service_account(value: str) -> bool:
    """Whether `value` is a service account e-mail (`name@project.iam.gserviceaccount.com`)."""
    return bool(_SERVICE_ACCOUNT.fullmatch(value))


def parse_memory(value: str) -> int | None:
    """Bytes of a Kubernetes-style quantity (`256M`, `512Mi`, `1Gi`, plain bytes), None if not
    one."""
    match = _MEMORY.fullmatch(value.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def memory_in_bounds(size: int) -> bool:
    """Whether `size` bytes is a memory limit Cloud Run functions accepts (128Mi..32Gi)."""
    return MIN_MEMORY_BYTES <= size <= MAX_MEMORY_BYTES


def default_cpu(memory_bytes: int) -> float:
    """The vCPUs Google gives an instance of this much memory when no CPU is set."""
    for limit, cpu in _CPU_TIERS:
        if memory_bytes <= limit:
            return cpu
    return _CPU_TIERS[-1][1]


def parse_cpu(value: str) -> float | None:
    """vCPUs of `1`, `0.583`, `2` or `500m`; None if not a CPU quantity."""
    text = value.strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def environment_problem(name: str) -> str | None:
    """Why `name` cannot be a function's environment variable (None: it can)."""
    if not _ENV_NAME.fullmatch(name):
        return "is not a valid environment variable name"
    if name in RESERVED_ENVIRONMENT or name.startswith("X_GOOGLE_"):
        return "is reserved: Cloud Run functions sets it"
    return None


def label_problem(key: str, value: str) -> str | None:
    """Why `key: value` cannot be a label (None: it can)."""
    if not _LABEL_KEY.fullmatch(key):
        return f"label key {key!r}: 1-63 lowercase letters, digits, _ and -, starting with a letter"
    if not _LABEL_VALUE.fullmatch(value):
        return f"label value {value!r}: at most 63 lowercase letters, digits, _ and -"
    return None


def default_audience(url: str) -> str:
    """The ID-token audience Google expects for a function URL.

    Cloud Run checks `aud` against the service's `*.run.app` URL (scheme and host). A function's
    `https://REGION-PROJECT.cloudfunctions.net/NAME` URL is its own audience, function name
    included. Anything else (a local URL, a custom domain): scheme and host.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    if (parts.hostname or "").endswith(".cloudfunctions.net"):
        name = parts.path.strip("/").split("/", 1)[0]
        return f"{base}/{name}" if name else base
    return base
