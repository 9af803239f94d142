"""A client process of one identity for the --require-auth tests: stock clients, no relay code.

`Client(endpoint, environment)` starts one and talks to it; `auth_broker_fields(log)` reads the
CA and the metadata servers from a broker's ready line.

The process runs as `python _auth_client.py HOST:PORT` with GCE_METADATA_HOST and GCE_METADATA_IP
set to the identity's metadata server and GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to the broker's CA:
google-auth's Compute Engine credentials and the GAPIC clients over TLS, as on Cloud Run. It
reads one JSON request per line on stdin and answers one JSON line on stdout:

- {"call": "publisher"|"subscriber"|"schema", "method": NAME, "request": {...}} -> {"ok": true,
  "result": ...} or {"ok": false, "code": "PERMISSION_DENIED", "message": "..."}; Publish's
  message data is text, SetIamPolicy's etag base64 (as GetIamPolicy's result gives it).
- {"subscribe": SUBSCRIPTION, "count": N, "timeout": SECONDS} -> the data of the first N
  messages a streaming pull (`SubscriberClient.subscribe`) receives, acked, and the status that
  ended the stream, if one did.

With AUTH_CLIENT_FIXED_TOKEN set it holds that one token instead (a negative control: a client
that caches its token). With AUTH_CLIENT_IMPERSONATE="D1,...,TARGET" it acts as TARGET through
google-auth's own impersonated credentials (delegates D1...; the source is ADC, the identity's
metadata server; AUTH_CLIENT_LIFETIME: the lifetime it asks for): generateAccessToken through
the broker's IAM Credentials proxy, which `client_environment(..., iam_proxy=...)` sets up with
standard variables (https_proxy, no_proxy, REQUESTS_CA_BUNDLE). Two more orders then:

- {"refresh": true} -> {"ok": true, "expiry": ISO time} or {"ok": false, "error": "..."}: the
  impersonated credentials refreshed.
- {"id_token": AUDIENCE, "include_email": bool} -> {"ok": true, "token": JWT} or {"ok": false,
  "error": "..."}: impersonated_credentials.IDTokenCredentials refreshed (generateIdToken).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import json_format
from google.pubsub_v1 import PublisherClient, SchemaServiceClient, SubscriberClient


def _plain(result: Any) -> Any:
    if result is None or isinstance(result, str | int | float | bool):
        return result
    if hasattr(result, "pages"):
        return [_plain(item) for item in result]
    raw = type(result).pb(result) if hasattr(type(result), "pb") else result
    return json_format.MessageToDict(raw, preserving_proto_field_name=True)


def _failure(exc: exceptions.GoogleAPICallError) -> dict[str, Any]:
    code = exc.grpc_status_code
    return {"ok": False, "code": code.name if code else str(exc.code), "message": exc.message}


_CLOUD_PLATFORM = ["https://www.googleapis.com/auth/cloud-platform"]


def _credentials() -> Any:
    """None (Application Default Credentials), the one token of AUTH_CLIENT_FIXED_TOKEN, or
    google-auth's impersonated credentials for the chain of AUTH_CLIENT_IMPERSONATE."""
    token = os.environ.get("AUTH_CLIENT_FIXED_TOKEN")
    chain = os.environ.get("AUTH_CLIENT_IMPERSONATE")
    if chain:
        import google.auth
        from google.auth import impersonated_credentials

        *delegates, target = chain.split(",")
        source, _ = google.auth.default(scopes=_CLOUD_PLATFORM)  # type: ignore[no-untyped-call]
        return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
            source_credentials=source,
            target_principal=target,
            target_scopes=_CLOUD_PLATFORM,
            delegates=delegates,
            lifetime=int(os.environ.get("AUTH_CLIENT_LIFETIME", "3600")),
        )
    if not token:
        return None
    from google.oauth2.credentials import Credentials

    return Credentials(token)  # type: ignore[no-untyped-call]


def _refresh(credentials: Any) -> dict[str, Any]:
    """Refresh impersonated credentials as google-auth does before a call."""
    import google.auth.transport.requests
    from google.auth import exceptions as auth_exceptions

    try:
        credentials.refresh(google.auth.transport.requests.Request())
    except auth_exceptions.GoogleAuthError as exc:
        return {"ok": False, "error": " ".join(map(str, exc.args))}
    return {"ok": True, "expiry": credentials.expiry.isoformat()}


def _id_token(credentials: Any, audience: str, include_email: bool) -> dict[str, Any]:
    """An ID token through google-auth's impersonated IDTokenCredentials (generateIdToken)."""
    import google.auth.transport.requests
    from google.auth import exceptions as auth_exceptions
    from google.auth import impersonated_credentials

    minted = impersonated_credentials.IDTokenCredentials(  # type: ignore[no-untyped-call]
        credentials, target_audience=audience, include_email=include_email
    )
    try:
        minted.refresh(google.auth.transport.requests.Request())
    except auth_exceptions.GoogleAuthError as exc:
        return {"ok": False, "error": " ".join(map(str, exc.args))}
    return {"ok": True, "token": minted.token}


def _subscribe(endpoint: str, subscription: str, count: int, timeout: float) -> dict[str, Any]:
    received: list[str] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        received.append(message.data.decode())
        message.ack()
        if len(received) >= count:
            done.set()

    client = pubsub_v1.SubscriberClient(
        client_options={"api_endpoint": endpoint}, credentials=_credentials()
    )
    future = client.subscribe(subscription, callback=callback)
    future.add_done_callback(lambda _: done.set())
    done.wait(timeout)
    error = None
    if future.done():
        exc = future.exception()
        if isinstance(exc, exceptions.GoogleAPICallError):
            error = _failure(exc)
    future.cancel()
    with contextlib.suppress(Exception):  # cancelled, or the error reported above
        future.result(timeout=10)
    client.close()
    return {"ok": error is None, "data": received, "error": error}


_METADATA = re.compile(r" metadata:(\S+)=(\S+)")
_CA = re.compile(r" ca=(\S+)")
_IAM_PROXY = re.compile(r" iam-proxy=(\S+)")


def auth_broker_fields(ready_text: str) -> tuple[Path, dict[str, str]]:
    """(CA file, {email: metadata host:port}) from the last ready line of a broker's output."""
    line = [line for line in ready_text.splitlines() if "relay broker ready" in line][-1]
    ca = _CA.search(line)
    assert ca is not None, line
    return Path(ca.group(1)), dict(_METADATA.findall(line))


def iam_proxy_field(ready_text: str) -> str:
    """The IAM Credentials proxy URL (`iam-proxy=`) of the last ready line of a broker."""
    line = [line for line in ready_text.splitlines() if "relay broker ready" in line][-1]
    proxy = _IAM_PROXY.search(line)
    assert proxy is not None, line
    return proxy.group(1)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")


def access_token(metadata_host: str) -> str:
    """A fresh access token of a metadata server's identity, fetched as google-auth does."""
    request = urllib.request.Request(
        f"http://{metadata_host}/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def client_environment(
    metadata_host: str, ca_file: Path, iam_proxy: str | None = None
) -> dict[str, str]:
    """This process's environment as a process of one identity would have it; with
    `iam_proxy`, HTTPS (google-auth's IAM Credentials calls) goes through that proxy and trusts
    the broker's CA, while the broker's own loopback addresses are reached directly."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUBSUB_", "GOOGLE_", "GCE_", "REQUESTS_CA_", "CURL_CA_"))
        and k.lower() not in _PROXY_VARIABLES
    }
    env.update(
        {
            "GCE_METADATA_HOST": metadata_host,
            "GCE_METADATA_IP": metadata_host,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(ca_file),
            "CLOUDSDK_CONFIG": str(ca_file.parent / "no-gcloud-config"),
        }
    )
    if iam_proxy is not None:
        env.update(
            {
                "https_proxy": iam_proxy,
                "no_proxy": "127.0.0.1,localhost,::1",
                "REQUESTS_CA_BUNDLE": str(ca_file),
            }
        )
    return env


class Client:
    """One client process (`main`) with `environment`; `call` and `subscribe` ask it."""

    def __init__(self, endpoint: str, environment: Mapping[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, __file__, endpoint],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
                env=dict(environment),
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
            raise RuntimeError(f"the client process died: {self.log.read_text()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, client: str, method: str, **request: Any) -> dict[str, Any]:
        """One RPC of a GAPIC client ("publisher", "subscriber", "schema")."""
        return self.ask({"call": client, "method": method, "request": request})

    def ok(self, client: str, method: str, **request: Any) -> Any:
        """One RPC that must succeed; its result."""
        answer = self.call(client, method, **request)
        assert answer["ok"], answer
        return answer["result"]

    def refused(self, client: str, method: str, **request: Any) -> tuple[str, str]:
        """One RPC that must fail: (status code name, message)."""
        answer = self.call(client, method, **request)
        assert not answer["ok"], answer
        return answer["code"], answer["message"]

    def subscribe(self, subscription: str, count: int, timeout: float) -> dict[str, Any]:
        """Streaming-pull `count` messages (or until `timeout`): {"data", "error"}."""
        return self.ask({"subscribe": subscription, "count": count, "timeout": timeout})

    def close(self) -> None:
        """End the process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def main() -> None:
    endpoint = sys.argv[1]
    kwargs = {"client_options": {"api_endpoint": endpoint}, "credentials": _credentials()}
    clients = {
        "publisher": PublisherClient(**kwargs),
        "subscriber": SubscriberClient(**kwargs),
        "schema": SchemaServiceClient(**kwargs),
    }
    for line in sys.stdin:
        order = json.loads(line)
        started = time.monotonic()
        if "subscribe" in order:
            answer = _subscribe(endpoint, order["subscribe"], order["count"], order["timeout"])
        elif "refresh" in order:
            answer = _refresh(kwargs["credentials"])
        elif "id_token" in order:
            answer = _id_token(kwargs["credentials"], order["id_token"], order["include_email"])
        else:
            request = order["request"]
            if order["method"] == "publish":
                for message in request["messages"]:
                    message["data"] = message.get("data", "").encode()
            if order["method"] == "set_iam_policy" and "etag" in request["policy"]:
                request["policy"]["etag"] = base64.b64decode(request["policy"]["etag"])
            method = getattr(clients[order["call"]], order["method"])
            try:
                answer = {"ok": True, "result": _plain(method(request=request, timeout=30))}
            except exceptions.GoogleAPICallError as exc:
                answer = _failure(exc)
            except Exception as exc:  # a mistake of the test: reported, the process goes on
                answer = {"ok": False, "code": "CLIENT_ERROR", "message": repr(exc)}
        answer["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
