"""The stock Cloud Functions v2 client, for Google Cloud or for `relay up`'s control plane.

`CLOUD_FUNCTIONS_EMULATOR_HOST=host:port` does for `relay deploy` what PUBSUB_EMULATOR_HOST does
for the Pub/Sub clients: an insecure channel to that address with anonymous credentials. Google
defines no such variable for Cloud Functions; relay up prints it beside PUBSUB_EMULATOR_HOST.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

EMULATOR_HOST_ENV = "CLOUD_FUNCTIONS_EMULATOR_HOST"
UPLOAD_HEADERS = {
    "Content-Type": "application/zip",
    "x-goog-content-length-range": "0,104857600",
}
"""What Google asks of a PUT to a source upload URL (and no Authorization header)."""


def emulator_host() -> str | None:
    """The local control plane's address, when CLOUD_FUNCTIONS_EMULATOR_HOST is set."""
    return os.environ.get(EMULATOR_HOST_ENV) or None


def function_client(credentials: Any = None) -> Any:
    """A `functions_v2.FunctionServiceClient`: Google Cloud with `credentials` (default:
    Application Default Credentials), or the control plane at CLOUD_FUNCTIONS_EMULATOR_HOST."""
    from google.cloud import functions_v2

    host = emulator_host()
    if host is None:
        return functions_v2.FunctionServiceClient(credentials=credentials)
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.functions_v2.services.function_service.transports import (
        FunctionServiceGrpcTransport,
    )

    transport = FunctionServiceGrpcTransport(
        channel=grpc.insecure_channel(host),
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    return functions_v2.FunctionServiceClient(transport=transport)


class UploadError(RuntimeError):
    """The source upload URL refused the archive."""


def upload(url: str, data: bytes, timeout: float = 300.0) -> None:
    """PUT the archive to a GenerateUploadUrl URL, as Google documents it."""
    request = urllib.request.Request(url, data=data, headers=UPLOAD_HEADERS, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", errors="replace")[:500]
        raise UploadError(f"the upload URL answered {exc.code}: {body}") from exc
    except OSError as exc:
        raise UploadError(f"cannot upload to {url}: {exc}") from exc
