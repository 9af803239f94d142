"""Check Cloud Functions v2 requests as Google does: required fields, resource names, enum values
and bounds. Each check returns the violations found (empty: the request is fine); the service
answers INVALID_ARGUMENT with all of them, each naming its field."""

from __future__ import annotations

from typing import Any

from relay.protocol import (
    MAX_CONCURRENCY,
    MAX_EVENT_TIMEOUT_SECONDS,
    MAX_HTTP_TIMEOUT_SECONDS,
    MEMORY_RULE,
    PUBSUB_EVENT_TYPE,
    PYTHON_RUNTIMES,
    check_function_id,
    default_cpu,
    environment_problem,
    is_region,
    is_service_account,
    label_problem,
    memory_in_bounds,
    parse_cpu,
    parse_location_path,
    parse_memory,
)
from relay.protocol import ProtocolError as _ProtocolError

_TOPIC_PREFIX = "projects/"
MUTABLE_PATHS = frozenset(
    {
        "description",
        "labels",
        "build_config",
        "build_config.runtime",
        "build_config.entry_point",
        "build_config.source",
        "build_config.environment_variables",
        "service_config",
        "service_config.timeout_seconds",
        "service_config.available_memory",
        "service_config.available_cpu",
        "service_config.environment_variables",
        "service_config.max_instance_count",
        "service_config.min_instance_count",
        "service_config.ingress_settings",
        "service_config.service_account_email",
        "service_config.all_traffic_on_latest_revision",
        "service_config.max_instance_request_concurrency",
        "event_trigger",
        "event_trigger.event_type",
        "event_trigger.pubsub_topic",
        "event_trigger.service_account_email",
        "event_trigger.retry_policy",
        "event_trigger.trigger_region",
    }
)
"""The update_mask paths this control plane accepts (output-only fields are refused, as by
Google; VPC, secrets and KMS are not emulated)."""


def location(value: str, field: str) -> list[str]:
    """`projects/P/locations/R` with a valid project and region."""
    parsed = parse_location_path(value)
    if not value:
        return [f"{field}: required (projects/PROJECT/locations/REGION)"]
    if parsed is None or not is_region(parsed[1]):
        return [f"{field}: {value!r} is not projects/PROJECT/locations/REGION"]
    return []


def function_id(value: str) -> list[str]:
    """A new function's id."""
    if not value:
        return ["function_id: required"]
    try:
        check_function_id(value, "function_id")
    except _ProtocolError as exc:
        return [exc.message]
    return []


def function(pb: Any, *, project: str) -> list[str]:
    """Every field of a function to create (or of one after an update) that Google would refuse."""
    problems: list[str] = []
    build = pb.build_config
    if not build.runtime:
        problems.append("build_config.runtime: required when deploying a new function")
    elif build.runtime not in PYTHON_RUNTIMES:
        problems.append(
            f"build_config.runtime: {build.runtime!r} is not a supported runtime "
            f"(this control plane serves {', '.join(PYTHON_RUNTIMES)})"
        )
    if build.entry_point and not build.entry_point.isidentifier():
        problems.append(f"build_config.entry_point: {build.entry_point!r} is not a Python name")
    storage = build.source.storage_source
    if not build.source.HasField("storage_source") or not storage.bucket or not storage.object_:
        problems.append(
            "build_config.source.storage_source: required (the bucket and object that "
            "GenerateUploadUrl returned)"
        )
    problems += _service(pb.service_config, event=pb.HasField("event_trigger"))
    if pb.HasField("event_trigger"):
        problems += _trigger(pb.event_trigger, project)
    for key, value in pb.labels.items():
        problem = label_problem(key, value)
        if problem is not None:
            problems.append(f"labels: {problem}")
    if pb.environment == 1:  # GEN_1
        problems.append("environment: GEN_1 functions are not served here (use GEN_2)")
    return problems


def _service(service: Any, *, event: bool) -> list[str]:
    problems: list[str] = []
    longest = MAX_EVENT_TIMEOUT_SECONDS if event else MAX_HTTP_TIMEOUT_SECONDS
    if service.timeout_seconds < 0 or service.timeout_seconds > longest:
        kind = "event-driven" if event else "HTTP"
        problems.append(
            f"service_config.timeout_seconds: {service.timeout_seconds} is out of range for an "
            f"{kind} function (1..{longest})"
        )
    memory = parse_memory(service.available_memory) if service.available_memory else 256 * 10**6
    if memory is None or not memory_in_bounds(memory):
        problems.append(
            f"service_config.available_memory: {service.available_memory!r} is not {MEMORY_RULE}"
        )
        memory = 256 * 10**6
    cpu = parse_cpu(service.available_cpu) if service.available_cpu else default_cpu(memory)
    if cpu is None or not 0.08 <= cpu <= 8:
        problems.append(
            f"service_config.available_cpu: {service.available_cpu!r} is not a vCPU count "
            "from 0.083 to 8"
        )
        cpu = default_cpu(memory)
    concurrency = service.max_instance_request_concurrency
    if not 0 <= concurrency <= MAX_CONCURRENCY:
        problems.append(
            f"service_config.max_instance_request_concurrency: {concurrency} is out of range "
            f"(1..{MAX_CONCURRENCY})"
        )
    elif concurrency > 1 and cpu < 1:
        problems.append(
            f"service_config.max_instance_request_concurrency: {concurrency} needs at least 1 "
            f"vCPU, the function has {cpu:g} (set available_cpu)"
        )
    if service.max_instance_count < 0 or service.min_instance_count < 0:
        problems.append("service_config.max_instance_count/min_instance_count: must not be < 0")
    elif service.max_instance_count and service.min_instance_count > service.max_instance_count:
        problems.append(
            "service_config.min_instance_count: must not be above max_instance_count "
            f"({service.min_instance_count} > {service.max_instance_count})"
        )
    if service.ingress_settings not in (0, 1, 2, 3):
        problems.append(
            f"service_config.ingress_settings: unknown value {service.ingress_settings}"
        )
    for name in service.environment_variables:
        problem = environment_problem(name)
        if problem is not None:
            problems.append(f"service_config.environment_variables.{name}: {problem}")
    if service.service_account_email and not is_service_account(service.service_account_email):
        problems.append(
            f"service_config.service_account_email: {service.service_account_email!r} is not a "
            "service account e-mail"
        )
    return problems


def _trigger(trigger: Any, project: str) -> list[str]:
    problems: list[str] = []
    if not trigger.event_type:
        problems.append("event_trigger.event_type: required")
    elif trigger.event_type != PUBSUB_EVENT_TYPE:
        problems.append(
            f"event_trigger.event_type: {trigger.event_type!r} is not served here "
            f"(only {PUBSUB_EVENT_TYPE})"
        )
    topic = trigger.pubsub_topic
    parts = topic.split("/")
    if trigger.event_type == PUBSUB_EVENT_TYPE and not topic:
        problems.append("event_trigger.pubsub_topic: required for Pub/Sub events")
    elif topic and (len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics"):
        problems.append(f"event_trigger.pubsub_topic: {topic!r} is not projects/P/topics/T")
    elif topic and parts[1] != project:
        problems.append(
            f"event_trigger.pubsub_topic: {topic!r} is not in the function's project {project}"
        )
    if trigger.retry_policy not in (0, 1, 2):
        problems.append(f"event_trigger.retry_policy: unknown value {trigger.retry_policy}")
    if trigger.service_account_email and not is_service_account(trigger.service_account_email):
        problems.append(
            f"event_trigger.service_account_email: {trigger.service_account_email!r} is not a "
            "service account e-mail"
        )
    if trigger.trigger_region and not is_region(trigger.trigger_region):
        problems.append(f"event_trigger.trigger_region: {trigger.trigger_region!r} is not a region")
    return problems


def update_mask(paths: list[str]) -> list[str]:
    """Paths an update may not name: unknown or output-only fields."""
    return [
        f"update_mask: {path!r} is not a field that can be updated"
        for path in paths
        if path not in MUTABLE_PATHS
    ]
