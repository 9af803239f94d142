"""Tokens that expire every AUTH_TOKEN_LIFETIME seconds, and nothing fails (docs/auth.md).

The deployment of test_e2e_airflow.py (API server, scheduler, DAG processor, triggerer, workers of
the LocalExecutor, PostgreSQL) against relay broker --require-auth: every Airflow process runs as
relay.yaml's `airflow` identity (Application Default Credentials from its metadata server, the
API endpoint over TLS from the google_cloud_default connection), every function as its runtime
identity, each with only what `relay provision` grants. The broker refuses any call without a
live token of its token service or without the permission Google requires.

The proof: the example pipeline and deferred calls run for more than five token lifetimes, a
deferral and a function call outlive two, a request goes the dead-letter path; no task fails but
the one that is meant to, no task is retried, the broker refused nothing. The negative control:
the echo function holding a single token fails its run with UNAUTHENTICATED. Then no token, key or
credential is anywhere in the database, the trigger kwargs or any log.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _e2e_airflow import AirflowApi
from _e2e_procs import E2EError, wait_until
from _e2e_stack import AUTH_DAG_IDS, AUTH_TOKEN_LIFETIME, E2E
from _frozen_metadata import FrozenMetadata, access_token

from relay.demo import Expected, generate_csvs

LIFETIME = AUTH_TOKEN_LIFETIME
AUTH = "relay_e2e_auth"
PIPELINE = "relay_csv_pipeline"
RUN_TIMEOUT = 300.0
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def api(e2e_auth: E2E) -> AirflowApi:
    """The REST client, once the DAG processor has parsed both DAGs."""
    client = e2e_auth.airflow.api

    def parsed() -> bool:
        return all(client.dag_exists(dag_id) for dag_id in AUTH_DAG_IDS)

    try:
        wait_until("DAGs parsed", parsed, 120, procs=list(e2e_auth.airflow.procs.values()))
    except E2EError as exc:
        raise E2EError(f"{exc}\nimport errors: {client.import_errors()}") from exc
    return client


def _auth_items(count: int, sleep: float) -> list[dict[str, Any]]:
    """`count` quick echo requests and one that echo answers after `sleep` seconds."""
    nonce = uuid.uuid4().hex[:8]
    return [{"i": i, "nonce": nonce} for i in range(count)] + [{"sleep": sleep, "nonce": nonce}]


def _context(e2e: E2E, dag_id: str, run_id: str) -> str:
    return f"tasks: {e2e.airflow.api.task_states(dag_id, run_id)}\n{e2e.logs()}"


class _TriggerKwargs:
    """Every trigger's kwargs as Airflow stored them while it waited (the rows go when it fires)."""

    def __init__(self, db_url: str) -> None:
        from sqlalchemy import create_engine

        self._engine = create_engine(db_url)
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        from sqlalchemy import text

        while not self._stop.wait(0.5):
            with self._engine.connect() as connection:
                rows = connection.execute(text("SELECT id, CAST(kwargs AS text) FROM trigger"))
                for trigger_id, kwargs in rows:
                    self.seen.setdefault(int(trigger_id), str(kwargs))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._engine.dispose()


@dataclass
class AuthRuns:
    """What the long run did: its runs, how long it took, the broker's auth counts around it."""

    pipeline: str
    expected: Expected
    calls: dict[str, list[dict[str, Any]]]
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]
    trigger_kwargs: dict[int, str] = field(default_factory=dict)


def _db_url(e2e: E2E) -> str:
    return e2e.airflow.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def _pipeline_conf(e2e: E2E, folder: Path) -> dict[str, Any]:
    return {
        "csv_dir": str(folder),
        "request_topic": e2e.relay.topic_of("csv_profile"),
        "completion_topic": e2e.relay.topology.completion_topic,
    }


@pytest.fixture(scope="module")
def runs(e2e_auth: E2E, api: AirflowApi) -> AuthRuns:
    """The example pipeline (100 files) beside relay_e2e_auth runs, one after another until more
    than five token lifetimes have passed; each auth run has a call echo answers after 2.5."""
    e2e = e2e_auth
    before = e2e.relay.stats()["auth"]
    kwargs = _TriggerKwargs(_db_url(e2e))
    started = time.monotonic()
    try:
        folder = e2e.relay.inputs / "pipeline"
        expected = generate_csvs(folder, 100)
        pipeline = api.trigger(PIPELINE, _pipeline_conf(e2e, folder))
        calls: dict[str, list[dict[str, Any]]] = {}
        while not calls or time.monotonic() - started < 5 * LIFETIME:
            items = _auth_items(3, 2.5 * LIFETIME)
            echo_url = e2e.relay.topology.functions["echo"].url
            run_id = api.trigger(AUTH, {"items": items, "echo_url": echo_url})
            calls[run_id] = items
            api.wait_for_run(AUTH, run_id, RUN_TIMEOUT, e2e.airflow)
        api.wait_for_run(PIPELINE, pipeline, RUN_TIMEOUT, e2e.airflow)
        seconds = time.monotonic() - started
    finally:
        kwargs.close()
    after = e2e.relay.stats()["auth"]
    print(f"auth runs: {seconds:.0f} s, {len(calls)} auth run(s); broker auth counts {after}")
    return AuthRuns(pipeline, expected, calls, seconds, before, after, kwargs.seen)


def _delta(runs: AuthRuns, key: str) -> dict[str, int]:
    return {
        name: count - runs.before[key].get(name, 0)
        for name, count in runs.after[key].items()
        if count != runs.before[key].get(name, 0)
    }


def test_everything_succeeds_across_token_lifetimes(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """Every run succeeded with the right results, in more than five lifetimes, with no task
    retried and no call refused; tokens really expired and were replaced meanwhile."""
    e2e = e2e_auth
    assert runs.seconds > 5 * LIFETIME
    state = api.run(PIPELINE, runs.pipeline)["state"]
    assert state == "success", _context(e2e, PIPELINE, runs.pipeline)
    summary = api.xcom(PIPELINE, runs.pipeline, "summarize", "return_value")
    assert summary == {
        "files": runs.expected.files,
        "rows": runs.expected.rows,
        "empty_cells": runs.expected.empty_cells,
    }
    for run_id, items in runs.calls.items():
        assert api.run(AUTH, run_id)["state"] == "success", _context(e2e, AUTH, run_id)
        entries = api.xcom_entries(AUTH, run_id, "call", "return_value")
        assert sorted(entry["map_index"] for entry in entries) == list(range(len(items)))
        for i, item in enumerate(items):
            assert api.xcom(AUTH, run_id, "call", "return_value", i) == item
    for dag_id, run_id in [(PIPELINE, runs.pipeline), *((AUTH, r) for r in runs.calls)]:
        tries = {
            f"{ti['task_id']}[{ti['map_index']}]": int(ti["try_number"])
            for ti in api.task_instances(dag_id, run_id)
        }
        assert set(tries.values()) == {1}, f"{dag_id} {run_id} retried: {tries}"
    assert _delta(runs, "refused") == {}, runs.after
    airflow = e2e.relay.topology.identities["airflow"].service_account
    functions = e2e.relay.topology.identities["functions"].service_account
    assert airflow is not None
    assert functions is not None
    minted = _delta(runs, "tokens_minted")
    # google-auth fetches a token whenever less than 3 min 45 s are left: with short tokens,
    # before each call; the components lived on many tokens each.
    assert minted.get(airflow, 0) >= 5, minted
    assert minted.get(functions, 0) >= 5, minted
    # The triggerer's wake streams were closed at token expiry and opened again, fresh.
    expired = _delta(runs, "streams_ended_at_token_expiry")
    assert expired.get(airflow, 0) >= 2, runs.after


def test_a_deferral_and_a_function_call_outlive_two_tokens(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """The slow call of each run deferred for more than two lifetimes and got echo's answer,
    published by echo more than two lifetimes after the push that started it."""
    for run_id, items in runs.calls.items():
        slow = len(items) - 1
        (ti,) = [t for t in api.task_instances(AUTH, run_id) if t["map_index"] == slow]
        waited = float(ti["duration"] or 0)
        assert waited > 2 * LIFETIME, ti
        log = api.task_log(AUTH, run_id, "call", 1, slow)
        assert "Pausing task as DEFERRED" in log, log[-3000:]
        assert api.xcom(AUTH, run_id, "call", "return_value", slow) == items[slow]


def test_the_dead_letter_path_answers_under_auth(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """echo {"crash": 99}: Pub/Sub dead-letters it after five pushes, the dead-letter function
    answers as its identity, and the task fails with DeadLettered at once (no retry, no hang)."""
    for run_id in runs.calls:
        states = api.task_states(AUTH, run_id)
        assert (states["dead_letter"], states["dead_lettered"]) == ("failed", "success"), states
        log = api.task_log(AUTH, run_id, "dead_letter", 1, -1)
        assert "DeadLettered" in log, log[-3000:]


def test_a_direct_https_invoke_as_airflows_identity(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """`invoke` POSTs to echo's URL with an ID token of Airflow's identity, minted by google-auth
    from its metadata server (echo lets in only its invokers, as Cloud Run would), then waits for
    the result on Pub/Sub: each run's answer, minted afresh in each run."""
    for run_id in runs.calls:
        assert api.task_states(AUTH, run_id)["invoke"] == "success"
        answer = api.xcom(AUTH, run_id, "invoke", "return_value")
        assert answer == {"via": "https", "run": run_id}, answer
    # echo answered them as direct binary-mode HTTP CloudEvents, not through Pub/Sub push
    echo = e2e_auth.relay.function_named("echo").text(since_start=False)
    entries = [json.loads(line) for line in echo.splitlines() if line.startswith("{")]
    direct = [e for e in entries if e.get("route") == "http-binary" and e["outcome"] == "succeeded"]
    assert len(direct) >= len(runs.calls), entries[-5:]


# -- no secret anywhere ---------------------------------------------------------------------------

_ACCESS_TOKEN = re.compile(rb"ya29\.[A-Za-z0-9_.-]{20,}")
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}")
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _broker_kids(e2e: E2E) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(e2e.relay.certs_url, timeout=10) as response:
        return set(json.load(response))


def _secrets_in(data: bytes, kids: set[str], key: bytes) -> list[str]:
    """What in `data` is a token of the broker's token service, a private key, or the token
    key: access tokens, ID tokens signed by the broker (a JWT whose header names its key)."""
    found = [f"access token {m.group()[:24].decode()}..." for m in _ACCESS_TOKEN.finditer(data)]
    for match in _JWT.finditer(data):
        head = match.group().split(b".", 1)[0]
        try:
            header = json.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))
        except (ValueError, binascii.Error):
            continue
        if isinstance(header, dict) and header.get("kid") in kids:
            found.append(f"ID token {match.group()[:24].decode()}...")
    found += [f"private key at {m.start()}" for m in _PRIVATE_KEY.finditer(data)]
    for form in (key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)):
        if form in data:
            found.append("the broker's token key")
    return found


def _database_rows(db_url: str) -> Iterator[tuple[str, bytes]]:
    """Every row of every table of Airflow's database, as PostgreSQL prints it (the connection
    table is empty: the connection is an AIRFLOW_CONN_ variable, and holds no credential)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                rows = connection.execute(text(f'SELECT CAST(t AS text) FROM "{table}" t'))
                for (row,) in rows:
                    yield table, str(row).encode()
    finally:
        engine.dispose()


def _key_material(e2e: E2E) -> set[Path]:
    """The broker's own key files: the only place keys may be (its data directory, mode 0600)."""
    broker = e2e.relay.root / "broker"
    return {p for p in broker.iterdir() if p.is_file() and p.suffix != ".sqlite"}


def test_no_token_key_or_credential_is_stored_or_logged(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """Trigger kwargs, XCom, task instances (every table of Airflow's database), task and
    trigger logs, the components' logs, the functions' and the broker's logs: no access token,
    ID token, private key or token key."""
    e2e = e2e_auth
    kids = _broker_kids(e2e)
    key = (e2e.relay.root / "broker" / "token-key").read_bytes()
    # The scan finds what it looks for (so it can fail): a token and an ID token of this broker.
    metadata = e2e.relay.metadata[next(iter(e2e.relay.metadata))]
    planted = access_token(metadata).encode() + b" " + _id_token(metadata, e2e)
    assert len(_secrets_in(planted, kids, key)) == 2, planted[:80]

    assert runs.trigger_kwargs, "no trigger kwargs were seen while the calls waited"
    found = [
        f"trigger {tid} kwargs: {what}"
        for tid, text in runs.trigger_kwargs.items()
        for what in _secrets_in(text.encode(), kids, key)
    ]
    tables = set()
    for table, row in _database_rows(_db_url(e2e)):
        tables.add(table)
        found += [f"table {table}: {what}" for what in _secrets_in(row, kids, key)]
    assert {"xcom", "task_instance", "dag_run", "log"} <= tables, tables
    keys = _key_material(e2e)
    files = [p for p in e2e.root.rglob("*") if p.is_file() and p not in keys]
    logs = [p for p in files if ".log" in p.name]
    assert any("attempt=" in p.name for p in logs), "no task log was scanned"
    assert any(".trigger." in p.name for p in logs), "no trigger log was scanned"
    assert {"broker.log", "echo.log", "dead-letter.log", "triggerer.log"} <= {p.name for p in logs}
    for path in files:
        found += [f"{path}: {what}" for what in _secrets_in(path.read_bytes(), kids, key)]
    assert found == [], "\n".join(found[:50])


def _id_token(metadata: str, e2e: E2E) -> bytes:
    import urllib.parse
    import urllib.request

    audience = e2e.relay.topology.functions["echo"].url
    url = (
        f"http://{metadata}/computeMetadata/v1/instance/service-accounts/default/identity?"
        + urllib.parse.urlencode({"audience": audience})
    )
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


# -- the negative control: a component that holds one token ---------------------------------------


def test_a_function_holding_one_token_fails_unauthenticated(
    e2e_auth: E2E, api: AirflowApi, runs: AuthRuns
) -> None:
    """echo restarted on a metadata server that hands out its first token forever: once that
    token has expired, echo's result publishes are UNAUTHENTICATED, every push of the request
    fails, and the run fails (dead-lettered): the long run above would have caught such a bug."""
    e2e = e2e_auth
    echo = e2e.relay.function_named("echo")
    normal = dict(echo.env)
    frozen = FrozenMetadata(normal["GCE_METADATA_HOST"])
    try:
        echo.stop()
        echo.env.update({"GCE_METADATA_HOST": frozen.host, "GCE_METADATA_IP": frozen.host})
        e2e.relay.start_function(echo)
        time.sleep(LIFETIME + 2)  # the frozen token has expired at the broker
        refused = e2e.relay.stats()["auth"]["refused"].get("UNAUTHENTICATED", 0)
        items = [{"i": 0, "nonce": uuid.uuid4().hex[:8]}]
        run_id = api.trigger(AUTH, {"items": items})
        state = api.wait_for_run(AUTH, run_id, RUN_TIMEOUT, e2e.airflow)
        assert state == "failed", _context(e2e, AUTH, run_id)
        assert api.task_states(AUTH, run_id)["call[0]"] == "failed"
        assert "DeadLettered" in api.task_log(AUTH, run_id, "call", 1, 0)
        assert frozen.tokens_served >= 1, "echo never asked the frozen metadata server"
        assert "UNAUTHENTICATED" in echo.text(), echo.tail()
        after = e2e.relay.stats()["auth"]["refused"].get("UNAUTHENTICATED", 0)
        assert after > refused
    finally:
        echo.stop()
        echo.env.clear()
        echo.env.update(normal)
        e2e.relay.start_function(echo)
        frozen.close()
