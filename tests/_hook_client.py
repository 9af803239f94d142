"""A process that uses relay's RelayHook (the Google provider's GoogleBaseHook) with an
impersonation chain, for the --require-auth tests: `HookClient(environment, log)`.

It runs with an identity's environment (`_auth_client.client_environment(..., iam_proxy=...)`)
and the Airflow connection `relay_auth` of HOOK_CLIENT_CONNECTION (JSON); HOOK_CLIENT_CHAIN is
the `impersonation_chain` ("D1,...,TARGET"). It reads one JSON order per line on stdin and
answers one JSON line on stdout:

- {"publish": TOPIC, "data": TEXT} -> {"ok": true, "ids": [...]} or {"ok": false, "error": ...,
  "type": EXCEPTION CLASS}: RelayHook.publish (its retries included).
- {"publish_once": TOPIC} -> the same for one publish with the client's retries off, so that a
  refusal shows at once.
- {"refresh": true} -> {"ok": true} or {"ok": false, "error": ...}: the hook's credentials
  refreshed as google-auth does before a call.
- {"id_token": AUDIENCE} -> {"ok": true, "token": JWT} or {"ok": false, "error": ...}:
  RelayHook.fetch_id_token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _answer(hook: Any, order: dict[str, Any]) -> dict[str, Any]:
    import google.auth.transport.requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    from relay.airflow.exceptions import RelayPublishError
    from relay.protocol import Message

    try:
        if "publish" in order:
            message = Message(order["data"].encode(), {})
            return {"ok": True, "ids": hook.publish(order["publish"], [message], attempts=2)}
        if "publish_once" in order:
            future = hook.publisher().publish(
                hook.topic_path(order["publish_once"]), b"x", retry=None
            )
            return {"ok": True, "ids": [future.result(timeout=30)]}
        if "refresh" in order:
            hook.get_credentials().refresh(google.auth.transport.requests.Request())
            return {"ok": True}
        if "id_token" in order:
            return {"ok": True, "token": hook.fetch_id_token(order["id_token"])}
    except (GoogleAPIError, GoogleAuthError, RelayPublishError) as exc:
        return {"ok": False, "error": " ".join(map(str, exc.args)), "type": type(exc).__name__}
    raise ValueError(f"unknown order {order}")


def main() -> None:
    # Answers on a stdout of their own: Airflow's logging writes to file descriptor 1.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from relay.airflow.hooks import RelayHook

    chain = os.environ["HOOK_CLIENT_CHAIN"].split(",")
    hook = RelayHook(gcp_conn_id="relay_auth", impersonation_chain=chain)
    for line in sys.stdin:
        print(json.dumps(_answer(hook, json.loads(line))), file=answers, flush=True)


class HookClient:
    """One hook process (`main`) with `environment` plus the connection and the chain."""

    def __init__(
        self,
        environment: Mapping[str, str],
        connection: Mapping[str, Any],
        chain: list[str],
        log: Path,
    ) -> None:
        env = {
            **environment,
            "AIRFLOW_HOME": str(log.parent / "airflow-home"),
            "AIRFLOW_CONN_RELAY_AUTH": json.dumps(connection),
            "HOOK_CLIENT_CHAIN": ",".join(chain),
        }
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
                env=env,
                text=True,
            )

    def ask(self, order: dict[str, Any]) -> dict[str, Any]:
        """Send one order, return its answer."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the hook process died: {self.log.read_text()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """End the process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


if __name__ == "__main__":
    main()
