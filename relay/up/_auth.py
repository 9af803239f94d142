"""`relay up --require-auth`: who runs as whom, what each identity is granted, how clients connect.

Every topology identity with a service account gets a metadata server of its own from the broker
(`--identity`); each function runs as its `runtime_identity`, with google-auth's Compute Engine
credentials from that server, the broker's CA and the API endpoint (no PUBSUB_EMULATOR_HOST).
`relay up`'s own clients (provisioning, the live view, pull forwarders) stand in for the operator
who runs `relay provision` on Google Cloud: the identity `relay-up@PROJECT.iam.gserviceaccount.com`,
through authorized-user credentials (what `gcloud auth application-default login` gives an
operator) whose token_uri is that identity's token endpoint.

Grants: provisioning sets the topology's topic and subscription bindings through SetIamPolicy, as
on Google; the rest (the waiter's custom role and project binding, the provisioner's
`roles/pubsub.admin` and its actAs on the push accounts) is `relay.provision.project_grants`,
written to the broker's --grants file. The Pub/Sub service agent's grants are left out (the
broker's own deliveries are not calls of a caller) and so are run.invoker's (functions check
their callers' ID tokens themselves).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.provision import project_grants
from relay.topology import Topology

__all__ = [
    "CA_ENV",
    "grants",
    "identity_environment",
    "operator",
    "operator_credentials",
    "service_accounts",
    "write_grants",
]

CA_ENV = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"
_OPERATOR_NAME = "relay-up"


def operator(topology: Topology) -> str:
    """The service account `relay up`'s own clients act as."""
    return f"{_OPERATOR_NAME}@{topology.project}.iam.gserviceaccount.com"


def service_accounts(topology: Topology) -> tuple[str, ...]:
    """Every identity that gets a metadata server: the topology's service accounts, the
    operator's."""
    accounts = [identity.service_account for identity in topology.identities.values()]
    return tuple(dict.fromkeys([*(a for a in accounts if a), operator(topology)]))


def grants(topology: Topology) -> dict[str, Any]:
    """The --grants file body of `topology`, with `relay up` as the provisioner."""
    return project_grants(topology, provisioner=f"serviceAccount:{operator(topology)}")


def write_grants(topology: Topology, path: Path) -> Path:
    """Write `grants(topology)` to `path` (replacing it whole); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(grants(topology), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def identity_environment(metadata_host: str, ca_file: Path) -> dict[str, str]:
    """What a process needs to run as the identity of `metadata_host` against the broker."""
    return {
        "GCE_METADATA_HOST": metadata_host,
        "GCE_METADATA_IP": metadata_host,
        CA_ENV: str(ca_file),
        # Application Default Credentials must come from the metadata server, not from a key
        # file or a gcloud login of the developer's (ADC looks at those first).
        "CLOUDSDK_CONFIG": str(ca_file.parent / "no-gcloud-config"),
    }


def operator_credentials(metadata: Mapping[str, str], topology: Topology) -> Any:
    """google-auth authorized-user credentials of the operator, refreshed at its token
    endpoint by google-auth itself."""
    from google.oauth2.credentials import Credentials

    return Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="relay-up",
        token_uri=f"http://{metadata[operator(topology)]}/token",
        client_id="relay-up",
        client_secret="relay-up",
    )
