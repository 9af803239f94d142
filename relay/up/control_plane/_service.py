"""google.cloud.functions.v2.FunctionService and google.longrunning.Operations, in memory.

Requests are checked as Google checks them (_validate); Create/Update/Delete answer with a
long-running operation whose stages (BUILD, SERVICE, TRIGGER) advance on a worker thread:
the uploaded archive is built (_build), its revision started behind the function's stable URL
(_revisions), and for an event trigger the Eventarc-style push subscription created on the broker.
GetFunction and ListFunctions show what Google shows: state, URLs, defaults filled in.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from relay.protocol import (
    DEFAULT_MAX_INSTANCES,
    GOOGLE_ADDED_ENVIRONMENT,
    default_cpu,
    parse_function_path,
    parse_location_path,
    parse_memory,
)
from relay.up._process import StackError
from relay.up.control_plane import _validate
from relay.up.control_plane._build import BuildFailure, build
from relay.up.control_plane._http import Uploads
from relay.up.control_plane._revisions import Revision, Revisions

_SERVICE = "google.cloud.functions.v2.FunctionService"
_OPERATIONS = "google.longrunning.Operations"
_PUSH_FORMAT = "x-relay-push-format"


class _Abort(Exception):
    """An RPC's error answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _types() -> Any:
    from google.cloud import functions_v2

    return functions_v2


class FunctionService:
    """The in-memory Cloud Functions v2 API of one `relay up`."""

    def __init__(
        self,
        *,
        root: Path,
        uploads: Uploads,
        upload_url: str,
        logs_url: str,
        revisions: Revisions,
        subscriptions: Callable[[], Any],
        publisher: Callable[[], Any],
    ) -> None:
        self.root = root
        self.uploads = uploads
        self.upload_url = upload_url
        self.logs_url = logs_url
        self.revisions = revisions
        self._subscriber = subscriptions
        self._publisher = publisher
        self._lock = threading.Lock()
        self._functions: dict[str, Any] = {}
        self._builds: dict[str, tuple[Path, Path]] = {}
        self._operations: dict[str, Any] = {}
        self._busy: set[str] = set()
        self._counts: dict[str, int] = {}

    # -- gRPC plumbing -----------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The generic handlers for a grpc.server."""
        from google.longrunning import operations_pb2

        f = _types()
        unary = {
            "GetFunction": (self.get_function, f.GetFunctionRequest, f.Function),
            "ListFunctions": (self.list_functions, f.ListFunctionsRequest, f.ListFunctionsResponse),
            "CreateFunction": (self.create_function, f.CreateFunctionRequest, None),
            "UpdateFunction": (self.update_function, f.UpdateFunctionRequest, None),
            "DeleteFunction": (self.delete_function, f.DeleteFunctionRequest, None),
            "GenerateUploadUrl": (
                self.generate_upload_url,
                f.GenerateUploadUrlRequest,
                f.GenerateUploadUrlResponse,
            ),
        }
        service = {
            name: grpc.unary_unary_rpc_method_handler(
                _answering(handler),
                request_deserializer=request.pb().FromString,
                response_serializer=(
                    response.pb().SerializeToString
                    if response is not None
                    else operations_pb2.Operation.SerializeToString
                ),
            )
            for name, (handler, request, response) in unary.items()
        }
        operations = {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                _answering(self.get_operation),
                request_deserializer=operations_pb2.GetOperationRequest.FromString,
                response_serializer=operations_pb2.Operation.SerializeToString,
            ),
            "ListOperations": grpc.unary_unary_rpc_method_handler(
                _answering(self.list_operations),
                request_deserializer=operations_pb2.ListOperationsRequest.FromString,
                response_serializer=operations_pb2.ListOperationsResponse.SerializeToString,
            ),
        }
        return [
            grpc.method_handlers_generic_handler(_SERVICE, service),
            grpc.method_handlers_generic_handler(_OPERATIONS, operations),
        ]

    # -- reads --------------------------------------------------------------------------------

    def get_function(self, request: Any) -> Any:
        """GetFunction: the function as it is now (NOT_FOUND when it does not exist)."""
        if parse_function_path(request.name) is None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"name: {request.name!r} is not projects/PROJECT/locations/REGION/functions/ID",
            )
        with self._lock:
            found = self._functions.get(request.name)
            if found is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            return copy.deepcopy(found)

    def list_functions(self, request: Any) -> Any:
        """ListFunctions of a location (`-`: every location), by name, paged."""
        parent = request.parent
        parsed = parse_location_path(parent)
        if parsed is None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"parent: {parent!r} is not projects/PROJECT/locations/REGION (or locations/-)",
            )
        project, region = parsed
        if request.page_size < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size: must not be negative")
        with self._lock:
            names = sorted(
                name
                for name in self._functions
                if (parsed_name := parse_function_path(name)) is not None
                and parsed_name[0] == project
                and region in ("-", parsed_name[1])
            )
            start = 0
            if request.page_token:
                if request.page_token not in names:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token")
                start = names.index(request.page_token)
            size = request.page_size or 500
            page = names[start : start + size]
            response = _types().ListFunctionsResponse.pb()()
            response.functions.extend(copy.deepcopy(self._functions[name]) for name in page)
            if start + size < len(names):
                response.next_page_token = names[start + size]
            return response

    def get_operation(self, request: Any) -> Any:
        """google.longrunning GetOperation."""
        with self._lock:
            operation = self._operations.get(request.name)
            if operation is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Operation '{request.name}' not found")
            return copy.deepcopy(operation)

    def list_operations(self, request: Any) -> Any:
        """google.longrunning ListOperations (of a location)."""
        from google.longrunning import operations_pb2

        with self._lock:
            response = operations_pb2.ListOperationsResponse()
            response.operations.extend(
                copy.deepcopy(operation)
                for name, operation in sorted(self._operations.items())
                if name.startswith(f"{request.name}/")
            )
            return response

    def generate_upload_url(self, request: Any) -> Any:
        """GenerateUploadUrl: a one-object upload slot on the local HTTP side."""
        problems = _validate.location(request.parent, "parent")
        if problems:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        project, region = parse_location_path(request.parent) or ("", "")
        token = secrets.token_urlsafe(16)
        bucket = f"gcf-v2-uploads-{project}-{region}"
        name = f"{uuid.uuid4()}.zip"
        self.uploads.expect(token, bucket, name)
        response = _types().GenerateUploadUrlResponse.pb()()
        response.upload_url = f"{self.upload_url}/upload/{token}"
        response.storage_source.bucket = bucket
        response.storage_source.object_ = name
        return response

    # -- writes -------------------------------------------------------------------------------

    def create_function(self, request: Any) -> Any:
        """CreateFunction: validate, record DEPLOYING, build and serve on a worker thread."""
        problems = _validate.location(request.parent, "parent")
        function_id = request.function_id
        problems += _validate.function_id(function_id)
        if not request.HasField("function"):
            problems.append("function: required")
        project, region = parse_location_path(request.parent) or ("", "")
        name = f"{request.parent}/functions/{function_id}"
        if request.function.name and request.function.name != name:
            problems.append(f"function.name: {request.function.name!r} is not {name!r}")
        problems += _validate.function(request.function, project=project)
        problems += self._source_problems(request.function)
        if problems:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        function = copy.deepcopy(request.function)
        function.name = name
        with self._lock:
            if name in self._functions:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Function {name} already exists")
            self._fill_outputs(function, project, region, function_id)
            function.state = _types().Function.State.DEPLOYING
            self._functions[name] = function
            self._busy.add(name)
        return self._start("create", name, function, None, build_needed=True)

    def update_function(self, request: Any) -> Any:
        """UpdateFunction: the masked fields (all without a mask) over the current function."""
        from google.protobuf import field_mask_pb2

        name = request.function.name
        parsed = parse_function_path(name)
        if parsed is None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"function.name: {name!r} is not projects/PROJECT/locations/REGION/functions/ID",
            )
        paths = list(request.update_mask.paths) or [
            "description",
            "labels",
            "build_config",
            "service_config",
            "event_trigger",
        ]
        problems = _validate.update_mask(paths)
        if problems:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        with self._lock:
            current = self._functions.get(name)
            if current is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")
            if name in self._busy:
                raise _Abort(
                    grpc.StatusCode.ABORTED,
                    f"An operation on function {name} is already in progress",
                )
            merged = copy.deepcopy(current)
        field_mask_pb2.FieldMask(paths=paths).MergeMessage(
            request.function, merged, replace_message_field=True, replace_repeated_field=True
        )
        problems = _validate.function(merged, project=parsed[0])
        if merged.HasField("event_trigger") != current.HasField("event_trigger"):
            problems.append(
                "event_trigger: the trigger type of a function cannot change (delete the function "
                "and create it again)"
            )
        build_needed = any(path.startswith("build_config") for path in paths)
        if build_needed:
            problems += self._source_problems(merged)
        if problems:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        self._fill_outputs(merged, parsed[0], parsed[1], parsed[2])
        with self._lock:
            self._busy.add(name)
            self._functions[name].state = _types().Function.State.DEPLOYING
        return self._start("update", name, merged, current, build_needed=build_needed)

    def delete_function(self, request: Any) -> Any:
        """DeleteFunction: stop serving it, drop its trigger's subscription, forget it."""
        with self._lock:
            current = self._functions.get(request.name)
            if current is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            if request.name in self._busy:
                raise _Abort(
                    grpc.StatusCode.ABORTED, f"An operation on {request.name} is in progress"
                )
            self._busy.add(request.name)
            current.state = _types().Function.State.DELETING
        return self._start("delete", request.name, current, current, build_needed=False)

    # -- the long-running part ----------------------------------------------------------------

    def _start(
        self, verb: str, name: str, function: Any, previous: Any, *, build_needed: bool
    ) -> Any:
        from google.longrunning import operations_pb2

        f = _types()
        project, region, _ = parse_function_path(name) or ("", "", "")
        operation = operations_pb2.Operation(
            name=f"projects/{project}/locations/{region}/operations/operation-"
            f"{int(time.time() * 1000)}-{secrets.token_hex(6)}"
        )
        metadata = f.OperationMetadata.pb()(target=name, verb=verb, api_version="v2", build_name="")
        metadata.create_time.GetCurrentTime()
        metadata.operation_type = {
            "create": f.OperationType.CREATE_FUNCTION,
            "update": f.OperationType.UPDATE_FUNCTION,
            "delete": f.OperationType.DELETE_FUNCTION,
        }[verb]
        stage_names = ["BUILD", "SERVICE"] if verb != "delete" else ["SERVICE"]
        if function.HasField("event_trigger"):
            stage_names.append("TRIGGER")
        for stage in stage_names:
            metadata.stages.add(
                name=f.Stage.Name[stage].value, state=f.Stage.State.NOT_STARTED.value
            )
        metadata.request_resource.Pack(function)
        operation.metadata.Pack(metadata)
        with self._lock:
            self._operations[operation.name] = operation
        worker = threading.Thread(
            target=self._run,
            args=(operation.name, verb, name, function, previous, build_needed),
            name=f"relay-functions-{verb}",
            daemon=True,
        )
        worker.start()
        return copy.deepcopy(operation)

    def _run(
        self,
        operation_name: str,
        verb: str,
        name: str,
        function: Any,
        previous: Any,
        build_needed: bool,
    ) -> None:
        f = _types()
        try:
            if verb == "delete":
                self._stage(operation_name, "SERVICE", "IN_PROGRESS")
                self.revisions.stop(name)
                self._drop_trigger(function)
                self._stage(operation_name, "SERVICE", "COMPLETE")
                with self._lock:
                    del self._functions[name]
                self._finish(operation_name, None, None)
                return
            if build_needed:
                self._stage(operation_name, "BUILD", "IN_PROGRESS")
                self._build(operation_name, name, function)
                self._stage(operation_name, "BUILD", "COMPLETE")
            else:
                self._stage(operation_name, "BUILD", "COMPLETE", "skipped: the source is unchanged")
                with self._lock:
                    function.build_config.build = previous.build_config.build
            self._stage(operation_name, "SERVICE", "IN_PROGRESS")
            self._serve(name, function)
            self._stage(operation_name, "SERVICE", "COMPLETE")
            if function.HasField("event_trigger"):
                self._stage(operation_name, "TRIGGER", "IN_PROGRESS")
                self._ensure_trigger(function, previous)
                self._stage(operation_name, "TRIGGER", "COMPLETE")
            function.state = f.Function.State.ACTIVE
            function.update_time.GetCurrentTime()
            with self._lock:
                self._functions[name] = function
            self._finish(operation_name, function, None)
        except (BuildFailure, StackError, _Abort, OSError) as exc:
            message = exc.message if isinstance(exc, _Abort) else str(exc)
            with self._lock:
                if previous is None:
                    failed = self._functions[name]
                    failed.state = f.Function.State.FAILED
                    failed.state_messages.add(
                        severity=f.StateMessage.Severity.ERROR.value,
                        type_="DeploymentFailed",
                        message=message,
                    )
                else:
                    self._functions[name] = previous
                    previous.state = f.Function.State.ACTIVE
            self._finish(operation_name, None, (3, message))
        finally:
            with self._lock:
                self._busy.discard(name)

    def _build(self, operation_name: str, name: str, function: Any) -> None:
        storage = function.build_config.source.storage_source
        data = self.uploads.get(storage.bucket, storage.object_)
        build_id = str(uuid.uuid4())
        project, region, function_id = parse_function_path(name) or ("", "", "")
        log = self.root / "logs" / "builds" / f"{build_id}.log"
        link = f"{self.logs_url}/builds/{build_id}.log"
        self._stage(operation_name, "BUILD", "IN_PROGRESS", resource_uri=link)
        with self._lock:
            self._operation_metadata(
                operation_name
            ).build_name = f"projects/{project}/locations/{region}/builds/{build_id}"
        if data is None:
            raise BuildFailure(f"source gs://{storage.bucket}/{storage.object_} was not uploaded")
        try:
            built = build(
                data,
                self.root / "functions" / function_id / build_id,
                runtime=function.build_config.runtime,
                log=log,
            )
        except BuildFailure as exc:
            raise BuildFailure(
                f"Build failed: {exc}. For more details see the logs at {link}"
            ) from None
        function.build_config.build = f"projects/{project}/locations/{region}/builds/{build_id}"
        resolved = function.build_config.source_provenance.resolved_storage_source
        resolved.bucket, resolved.object_ = storage.bucket, storage.object_
        resolved.generation = int(time.time() * 1e6)
        with self._lock:
            self._builds[function.build_config.build] = built

    def _serve(self, name: str, function: Any) -> None:
        project, _, function_id = parse_function_path(name) or ("", "", "")
        with self._lock:
            source, site = self._builds[function.build_config.build]
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
        revision = f"{function_id}-{count:05d}-{secrets.token_hex(2)[:3]}"
        log = self.root / "logs" / "functions" / f"{function_id}.log"
        account = function.service_config.service_account_email
        self.revisions.check_service_account(account)
        try:
            self.revisions.serve(
                Revision(
                    function=name,
                    function_id=function_id,
                    revision=revision,
                    project=project,
                    source=source,
                    site=site,
                    entry_point=function.build_config.entry_point or function_id,
                    signature_type="cloudevent" if function.HasField("event_trigger") else "http",
                    environment=dict(function.service_config.environment_variables),
                    timeout_seconds=function.service_config.timeout_seconds,
                    service_account=account,
                    log=log,
                )
            )
        except StackError as exc:
            link = f"{self.logs_url}/functions/{function_id}.log"
            raise StackError(
                f"Could not create or update Cloud Run service {function_id}, Container "
                f"Healthcheck failed: the revision {revision} did not start. Logs URL: {link}\n"
                f"{exc}"
            ) from None
        function.service_config.revision = revision
        url = self.revisions.url(name)
        function.service_config.uri = url
        function.url = url

    def _ensure_trigger(self, function: Any, previous: Any) -> None:
        """The Eventarc trigger's push subscription on the topic, as Eventarc creates it."""
        from google.api_core import exceptions

        trigger = function.event_trigger
        subscriber, publisher = self._subscriber(), self._publisher()
        if previous is not None and previous.event_trigger.pubsub_topic != trigger.pubsub_topic:
            self._drop_trigger(previous)
        subscription = _trigger_subscription(function)
        with contextlib.suppress(exceptions.AlreadyExists):
            publisher.create_topic(request={"name": trigger.pubsub_topic}, timeout=30)
        push = {
            "push_endpoint": function.service_config.uri,
            "attributes": {_PUSH_FORMAT: "cloudevent"},
            "oidc_token": {
                "service_account_email": trigger.service_account_email,
                "audience": function.service_config.uri,
            },
        }
        try:
            subscriber.create_subscription(
                request={
                    "name": subscription,
                    "topic": trigger.pubsub_topic,
                    "push_config": push,
                    "ack_deadline_seconds": 600,
                    "retry_policy": {"minimum_backoff": "10s", "maximum_backoff": "600s"},
                    "message_retention_duration": "86400s",
                },
                timeout=30,
            )
        except exceptions.AlreadyExists:
            from google.protobuf import field_mask_pb2

            subscriber.update_subscription(
                request={
                    "subscription": {"name": subscription, "push_config": push},
                    "update_mask": field_mask_pb2.FieldMask(paths=["push_config"]),
                },
                timeout=30,
            )

    def _drop_trigger(self, function: Any) -> None:
        from google.api_core import exceptions

        if not function.HasField("event_trigger"):
            return
        with contextlib.suppress(exceptions.NotFound):
            self._subscriber().delete_subscription(
                request={"subscription": _trigger_subscription(function)}, timeout=30
            )

    # -- helpers ------------------------------------------------------------------------------

    def _source_problems(self, function: Any) -> list[str]:
        storage = function.build_config.source.storage_source
        if storage.bucket and self.uploads.get(storage.bucket, storage.object_) is None:
            return [
                f"build_config.source.storage_source: gs://{storage.bucket}/{storage.object_} "
                "does not exist (upload the archive to the URL GenerateUploadUrl returned first)"
            ]
        return []

    def _fill_outputs(self, function: Any, project: str, region: str, function_id: str) -> None:
        """The fields Google fills in: defaults, service and trigger names, the environment."""
        f = _types()
        function.environment = f.Environment.GEN_2
        service = function.service_config
        service.service = f"projects/{project}/locations/{region}/services/{function_id}"
        service.available_memory = service.available_memory or "256M"
        if not service.available_cpu:
            memory = parse_memory(service.available_memory) or 256 * 10**6
            service.available_cpu = f"{default_cpu(memory):g}"
        service.timeout_seconds = service.timeout_seconds or 60
        service.max_instance_count = service.max_instance_count or DEFAULT_MAX_INSTANCES
        service.max_instance_request_concurrency = service.max_instance_request_concurrency or 1
        service.ingress_settings = (
            service.ingress_settings or f.ServiceConfig.IngressSettings.ALLOW_ALL
        )
        service.service_account_email = (
            service.service_account_email or "000000000000-compute@developer.gserviceaccount.com"
        )
        service.all_traffic_on_latest_revision = True
        for key, value in GOOGLE_ADDED_ENVIRONMENT.items():
            service.environment_variables.setdefault(key, value)
        function.build_config.entry_point = function.build_config.entry_point or function_id
        if function.HasField("event_trigger"):
            trigger = function.event_trigger
            if not trigger.trigger:
                trigger.trigger = (
                    f"projects/{project}/locations/{region}/triggers/{function_id}-"
                    f"{secrets.randbelow(900000) + 100000}"
                )
            trigger.trigger_region = trigger.trigger_region or region
            trigger.service_account_email = (
                trigger.service_account_email or service.service_account_email
            )
        if not function.HasField("create_time"):
            function.create_time.GetCurrentTime()
        function.update_time.GetCurrentTime()

    def _operation_metadata(self, operation_name: str) -> Any:
        """The operation's metadata, unpacked (callers hold the lock and pack it back)."""
        f = _types()
        metadata = f.OperationMetadata.pb()()
        self._operations[operation_name].metadata.Unpack(metadata)
        return _Repacking(self._operations[operation_name], metadata)

    def _stage(
        self,
        operation_name: str,
        stage: str,
        state: str,
        message: str = "",
        resource_uri: str = "",
    ) -> None:
        f = _types()
        with self._lock, self._operation_metadata(operation_name) as metadata:
            for item in metadata.stages:
                if item.name == f.Stage.Name[stage].value:
                    item.state = f.Stage.State[state].value
                    item.message = message or item.message
                    item.resource_uri = resource_uri or item.resource_uri

    def _finish(self, operation_name: str, function: Any, error: tuple[int, str] | None) -> None:
        with self._lock:
            operation = self._operations[operation_name]
            with self._operation_metadata(operation_name) as metadata:
                metadata.end_time.GetCurrentTime()
            operation.done = True
            if error is not None:
                operation.error.code, operation.error.message = error
            elif function is not None:
                operation.response.Pack(function)
            else:
                from google.protobuf import empty_pb2

                operation.response.Pack(empty_pb2.Empty())


class _Repacking:
    """`with` an unpacked operation metadata: packed back into the operation on exit."""

    def __init__(self, operation: Any, metadata: Any) -> None:
        self.operation = operation
        self.metadata = metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metadata, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("operation", "metadata"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.metadata, name, value)
            self.operation.metadata.Pack(self.metadata)

    def __enter__(self) -> Any:
        return self.metadata

    def __exit__(self, *exc: object) -> None:
        self.operation.metadata.Pack(self.metadata)


def _trigger_subscription(function: Any) -> str:
    """Eventarc's name for the subscription of a Pub/Sub trigger."""
    project, _, trigger = function.event_trigger.trigger.split("/")[1::2]
    region = function.event_trigger.trigger_region
    number = int(trigger.rsplit("-", 1)[1]) % 1000
    return f"projects/{project}/subscriptions/eventarc-{region}-{trigger}-sub-{number:03d}"


def _answering(handler: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """An RPC method: the handler's answer, or its _Abort as the call's status."""

    def method(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(request)
        except _Abort as exc:
            context.abort(exc.code, exc.message)

    return method
