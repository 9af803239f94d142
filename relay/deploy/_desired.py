"""What the topology asks Cloud Functions for, field by field, and how a deployed function differs.

Each managed field has its update_mask path, its desired value from the topology and a reader
for what Google returns; a deploy sends exactly the paths whose values differ. Memory and CPU
compare by quantity (Google may write `256M` back as `256Mi`-equivalent forms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.deploy._environment import function_environment
from relay.protocol import (
    GOOGLE_ADDED_ENVIRONMENT,
    PUBSUB_EVENT_TYPE,
    default_cpu,
    function_path,
    location_path,
    parse_cpu,
    parse_memory,
    topic_path,
)
from relay.topology import Function, Topology

SOURCE_LABEL = "relay-source"
"""The label holding the deployed archive's digest: how a deploy knows the code is unchanged."""
_INGRESS = {
    "internal": "ALLOW_INTERNAL_ONLY",
    "internal-and-gclb": "ALLOW_INTERNAL_AND_GCLB",
    "all": "ALLOW_ALL",
}
Trigger = Literal["http", "eventarc"]


@dataclass(frozen=True)
class DesiredFunction:
    """A function as relay deploys it: resource names, build and service settings, trigger."""

    topology_name: str
    name: str
    """`projects/P/locations/R/functions/F`."""
    parent: str
    function_id: str
    runtime: str
    entry_point: str
    service_account: str
    """The runtime identity's e-mail ("" leaves Google's default compute account)."""
    timeout_seconds: int
    memory: str
    cpu: str
    environment: Mapping[str, str]
    max_instances: int
    concurrency: int
    ingress: str
    trigger: Trigger
    trigger_topic: str = ""
    trigger_service_account: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def trigger_kind(self) -> str:
        """How requests reach it, in words."""
        if self.trigger == "http":
            return "an HTTP function (relay's push subscription or your own puller)"
        return f"an Eventarc trigger on {self.trigger_topic}"


def desired_function(topology: Topology, function: Function) -> DesiredFunction:
    """The deployment the topology declares for `function` (its source digest is added later)."""
    identities = topology.identities
    runtime_account = ""
    if function.runtime_identity is not None:
        runtime_account = identities[function.runtime_identity].service_account or ""
    memory = parse_memory(function.memory) or 0
    cpu = default_cpu(memory)
    # Google serves more than one request per instance only with at least one full vCPU.
    if function.concurrency > 1 and cpu < 1:
        cpu = 1.0
    return DesiredFunction(
        topology_name=function.name,
        name=function_path(topology.project, function.region, function.name),
        parent=location_path(topology.project, function.region),
        function_id=function.name,
        runtime=function.runtime,
        entry_point=function.entry_point,
        service_account=runtime_account,
        timeout_seconds=function.timeout_seconds,
        memory=function.memory,
        cpu=f"{cpu:g}",
        environment=function_environment(topology, function),
        max_instances=function.max_instances,
        concurrency=function.concurrency,
        ingress=_INGRESS[function.ingress],
        trigger="eventarc" if function.delivery == "eventarc" else "http",
        trigger_topic=(
            topic_path(topology.project, function.topic) if function.delivery == "eventarc" else ""
        ),
        trigger_service_account=(
            (topology.push_service_account(function) or "")
            if function.delivery == "eventarc"
            else ""
        ),
    )


@dataclass(frozen=True)
class _Field:
    """One managed field: its update_mask path, and how to read it from the desired function and
    from a deployed one (raw protobuf `Function`) as comparable values."""

    path: str
    desired: Callable[[DesiredFunction], object]
    actual: Callable[[Any], object]
    same: Callable[[object, object], bool] = lambda a, b: a == b


def _memory_equal(desired: object, actual: object) -> bool:
    return parse_memory(str(desired)) == parse_memory(str(actual or "256M"))


def _cpu_equal(desired: object, actual: object) -> bool:
    wanted, found = parse_cpu(str(desired)), parse_cpu(str(actual))
    return wanted is not None and found is not None and abs(wanted - found) < 0.01


def _without_google_additions(desired: object, actual: object) -> dict[str, str]:
    """The deployed environment less what Google adds by itself (unless relay sets it too)."""
    assert isinstance(desired, dict)
    assert isinstance(actual, dict)
    return {
        key: value
        for key, value in actual.items()
        if key in desired or GOOGLE_ADDED_ENVIRONMENT.get(key) != value
    }


def _actual_cpu(pb: Any) -> str:
    """The CPU Google reports, or what its memory tier gives when none is set."""
    if pb.service_config.available_cpu:
        return str(pb.service_config.available_cpu)
    return f"{default_cpu(parse_memory(pb.service_config.available_memory or '256M') or 0):g}"


def _ingress_name(pb: Any) -> str:
    from google.cloud.functions_v2 import ServiceConfig

    value = pb.service_config.ingress_settings or ServiceConfig.IngressSettings.ALLOW_ALL
    return str(ServiceConfig.IngressSettings(value).name)


def _retry_name(pb: Any) -> str:
    from google.cloud.functions_v2 import EventTrigger

    return str(EventTrigger.RetryPolicy(pb.event_trigger.retry_policy).name)


_FIELDS: tuple[_Field, ...] = (
    _Field("build_config.runtime", lambda d: d.runtime, lambda pb: pb.build_config.runtime),
    _Field(
        "build_config.entry_point", lambda d: d.entry_point, lambda pb: pb.build_config.entry_point
    ),
    _Field(
        "service_config.service_account_email",
        lambda d: d.service_account or None,
        lambda pb: pb.service_config.service_account_email or None,
        lambda desired, actual: desired is None or desired == actual,
    ),
    _Field(
        "service_config.timeout_seconds",
        lambda d: d.timeout_seconds,
        lambda pb: pb.service_config.timeout_seconds or 60,
    ),
    _Field(
        "service_config.available_memory",
        lambda d: d.memory,
        lambda pb: pb.service_config.available_memory,
        _memory_equal,
    ),
    _Field("service_config.available_cpu", lambda d: d.cpu, _actual_cpu, _cpu_equal),
    _Field(
        "service_config.environment_variables",
        lambda d: dict(d.environment),
        lambda pb: dict(pb.service_config.environment_variables),
        lambda desired, actual: desired == _without_google_additions(desired, actual),
    ),
    _Field(
        "service_config.max_instance_count",
        lambda d: d.max_instances,
        lambda pb: pb.service_config.max_instance_count,
    ),
    _Field(
        "service_config.max_instance_request_concurrency",
        lambda d: d.concurrency,
        lambda pb: pb.service_config.max_instance_request_concurrency or 1,
    ),
    _Field("service_config.ingress_settings", lambda d: d.ingress, _ingress_name),
    _Field(
        "event_trigger.service_account_email",
        lambda d: d.trigger_service_account,
        lambda pb: pb.event_trigger.service_account_email,
    ),
    _Field(
        "event_trigger.retry_policy",
        lambda d: "RETRY_POLICY_RETRY" if d.trigger == "eventarc" else "RETRY_POLICY_UNSPECIFIED",
        _retry_name,
    ),
)


def trigger_of(pb: Any) -> Trigger:
    """How a deployed function (raw protobuf) is triggered."""
    return "eventarc" if pb.HasField("event_trigger") else "http"


def differences(desired: DesiredFunction, pb: Any, digest: str) -> list[tuple[str, str]]:
    """`(update_mask path, "actual -> desired")` for each managed field that differs, the source
    (`build_config.source` with the `labels` holding its digest) first when the code changed."""
    changes: list[tuple[str, str]] = []
    deployed = pb.labels.get(SOURCE_LABEL, "")
    if deployed != digest:
        changes.append(("build_config.source", f"{deployed or 'unknown'} -> {digest}"))
        changes.append(("labels", f"{SOURCE_LABEL}: {deployed or '(none)'} -> {digest}"))
    for item in _FIELDS:
        if item.path.startswith("event_trigger.") and desired.trigger != "eventarc":
            continue
        wanted, found = item.desired(desired), item.actual(pb)
        if not item.same(wanted, found):
            changes.append((item.path, f"{_show(found)} -> {_show(wanted)}"))
    return changes


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={item}" for key, item in sorted(value.items())) + "}"
    return "(default)" if value in (None, "") else str(value)


def to_function(
    desired: DesiredFunction,
    *,
    storage_source: tuple[str, str] | None,
    labels: Mapping[str, str],
) -> Any:
    """The `functions_v2.Function` of a CreateFunction or UpdateFunction request.

    `storage_source` is the (bucket, object) GenerateUploadUrl returned (None: the source is not
    part of this request); `labels` the function's labels with relay's digest in them.
    """
    from google.cloud import functions_v2

    build = functions_v2.BuildConfig(runtime=desired.runtime, entry_point=desired.entry_point)
    if storage_source is not None:
        bucket, name = storage_source
        build.source = functions_v2.Source(
            storage_source=functions_v2.StorageSource(bucket=bucket, object_=name)
        )
    service = functions_v2.ServiceConfig(
        timeout_seconds=desired.timeout_seconds,
        available_memory=desired.memory,
        available_cpu=desired.cpu,
        environment_variables=dict(desired.environment),
        max_instance_count=desired.max_instances,
        max_instance_request_concurrency=desired.concurrency,
        ingress_settings=getattr(functions_v2.ServiceConfig.IngressSettings, desired.ingress),
        all_traffic_on_latest_revision=True,
    )
    if desired.service_account:
        service.service_account_email = desired.service_account
    function = functions_v2.Function(
        name=desired.name,
        build_config=build,
        service_config=service,
        labels=dict(labels),
        environment=functions_v2.Environment.GEN_2,
    )
    if desired.trigger == "eventarc":
        function.event_trigger = functions_v2.EventTrigger(
            event_type=PUBSUB_EVENT_TYPE,
            pubsub_topic=desired.trigger_topic,
            service_account_email=desired.trigger_service_account,
            retry_policy=functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY,
        )
    return function
