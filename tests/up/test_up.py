"""`relay up`: the whole stack from relay.yaml, a request through echo, a clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from relay.cli import main; main()",
                "up",
                "--file",
                str(REPO / "relay.yaml"),
                "--data-dir",
                str(tmp_path / ".relay"),
                "--broker-port",
                "0",
            ],  # fmt: skip
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        _wait_for(output, r"ready — watching results", process, timeout=90)
        host = _wait_for(output, r"PUBSUB_EMULATOR_HOST=\S+", process, 5).split("=", 1)[1]
        text = output.read_text()
        for name in ("echo", "csv-profile", "dead-letter"):
            assert f"function {name}" in text
        assert "created 7" in text or "unchanged" in text
        children = _process_groups(process.pid)
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

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
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
    topology = parse_topology(
        f"""
project: {project}
topics: {{requests: [{requests_good}, {requests_bad}], completion: {results}}}
functions:
  good: {{source: good, entry_point: good, topic: {requests_good}, delivery: pull}}
  bad: {{source: bad, entry_point: bad, topic: {requests_bad}, delivery: pull}}
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
