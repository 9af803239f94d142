"""The local Cloud Functions (2nd gen) control plane of `relay up`.

The stock `google-cloud-functions` client talks to it (FunctionService and google.longrunning
Operations over gRPC, insecure, at CLOUD_FUNCTIONS_EMULATOR_HOST); requests are checked as Google
checks them; sources upload to a local URL; a deployed function runs from its uploaded archive
under functions-framework at the URL GetFunction returns, which is the stable URL relay up gave it.

It lives inside relay.up because it exists to serve relay up: it supervises function processes
beside relay up's own, verifies invokers against relay up's broker and creates Eventarc trigger
subscriptions on it.
"""

from relay.up.control_plane._routes import Routes
from relay.up.control_plane._server import ControlPlane

__all__ = ["ControlPlane", "Routes"]
