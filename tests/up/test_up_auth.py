"""`relay up --require-auth`: the example topology with every call authenticated and authorized.

Airflow's identity publishes an echo request and waits for its result the way relay's waits do
(a subscription of its own, in its wait project, on the completion topic); the echo function
answers as its runtime identity. Both are processes of their identity (tests/_auth_client.py
for Airflow's side), with only what `relay up` printed for them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _auth_client import Client, client_environment

from relay.functions import PUBSUB_API_ENDPOINT_ENV
from relay.protocol import RESULT_SUCCEEDED, from_message, new_request, to_binary
from relay.topology import load_topology
from relay.up import function_server

REPO = Path(__file__).resolve().parents[2]
PROJECT = "relay-local"
WAITS = "relay-local-waits"
RESULTS = f"projects/{PROJECT}/topics/relay-results"
ECHO_REQUESTS = f"projects/{PROJECT}/topics/relay-echo-requests"


def _wait_for(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if re.search(pattern, text, re.MULTILINE):
            return text
        assert process.poll() is None, f"relay up exited early:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the output of relay up:\n{path.read_text()}")


def test_up_require_auth_runs_every_process_as_its_identity(
    tmp_path: Path, unique: Callable[[str], str]
) -> None:
    output = tmp_path / "up.out"
    env = {**os.environ, "COLUMNS": "300"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    argv = [sys.executable, "-c", "from relay.cli import main; main()", "up"]
    argv += ["--file", str(REPO / "relay.yaml"), "--data-dir", str(tmp_path / ".relay")]
    argv += ["--broker-port", "0", "--require-auth", "--token-lifetime", "30"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    clients: list[Client] = []
    try:
        text = _wait_for(output, r"ready — watching results", process, timeout=120)
        endpoint = re.search(r"^  broker +grpc (\S+) ", text, re.MULTILINE)
        ca = re.search(r"^  auth +TLS \(CA (\S+)\)", text, re.MULTILINE)
        assert endpoint is not None, text
        assert ca is not None, text
        metadata = dict(
            re.findall(
                r"^  identity +(\S+) \(\S+\): GCE_METADATA_HOST=GCE_METADATA_IP=(\S+)$",
                text,
                re.MULTILINE,
            )
        )
        assert set(metadata) == {"airflow", "functions", "pubsub-push"}, text
        printed_extra = re.search(
            r"^  airflow +Google connection extra (\{.*?\}), in every Airflow process",
            text,
            re.MULTILINE,
        )
        assert printed_extra is not None, text
        extra = json.loads(printed_extra.group(1))
        assert extra == {
            "project": PROJECT,
            "api_endpoint": endpoint.group(1),
            "wait_project": WAITS,
        }

        # Airflow's side: exactly the variables `relay up` printed under "clients".
        printed = re.search(r"^  clients +(.*) \(runs as airflow\)$", text, re.MULTILINE)
        assert printed is not None, text
        airflow_env = dict(item.split("=", 1) for item in printed.group(1).split())
        assert "PUBSUB_EMULATOR_HOST" not in airflow_env
        assert airflow_env["GCE_METADATA_HOST"] == metadata["airflow"]
        base = client_environment(
            airflow_env["GCE_METADATA_HOST"], Path(airflow_env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"])
        )
        airflow = Client(endpoint.group(1), {**base, **airflow_env}, tmp_path / "airflow.log")
        functions = Client(
            endpoint.group(1),
            client_environment(metadata["functions"], Path(ca.group(1))),
            tmp_path / "functions.log",
        )
        clients += [airflow, functions]

        # Its task subscriptions live in the wait project of the connection's extra, attached to
        # the completion topic of the topology's project (as relay.airflow.hooks creates them).
        wait = f"projects/{extra['wait_project']}/subscriptions/{unique('wait')}"
        airflow.ok("subscriber", "create_subscription", name=wait, topic=RESULTS)
        airflow.ok("subscriber", "seek", subscription=wait, time={"seconds": int(time.time()) - 5})
        request = new_request(
            "dev.relay.example.echo", {"hello": "auth"}, source="/tests/up", reply_to=RESULTS
        )
        message = to_binary(request)
        airflow.ok(
            "publisher",
            "publish",
            topic=ECHO_REQUESTS,
            messages=[{"data": message.data.decode(), "attributes": dict(message.attributes)}],
        )
        result = None
        deadline = time.monotonic() + 60
        while result is None and time.monotonic() < deadline:
            pulled = airflow.ok("subscriber", "pull", subscription=wait, max_messages=10)
            for received in pulled.get("received_messages", []):
                event = from_message(
                    base64.b64decode(received["message"].get("data", "")),
                    received["message"].get("attributes", {}),
                )
                airflow.ok(
                    "subscriber", "acknowledge", subscription=wait, ack_ids=[received["ack_id"]]
                )
                if event.correlationid == request.id:
                    result = event
        assert result is not None, "no result within 60 s"
        assert (result.type, result.data) == (RESULT_SUCCEEDED, {"hello": "auth"})

        # Only the functions' identity may publish results (`function_server` gives echo that
        # identity and nothing else, test_function_server_runs_a_function_as_its_identity).
        one = [{"data": "x"}]
        code, says = airflow.refused("publisher", "publish", topic=RESULTS, messages=one)
        assert code == "PERMISSION_DENIED"
        assert f"'pubsub.topics.publish' on resource '{RESULTS}'" in says
        # Least privilege, enforced: a function identity may not publish requests nor consume
        # a push subscription; nor may Airflow's, whose waiter role (subscriptions.create,
        # .consume, .delete) is granted on the wait project only, not on the functions'.
        code, says = functions.refused("publisher", "publish", topic=ECHO_REQUESTS, messages=one)
        assert code == "PERMISSION_DENIED"
        assert "serviceAccount:relay-functions@relay-local.iam.gserviceaccount.com" in says
        push = f"projects/{PROJECT}/subscriptions/echo-push"
        for who, email in ((functions, "relay-functions"), (airflow, "relay-airflow")):
            code, says = who.refused("subscriber", "pull", subscription=push, max_messages=1)
            assert code == "PERMISSION_DENIED", says
            assert f"serviceAccount:{email}@{PROJECT}.iam.gserviceaccount.com lacks" in says
            assert f"'pubsub.subscriptions.consume' on resource '{push}'" in says
        ended = airflow.subscribe(push, count=1, timeout=20)
        assert ended["error"] is not None, ended
        assert ended["error"]["code"] == "PERMISSION_DENIED", ended
        assert f"'pubsub.subscriptions.consume' on resource '{push}'" in ended["error"]["message"]
        # Nor may it make task subscriptions in the topology's project.
        code, says = airflow.refused(
            "subscriber",
            "create_subscription",
            name=f"projects/{PROJECT}/subscriptions/{unique('wait')}",
            topic=RESULTS,
        )
        assert code == "PERMISSION_DENIED", says
        assert f"'pubsub.subscriptions.create' on resource 'projects/{PROJECT}'" in says
        airflow.ok("subscriber", "delete_subscription", subscription=wait)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        for client in clients:
            client.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    assert output.read_text().rstrip().endswith("stopped")


def test_function_server_runs_a_function_as_its_identity(tmp_path: Path) -> None:
    topology = load_topology(REPO / "relay.yaml")
    echo = topology.functions["echo"]
    identity = {"GCE_METADATA_HOST": "127.0.0.1:7", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": "/ca.pem"}
    inherited = {"PUBSUB_EMULATOR_HOST": "127.0.0.1:1", "GOOGLE_APPLICATION_CREDENTIALS": "/k"}
    common = {"url": "http://127.0.0.1:9/", "certs_url": "http://127.0.0.1:2/certs"}
    _, env = function_server(
        topology, echo, pubsub_host="127.0.0.1:8", base_env=inherited, identity=identity, **common
    )
    assert {key: env.get(key) for key in (*identity, *inherited, PUBSUB_API_ENDPOINT_ENV)} == {
        **identity,
        "PUBSUB_EMULATOR_HOST": None,
        "GOOGLE_APPLICATION_CREDENTIALS": None,
        PUBSUB_API_ENDPOINT_ENV: "127.0.0.1:8",
    }
    _, plain = function_server(
        topology, echo, pubsub_host="127.0.0.1:8", base_env=inherited, **common
    )
    assert (plain["PUBSUB_EMULATOR_HOST"], plain.get(PUBSUB_API_ENDPOINT_ENV)) == (
        "127.0.0.1:8",
        None,
    )
