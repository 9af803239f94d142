"""`relay up`: the whole stack from relay.yaml, a request through echo, a clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

from relay.protocol import RESULT_SUCCEEDED, new_request, to_binary
from relay.topology import parse_topology
from relay.up import BrokerEndpoint, CompletionMonitor, StackError, stack_up

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        match = re.search(pattern, text)
        if match:
            return match.group(0)
        assert process.poll() is None, f"relay up exited early:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the output of relay up:\n{path.read_text()}")


def _process_groups(leader_parent: int) -> set[int]:
    """Pids of every process in a process group led by a child of `leader_parent`."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
    leaders = {pid for pid, (ppid, pgid) in stats.items() if ppid == leader_parent and pgid == pid}
    return {pid for pid, (_, pgid) in stats.items() if pgid in leaders}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_runs_the_topology_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: Callable[[str], str]
) -> None:
    output = tmp_path / "up.out"
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    argv = [sys.executable, "-c", "from relay.cli import main; main()", "up"]
    argv += ["--file", str(REPO / "relay.yaml"), "--data-dir", str(tmp_path / ".relay")]
    argv += ["--broker-port", "0"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        _wait_for(output, r"ready — watching results", process, timeout=90)
        host = _wait_for(output, r"PUBSUB_EMULATOR_HOST=\S+", process, 5).split("=", 1)[1]
        functions_host = _wait_for(output, r"CLOUD_FUNCTIONS_EMULATOR_HOST=\S+", process, 5)
        assert re.fullmatch(r"CLOUD_FUNCTIONS_EMULATOR_HOST=127\.0\.0\.1:\d+", functions_host)
        text = output.read_text()
        for name in ("echo", "csv-profile", "dead-letter"):
            assert re.search(rf"^  {name} +http://127\.0\.0\.1:\d+  ← ", text, re.MULTILINE), text
        assert "created 9" in text or "unchanged" in text  # 5 topics, 4 subscriptions
        children = _process_groups(process.pid)
        # Push auth is on: a request without the broker's OIDC token never reaches the handler.
        echo_url = re.search(r"^  echo +(http://\S+)", text, re.MULTILINE)
        assert echo_url is not None
        unauthenticated = urllib.request.Request(
            echo_url.group(1), data=b"{}", headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unauthenticated, timeout=10)
        assert refused.value.code == 401
        assert len(children) >= 4  # broker + three functions (+ their workers)

        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        from google.cloud import pubsub_v1

        request = new_request(
            "dev.relay.example.echo",
            {"hello": "up"},
            source="/tests/up",
            reply_to="projects/relay-local/topics/relay-results",
        )
        message = to_binary(request)
        with CompletionMonitor(
            "relay-local", "relay-results", subscription=unique("test-monitor")
        ) as monitor:
            publisher = pubsub_v1.PublisherClient()
            publisher.publish(
                "projects/relay-local/topics/relay-echo-requests",
                message.data,
                **message.attributes,
            ).result(timeout=30)
            seen = monitor.wait_for(
                lambda observed: observed.correlation_id == request.id, timeout=60
            )
        assert seen.event is not None
        assert seen.event.type == RESULT_SUCCEEDED
        assert seen.event.data == {"hello": "up"}
        assert seen.event.causationid == request.id
        # The live view printed it too.
        _wait_for(output, rf"{RESULT_SUCCEEDED}\s+corr={request.id}", process, 10)
        # The broker signs push tokens only for the topology's identities and function URLs.
        identity = "relay-push@relay-local.iam.gserviceaccount.com"
        with pytest.raises(exceptions.PermissionDenied, match="--push-audiences"):
            pubsub_v1.SubscriberClient().create_subscription(
                request={
                    "name": "projects/relay-local/subscriptions/stolen-tokens",
                    "topic": "projects/relay-local/topics/relay-echo-requests",
                    "push_config": {
                        "push_endpoint": "http://127.0.0.1:1/",
                        "oidc_token": {"service_account_email": identity},
                    },
                }
            )

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    text = output.read_text()
    assert text.rstrip().endswith("stopped"), text
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]


def test_a_function_that_cannot_start_fails_the_stack_and_stops_the_rest(
    tmp_path: Path, broker: Any, project: str, unique: Callable[[str], str]
) -> None:
    for name, code in (
        ("good", "def good(request):\n    return None\n"),
        ("bad", "raise ImportError('boom at import')\ndef bad(request): ...\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "main.py").write_text(code)
    requests_good, requests_bad, results = unique("good"), unique("bad"), unique("results")
    dead = unique("undeliverable")
    topology = parse_topology(
        f"""
project: {project}
topics:
  requests: [{requests_good}, {requests_bad}]
  completion: {results}
  dead_letter: [{dead}]
functions:
  good: {{source: good, entry_point: good, topic: {requests_good}, delivery: pull,
         dead_letter_topic: {dead}}}
  bad: {{source: bad, entry_point: bad, topic: {requests_bad}, delivery: pull,
        dead_letter_topic: {dead}}}
""",
        base_dir=tmp_path,
    )
    endpoint = BrokerEndpoint(broker.host, broker.http_url)

    with (
        pytest.raises(StackError) as caught,
        stack_up(topology, data_dir=tmp_path / ".relay", broker=endpoint, ready_timeout=60),
    ):
        pytest.fail("the stack must not come up")

    message = str(caught.value)
    assert message.startswith("bad exited with code")
    assert "ImportError: boom at import" in message
    assert str(tmp_path / ".relay" / "logs" / "bad.log") in message
    assert _process_groups(os.getpid()) == set()
    assert os.environ["PUBSUB_EMULATOR_HOST"] == broker.host


def test_stack_up_feeds_a_pull_function_through_its_subscription(
    tmp_path: Path, broker: Any, project: str, unique: Callable[[str], str]
) -> None:
    requests, results, dead = unique("pull-requests"), unique("results"), unique("undeliverable")
    topology = parse_topology(
        f"""
project: {project}
topics: {{requests: [{requests}], completion: {results}, dead_letter: [{dead}]}}
functions:
  echo:
    source: {REPO / "functions" / "echo"}
    entry_point: echo
    topic: {requests}
    subscription: {unique("echo-pull")}
    delivery: pull
    dead_letter_topic: {dead}
""",
        base_dir=tmp_path,
    )
    endpoint = BrokerEndpoint(broker.host, broker.http_url)
    request = new_request(
        "dev.relay.example.echo",
        {"n": [1, 2, 3]},
        source="/tests/up",
        reply_to=f"projects/{project}/topics/{results}",
    )
    message = to_binary(request)

    with (
        stack_up(topology, data_dir=tmp_path / ".relay", broker=endpoint) as stack,
        CompletionMonitor(project, results, subscription=unique("monitor")) as monitor,
    ):
        # requests, results and the terminal topic; echo's and the terminal subscription
        assert [change.action for change in stack.plan.changes] == ["create"] * 5
        assert stack.functions["echo"].url.startswith("http://127.0.0.1:")
        broker.publisher().publish(
            f"projects/{project}/topics/{requests}", message.data, **message.attributes
        ).result(timeout=30)
        seen = monitor.wait_for(lambda o: o.correlation_id == request.id, timeout=60)
        assert stack.dead() == []

    assert seen.event is not None
    assert (seen.event.type, seen.event.data) == (RESULT_SUCCEEDED, {"n": [1, 2, 3]})
    assert _process_groups(os.getpid()) == set()


def test_children_die_with_a_killed_relay_up(tmp_path: Path, project: str) -> None:
    (tmp_path / "relay.yaml").write_text(
        f"""
project: {project}
topics: {{requests: [killed-requests], completion: killed-results, dead_letter: [killed-dead]}}
functions:
  echo:
    source: {REPO / "functions" / "echo"}
    entry_point: echo
    topic: killed-requests
    delivery: pull
    dead_letter_topic: killed-dead
"""
    )
    output = tmp_path / "up.out"
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("PUBSUB_EMULATOR_HOST", None)
    argv = [sys.executable, "-c", "from relay.cli import main; main()", "up"]
    argv += ["--file", str(tmp_path / "relay.yaml"), "--data-dir", str(tmp_path / ".relay")]
    argv += ["--broker-port", "0"]
    with output.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(output, r"ready — watching results", process, timeout=90)
        children = _process_groups(process.pid)
        assert len(children) >= 2  # broker + echo (+ its worker)

        process.kill()  # no chance to clean up: the kernel's parent-death signal must do it
        process.wait(10)

        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
