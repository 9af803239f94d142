"""`relay deploy`: the topology's functions onto Cloud Functions (2nd gen), or onto `relay up`.

`deploy(topology, names, dry_run=...)` packages each function's folder with relay's own wheel,
uploads it (GenerateUploadUrl), then creates the function or updates only the fields that changed,
waiting on each long-running operation. The stock `google-cloud-functions` client talks to Google
Cloud, or to the local control plane when CLOUD_FUNCTIONS_EMULATOR_HOST is set. See
docs/functions.md#deploying.
"""

from relay.deploy._client import EMULATOR_HOST_ENV, UploadError, function_client, upload
from relay.deploy._deploy import (
    Deployed,
    DeployError,
    DeployPlan,
    FunctionChange,
    apply,
    deploy,
    describe_requests,
    plan,
    request_for,
)
from relay.deploy._desired import SOURCE_LABEL, DesiredFunction, desired_function
from relay.deploy._environment import function_environment
from relay.deploy._package import Archive, PackageError, package, relay_wheel, wheel_name

__all__ = [
    "EMULATOR_HOST_ENV",
    "SOURCE_LABEL",
    "Archive",
    "DeployError",
    "DeployPlan",
    "Deployed",
    "DesiredFunction",
    "FunctionChange",
    "PackageError",
    "UploadError",
    "apply",
    "deploy",
    "describe_requests",
    "desired_function",
    "function_client",
    "function_environment",
    "package",
    "plan",
    "relay_wheel",
    "request_for",
    "upload",
    "wheel_name",
]
