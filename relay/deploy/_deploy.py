"""Plan and apply deployments with `FunctionServiceClient`: one GetFunction per function, then
GenerateUploadUrl + upload and CreateFunction, or UpdateFunction with a mask of what changed, each
long-running operation waited on; nothing at all for a function that is already as declared."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.deploy._client import function_client, upload
from relay.deploy._desired import (
    SOURCE_LABEL,
    DesiredFunction,
    desired_function,
    differences,
    to_function,
    trigger_of,
)
from relay.deploy._package import Archive, package, relay_wheel
from relay.topology import Topology

Action = Literal["create", "update", "unchanged", "conflict"]
Progress = Callable[[str, str], None]
"""progress(function, text): what a deploy is doing right now."""
_PLACEHOLDER = "(returned by GenerateUploadUrl)"


class DeployError(RuntimeError):
    """A deploy cannot start (bad selection, a conflict) or Google refused or failed it."""


@dataclass(frozen=True)
class FunctionChange:
    """What a deploy does (or would do) to one function."""

    desired: DesiredFunction
    archive: Archive
    action: Action
    details: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    """The labels to send: the deployed function's, with relay's source digest."""

    @property
    def needs_source(self) -> bool:
        """Whether this change uploads the archive (a create, or changed code)."""
        return self.action == "create" or "build_config.source" in self.mask


@dataclass(frozen=True)
class DeployPlan:
    """Every selected function with its action, in topology order."""

    project: str
    changes: tuple[FunctionChange, ...]

    @property
    def pending(self) -> tuple[FunctionChange, ...]:
        """The changes that send a request."""
        return tuple(change for change in self.changes if change.action in ("create", "update"))


def select(topology: Topology, names: Sequence[str]) -> list[str]:
    """The topology's functions to deploy (all when `names` is empty); unknown names refused."""
    unknown = [name for name in names if name not in topology.functions]
    if unknown:
        known = ", ".join(topology.functions)
        raise DeployError(f"not in the topology: {', '.join(unknown)} (its functions: {known})")
    return list(dict.fromkeys(names)) or list(topology.functions)


def plan(topology: Topology, names: Sequence[str], client: Any) -> DeployPlan:
    """Package each function and compare it with what is deployed; reads only."""
    from google.api_core import exceptions

    wheel = relay_wheel()
    changes: list[FunctionChange] = []
    for name in select(topology, names):
        function = topology.functions[name]
        desired = desired_function(topology, function)
        archive = package(function, wheel)
        try:
            current = client.get_function(request={"name": desired.name})
        except exceptions.NotFound:
            changes.append(
                FunctionChange(
                    desired,
                    archive,
                    "create",
                    _summary(desired, archive),
                    labels={SOURCE_LABEL: archive.digest_label},
                )
            )
            continue
        except exceptions.GoogleAPICallError as exc:
            raise DeployError(f"cannot read {desired.name}: {exc.message}") from exc
        pb = type(current).pb(current)
        if trigger_of(pb) != desired.trigger:
            deployed = "an Eventarc trigger" if trigger_of(pb) == "eventarc" else "an HTTP trigger"
            detail = (
                f"it is deployed with {deployed}, the topology makes it {desired.trigger_kind}; "
                "a function keeps its trigger type, and two delivery paths would run every "
                f"request twice: delete it (gcloud functions delete {desired.function_id} "
                f"--region {desired.parent.rpartition('/')[2]}), then deploy again"
            )
            changes.append(FunctionChange(desired, archive, "conflict", (detail,)))
            continue
        found = differences(desired, pb, archive.digest_label)
        labels = {**dict(pb.labels), SOURCE_LABEL: archive.digest_label}
        action: Action = "update" if found else "unchanged"
        changes.append(
            FunctionChange(
                desired,
                archive,
                action,
                tuple(f"{path}: {change}" for path, change in found),
                tuple(dict.fromkeys(path for path, _ in found)),
                labels,
            )
        )
    return DeployPlan(topology.project, tuple(changes))


def request_for(change: FunctionChange, storage_source: tuple[str, str] | None) -> Any:
    """The CreateFunctionRequest or UpdateFunctionRequest `change` sends."""
    from google.cloud import functions_v2
    from google.protobuf import field_mask_pb2

    function = to_function(
        change.desired,
        storage_source=storage_source if change.needs_source else None,
        labels=change.labels,
    )
    if change.action == "create":
        return functions_v2.CreateFunctionRequest(
            parent=change.desired.parent, function=function, function_id=change.desired.function_id
        )
    return functions_v2.UpdateFunctionRequest(
        function=function, update_mask=field_mask_pb2.FieldMask(paths=list(change.mask))
    )


def describe_requests(change: FunctionChange) -> list[str]:
    """The requests `change` would send, as text (what --dry-run prints)."""
    from google.cloud import functions_v2

    lines: list[str] = []
    if change.needs_source:
        upload_request = functions_v2.GenerateUploadUrlRequest(parent=change.desired.parent)
        lines.append(f"GenerateUploadUrl {_json(upload_request)}")
        lines.append(
            f"PUT {_PLACEHOLDER} ({len(change.archive.data)} bytes, sha256 {change.archive.sha256},"
            f" {len(change.archive.files)} files)"
        )
    if change.action in ("create", "update"):
        verb = "CreateFunction" if change.action == "create" else "UpdateFunction"
        request = request_for(change, (_PLACEHOLDER, _PLACEHOLDER))
        lines.append(f"{verb} {_json(request)}")
    return lines


@dataclass(frozen=True)
class Deployed:
    """A function after its deploy: its state and URL as GetFunction shows them."""

    change: FunctionChange
    uri: str
    state: str


def apply(
    plan: DeployPlan,
    client: Any,
    *,
    progress: Progress | None = None,
    timeout: float = 1800.0,
    poll: float = 2.0,
) -> list[Deployed]:
    """Deploy each pending change, one after the other; refuses any conflict before the first.

    Raises DeployError at the first failure, with Google's error and the build log's link.
    """
    conflicts = [change for change in plan.changes if change.action == "conflict"]
    if conflicts:
        lines = "\n".join(
            f"  {change.desired.function_id}: {'; '.join(change.details)}" for change in conflicts
        )
        raise DeployError(f"nothing deployed, the topology conflicts with the project:\n{lines}")
    say = progress or (lambda _name, _text: None)
    done: list[Deployed] = []
    for change in plan.changes:
        name = change.desired.function_id
        if change.action == "unchanged":
            current = client.get_function(request={"name": change.desired.name})
        else:
            current = _deploy_one(change, client, say, timeout, poll)
        done.append(
            Deployed(change, current.service_config.uri, type(current).State(current.state).name)
        )
        say(name, f"{change.action}: {current.service_config.uri}")
    return done


def _deploy_one(
    change: FunctionChange, client: Any, say: Progress, timeout: float, poll: float
) -> Any:
    from google.api_core import exceptions

    name = change.desired.function_id
    storage_source = None
    try:
        if change.needs_source:
            say(name, "GenerateUploadUrl")
            target = client.generate_upload_url(request={"parent": change.desired.parent})
            say(name, f"uploading {len(change.archive.data)} bytes")
            upload(target.upload_url, change.archive.data)
            storage_source = (target.storage_source.bucket, target.storage_source.object_)
        request = request_for(change, storage_source)
        if change.action == "create":
            say(name, "CreateFunction")
            operation = client.create_function(request=request)
        else:
            say(name, f"UpdateFunction ({', '.join(change.mask)})")
            operation = client.update_function(request=request)
    except exceptions.GoogleAPICallError as exc:
        raise DeployError(f"{change.action} {change.desired.name} refused: {exc.message}") from exc
    except OSError as exc:
        raise DeployError(f"{change.action} {change.desired.name}: {exc}") from exc
    return _wait(operation, change, say, timeout, poll)


def _wait(
    operation: Any, change: FunctionChange, say: Progress, timeout: float, poll: float
) -> Any:
    """Poll the long-running operation, reporting its stages, until it ends."""
    name = change.desired.function_id
    deadline = time.monotonic() + timeout
    while not operation.done():
        say(name, _stages(operation.metadata) or "waiting for the operation")
        if time.monotonic() > deadline:
            raise DeployError(
                f"{change.action} {change.desired.name}: still running after {timeout:g}s "
                f"(operation {operation.operation.name})"
            )
        time.sleep(poll)
    if operation.operation.HasField("error"):
        error = operation.operation.error
        log = _build_log(operation.metadata)
        where = f"\n  build log: {log}" if log else ""
        raise DeployError(
            f"{change.action} {change.desired.name} failed (code {error.code}): "
            f"{error.message}{where}"
        )
    return operation.result(timeout=30)


def _stages(metadata: Any) -> str:
    if metadata is None:
        return ""
    return ", ".join(
        f"{_enum(type(stage).Name, stage.name)}: {_enum(type(stage).State, stage.state)}"
        for stage in metadata.stages
    )


def _enum(kind: Any, value: Any) -> str:
    return str(kind(value).name).lower()


def _build_log(metadata: Any) -> str:
    """The BUILD stage's log link, else the build's name."""
    if metadata is None:
        return ""
    for stage in metadata.stages:
        if type(stage).Name(stage.name).name == "BUILD" and stage.resource_uri:
            return str(stage.resource_uri)
    return str(metadata.build_name or "")


def deploy(
    topology: Topology,
    names: Sequence[str] = (),
    *,
    dry_run: bool = False,
    client: Any = None,
    progress: Progress | None = None,
) -> tuple[DeployPlan, list[Deployed]]:
    """Deploy the topology's functions (or those named): what changed, and the result.

    With `dry_run` it only reads (GetFunction) and returns the plan.
    """
    client = client or function_client()
    result = plan(topology, names, client)
    if dry_run:
        return result, []
    return result, apply(result, client, progress=progress)


def _summary(desired: DesiredFunction, archive: Archive) -> tuple[str, ...]:
    return (
        f"runtime {desired.runtime}, entry point {desired.entry_point}",
        f"source {len(archive.data)} bytes ({len(archive.files)} files), sha256 "
        f"{archive.sha256[:16]}...",
        f"memory {desired.memory}, cpu {desired.cpu}, timeout {desired.timeout_seconds}s, "
        f"max {desired.max_instances} instances x {desired.concurrency} concurrent",
        f"ingress {desired.ingress}, runs as {desired.service_account or '(default)'}",
        f"trigger: {desired.trigger_kind}",
    )


def _json(message: Any) -> str:
    from google.protobuf import json_format

    data = json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)
    return json.dumps(data, sort_keys=True)
