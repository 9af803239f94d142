"""Revisions as processes: each function's serving revision under functions-framework, behind its
stable route, started beside the previous one and switched to once it answers."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from relay.up._process import Child, StackError, free_port, start, wait_for_http
from relay.up._serving import google_stand_ins
from relay.up.control_plane._routes import Routes

_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Revision:
    """What one revision runs: the built source, its settings as deployed."""

    function: str
    """The function's resource name (its route's key)."""
    function_id: str
    revision: str
    project: str
    source: Path
    site: Path
    entry_point: str
    signature_type: str
    environment: Mapping[str, str]
    timeout_seconds: int
    service_account: str
    """The runtime service account it runs as (`service_config.service_account_email`)."""
    log: Path


class Revisions:
    """Every function's route and serving process (relay up's own or a deployed revision)."""

    def __init__(
        self,
        routes: Routes,
        *,
        pubsub_host: str,
        certs_url: str,
        invokers: Callable[[str], tuple[str, ...]],
        base_env: Mapping[str, str],
        identities: Mapping[str, Mapping[str, str]] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        """`identities` (--require-auth): the environment of a process running as each service
        account (its metadata server, the CA); None: revisions reach Pub/Sub through
        PUBSUB_EMULATOR_HOST."""
        self.routes = routes
        self.pubsub_host = pubsub_host
        self.certs_url = certs_url
        self.invokers = invokers
        self.identities = None if identities is None else dict(identities)
        self.base_env = dict(base_env)
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._serving: dict[str, Child] = {}
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-revisions")

    def url(self, function: str) -> str:
        """The stable URL of `function` (its route opens on first use)."""
        return self.routes.url(function)

    def check_service_account(self, email: str) -> None:
        """Raise StackError when a revision cannot run as `email` (--require-auth: only the
        service accounts of the topology have a metadata server)."""
        if self.identities is not None and email not in self.identities:
            known = ", ".join(sorted(self.identities))
            raise StackError(
                f"service_config.service_account_email: service account {email or '(none)'} "
                f"does not exist here (relay up --require-auth runs revisions as one of {known})"
            )

    def adopt(self, function: str, child: Child, port: int) -> None:
        """Serve `function` from a process started elsewhere (relay up's, from the source folder),
        listening on `port`, until a deployed revision replaces it."""
        self.routes.point(function, port)
        with self._lock:
            self._serving[function] = child

    def serve(self, revision: Revision) -> None:
        """Start `revision`, wait until it answers, route to it, stop the previous process.

        Raises StackError (with the log's tail) when it exits or does not answer; the previous
        process then keeps serving.
        """
        port = free_port(_HOST)
        url = self.url(revision.function)
        argv = [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            revision.entry_point,
            "--source",
            str(revision.source / "main.py"),
            "--signature-type",
            revision.signature_type,
            "--host",
            _HOST,
            "--port",
            str(port),
        ]
        # Started from one long-lived thread: Linux sends the parent-death signal when the
        # *thread* that forked a child ends, and each deploy runs on a thread of its own.
        child = self._spawner.submit(
            start,
            revision.revision,
            argv,
            log=revision.log,
            env=self._environment(revision, url, port),
            cwd=revision.source,
        ).result()
        try:
            wait_for_http(child, f"http://{_HOST}:{port}/", self.ready_timeout)
        except StackError:
            child.stop()
            raise
        self.routes.point(revision.function, port)
        with self._lock:
            previous = self._serving.get(revision.function)
            self._serving[revision.function] = child
        if previous is not None:
            previous.stop()

    def stop(self, function: str) -> None:
        """Stop serving `function` (deleted)."""
        self.routes.point(function, None)
        with self._lock:
            child = self._serving.pop(function, None)
        if child is not None:
            child.stop()

    def dead(self) -> list[str]:
        """Serving processes that exited."""
        with self._lock:
            children = list(self._serving.values())
        return [
            f"{child.name} (pid {child.pid}) exited with code {child.process.returncode}; "
            f"its log ({child.log}):\n{child.tail()}"
            for child in children
            if not child.alive()
        ]

    def close(self) -> None:
        """Stop every serving process."""
        with self._lock:
            children = list(self._serving.values())
            self._serving.clear()
        for child in children:
            child.stop()
        self._spawner.shutdown(wait=True)

    def _environment(self, revision: Revision, url: str, port: int) -> dict[str, str]:
        """What Cloud Run gives a revision, with the local stand-ins for Google around it."""
        env = {
            key: value
            for key, value in self.base_env.items()
            if not key.startswith("RELAY_") and key not in ("CSV_PROFILE_SOURCES", "PYTHONPATH")
        }
        env.update(revision.environment)
        env.update(
            {
                # Cloud Run's own
                "PORT": str(port),
                "K_SERVICE": revision.function_id,
                "K_REVISION": revision.revision,
                "K_CONFIGURATION": revision.function_id,
                "FUNCTION_TARGET": revision.entry_point,
                "FUNCTION_SIGNATURE_TYPE": revision.signature_type,
                "GOOGLE_CLOUD_PROJECT": revision.project,
                "PYTHONPATH": os.pathsep.join(
                    [str(revision.site), *filter(None, [self.base_env.get("PYTHONPATH")])]
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The local stand-ins for Google, as for relay up's own processes: Pub/Sub (as its
        # runtime service account under --require-auth), Cloud Run's invoker check in front of
        # it (an ID token for the service URL, of an identity that `invokes` it), the timeout.
        identity = None
        if self.identities is not None:
            self.check_service_account(revision.service_account)
            identity = self.identities[revision.service_account]
        return google_stand_ins(
            env,
            url=url,
            pubsub_host=self.pubsub_host,
            certs_url=self.certs_url,
            invokers=self.invokers(revision.function_id),
            timeout_seconds=revision.timeout_seconds,
            identity=identity,
        )
