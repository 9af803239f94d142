"""What `relay deploy` would send Google, field by field, against the v2 API's rules: required
fields, resource-name and quantity formats, enums and bounds. No server is involved: these are the
requests themselves (the local control plane checks the same requests as a server in
test_local_deploy.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud import functions_v2

from relay.deploy import (
    SOURCE_LABEL,
    FunctionChange,
    PackageError,
    describe_requests,
    desired_function,
    package,
    relay_wheel,
    request_for,
    wheel_name,
)
from relay.deploy._desired import differences
from relay.protocol import (
    MAX_HTTP_TIMEOUT_SECONDS,
    PUBSUB_EVENT_TYPE,
    RELAY_RUNTIMES,
    default_audience,
    is_service_account,
    memory_in_bounds,
    parse_memory,
)
from relay.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[2]
_PARENT = re.compile(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z]+-[a-z]+[0-9]+")
_ID = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UPLOAD = ("gcf-v2-uploads-123-europe-west1", "3f2a.zip")


def _create(topology: Topology, name: str) -> Any:
    function = topology.functions[name]
    archive = package(function)
    change = FunctionChange(
        desired_function(topology, function),
        archive,
        "create",
        labels={SOURCE_LABEL: archive.digest_label},
    )
    return functions_v2.CreateFunctionRequest.pb(request_for(change, _UPLOAD))


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(REPO / "relay.yaml")


@pytest.mark.parametrize("name", ["echo", "csv-profile", "dead-letter"])
def test_create_requests_hold_every_required_field_in_googles_format(
    topology: Topology, name: str
) -> None:
    function = topology.functions[name]
    request = _create(topology, name)

    assert _PARENT.fullmatch(request.parent)
    assert request.parent == "projects/relay-local/locations/europe-west1"
    assert _ID.fullmatch(request.function_id)
    assert request.function_id == name
    assert request.function.name == f"{request.parent}/functions/{name}"
    assert request.function.environment == functions_v2.Environment.GEN_2
    build = request.function.build_config
    assert build.runtime in RELAY_RUNTIMES
    assert build.entry_point == function.entry_point
    assert (build.source.storage_source.bucket, build.source.storage_source.object_) == _UPLOAD
    service = request.function.service_config
    # at least the ack deadline plus the margin, within an HTTP function's 60 minutes
    assert function.ack_deadline_seconds + 10 <= service.timeout_seconds <= MAX_HTTP_TIMEOUT_SECONDS
    assert service.timeout_seconds == function.ack_deadline_seconds + 10
    memory = parse_memory(service.available_memory)
    assert memory is not None
    assert memory_in_bounds(memory)
    assert float(service.available_cpu) == pytest.approx(0.167)
    assert service.max_instance_count == 100
    assert service.max_instance_request_concurrency == 1
    assert (
        service.ingress_settings == functions_v2.ServiceConfig.IngressSettings.ALLOW_INTERNAL_ONLY
    )
    assert is_service_account(service.service_account_email)
    assert service.service_account_email == "relay-functions@relay-local.iam.gserviceaccount.com"
    assert service.all_traffic_on_latest_revision
    environment = dict(service.environment_variables)
    assert environment["RELAY_REPLY_TOPICS"] == "projects/relay-local/topics/relay-results"
    assert environment["RELAY_MAX_DELIVERY_ATTEMPTS"] == "5"
    assert {key: environment[key] for key in function.environment} == dict(function.environment)
    assert not request.function.HasField("event_trigger")  # push: relay's subscription feeds it
    assert re.fullmatch(r"[0-9a-f]{32}", request.function.labels[SOURCE_LABEL])


def test_csv_profile_keeps_its_environment_and_longer_timeout(topology: Topology) -> None:
    request = _create(topology, "csv-profile")

    service = request.function.service_config
    assert service.environment_variables["CSV_PROFILE_SOURCES"] == "data"
    assert service.timeout_seconds == 130  # ack deadline 120 s + 10 s: never cut off before it


def _variant(tmp_path: Path, **echo: Any) -> Topology:
    """relay.yaml with echo's entry changed (sources copied next to it)."""
    document = yaml.safe_load((REPO / "relay.yaml").read_text())
    document["functions"]["echo"].update(echo)
    for key, value in list(document["functions"]["echo"].items()):
        if value is None:
            del document["functions"]["echo"][key]
    shutil.copytree(REPO / "functions", tmp_path / "functions")
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_topology(path)


def test_eventarc_delivery_asks_for_one_trigger_with_retries(tmp_path: Path) -> None:
    topology = _variant(tmp_path, delivery="eventarc", ack_deadline="300s")

    request = _create(topology, "echo")

    trigger = request.function.event_trigger
    assert trigger.event_type == PUBSUB_EVENT_TYPE
    assert trigger.pubsub_topic == "projects/relay-local/topics/relay-echo-requests"
    assert trigger.service_account_email == "relay-push@relay-local.iam.gserviceaccount.com"
    assert trigger.retry_policy == functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_RETRY
    assert request.function.service_config.timeout_seconds == 310  # within an event's 540 s


def test_concurrency_above_one_gets_a_full_cpu(tmp_path: Path) -> None:
    topology = _variant(tmp_path, concurrency=8, memory="512Mi", max_instances=3)

    service = _create(topology, "echo").function.service_config

    assert service.available_cpu == "1"  # Google refuses concurrency > 1 below one vCPU
    assert service.available_memory == "512Mi"
    assert (service.max_instance_count, service.max_instance_request_concurrency) == (3, 8)


def _deployed(request: Any) -> Any:
    """The function as Google would show it after that create: defaults and its own variable."""
    function = type(request.function)()
    function.CopyFrom(request.function)
    function.service_config.environment_variables["LOG_EXECUTION_ID"] = "true"
    function.service_config.uri = "https://echo-abc123-ew.a.run.app"
    function.state = functions_v2.Function.State.ACTIVE
    return function


def test_an_unchanged_function_differs_in_nothing(topology: Topology) -> None:
    function = topology.functions["echo"]
    request = _create(topology, "echo")
    digest = request.function.labels[SOURCE_LABEL]

    assert differences(desired_function(topology, function), _deployed(request), digest) == []


def test_one_environment_change_is_one_masked_field(topology: Topology) -> None:
    function = topology.functions["echo"]
    deployed = _deployed(_create(topology, "echo"))
    deployed.service_config.environment_variables["RELAY_MAX_DELIVERY_ATTEMPTS"] = "9"
    digest = deployed.labels[SOURCE_LABEL]

    found = differences(desired_function(topology, function), deployed, digest)

    assert [path for path, _ in found] == ["service_config.environment_variables"]
    archive = package(function)
    change = FunctionChange(
        desired_function(topology, function),
        archive,
        "update",
        mask=("service_config.environment_variables",),
        labels=dict(deployed.labels),
    )
    update = functions_v2.UpdateFunctionRequest.pb(request_for(change, None))
    assert list(update.update_mask.paths) == ["service_config.environment_variables"]
    assert update.function.name == "projects/relay-local/locations/europe-west1/functions/echo"
    assert not update.function.build_config.HasField("source")  # no upload for an env change
    assert not any(line.startswith("GenerateUploadUrl") for line in describe_requests(change))


def test_memory_compares_by_quantity_and_code_by_digest(topology: Topology) -> None:
    function = topology.functions["echo"]
    deployed = _deployed(_create(topology, "echo"))
    deployed.service_config.available_memory = "256000k"  # the same 256M, written otherwise
    desired = desired_function(topology, function)

    assert differences(desired, deployed, deployed.labels[SOURCE_LABEL]) == []
    assert [path for path, _ in differences(desired, deployed, "0" * 32)] == [
        "build_config.source",
        "labels",
    ]


def test_the_archive_is_reproducible_and_carries_relays_wheel(topology: Topology) -> None:
    function = topology.functions["echo"]

    first, second = package(function), package(function)

    assert first.data == second.data
    assert first.files == ("main.py", wheel_name(), "requirements.txt")
    with zipfile.ZipFile(io.BytesIO(first.data)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.read("main.py") == (function.source / "main.py").read_bytes()


def test_relays_wheel_is_a_valid_wheel_with_its_schemas() -> None:
    with zipfile.ZipFile(io.BytesIO(relay_wheel())) as wheel:
        names = set(wheel.namelist())
        version = wheel_name().split("-")[1]
        dist_info = f"relay-{version}.dist-info"
        assert {"relay/__init__.py", "relay/functions/__init__.py", "relay/py.typed"} <= names
        assert {f"relay/_schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")} <= names
        assert f"{dist_info}/METADATA" in names
        assert b"Root-Is-Purelib: true" in wheel.read(f"{dist_info}/WHEEL")
        assert not any(name.endswith(".pyc") or "__pycache__" in name for name in names)
        record = wheel.read(f"{dist_info}/RECORD").decode().splitlines()
        assert {line.split(",")[0] for line in record} == names
        for line in record:
            name, digest, size = line.split(",")
            if not digest:
                continue
            data = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == f"sha256={expected.decode()}", name
            assert int(size) == len(data)


def test_a_folder_whose_requirements_do_not_name_the_wheel_is_refused(tmp_path: Path) -> None:
    topology = _variant(tmp_path)
    requirements = tmp_path / "functions" / "echo" / "requirements.txt"
    requirements.write_text("functions-framework>=3.10,<4\n")

    with pytest.raises(PackageError, match=r"does not name \./relay-.*-py3-none-any\.whl"):
        package(topology.functions["echo"])


@pytest.mark.parametrize(
    ("url", "audience"),
    [
        ("https://echo-abc123-ew.a.run.app", "https://echo-abc123-ew.a.run.app"),
        ("https://echo-abc123-ew.a.run.app/some/path?x=1", "https://echo-abc123-ew.a.run.app"),
        (
            "https://europe-west1-relay-local.cloudfunctions.net/echo",
            "https://europe-west1-relay-local.cloudfunctions.net/echo",
        ),
        (
            "https://europe-west1-relay-local.cloudfunctions.net/echo/sub?x=1",
            "https://europe-west1-relay-local.cloudfunctions.net/echo",
        ),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ],
)
def test_the_default_id_token_audience_is_what_google_checks(url: str, audience: str) -> None:
    assert default_audience(url) == audience
