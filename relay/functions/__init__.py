"""relay.functions: write only the logic of a Cloud Function; relay speaks the protocol.

    from relay.functions import NonRetryableError, Request, relay_function

    @relay_function
    def handle(request: Request) -> dict:
        if "text" not in request.data:
            raise NonRetryableError("no text")        # -> failed result, retryable=false, ack
        return {"echo": request.data["text"]}          # -> succeeded result, then ack

`handle` is a functions-framework CloudEvent function: `functions-framework --target handle`
serves it, `relay deploy` deploys it (docs/functions.md#deploying-relay-deploy).
It accepts Eventarc Pub/Sub events, Pub/Sub pushes (wrapped or no_wrapper) and direct HTTP
CloudEvents; it publishes the result to the request's replyto topic before answering 2xx; any
other exception answers 5xx so Pub/Sub retries. See docs/functions.md.

Importable with relay[functions] alone; never imports Airflow. google-cloud-pubsub is imported on
the first publish, google-auth only when push authentication is on.
"""

from relay.functions._auth import GOOGLE_CERTS_URL, PushAuth
from relay.functions._call import Call, Response
from relay.functions._dead_letter import (
    DELIVERY_COUNT_ATTRIBUTE,
    dead_letter_function,
    dead_letter_pipeline,
)
from relay.functions._decorator import RelayDeliveryError, relay_function
from relay.functions._errors import NonRetryableError, PushAuthError
from relay.functions._idempotency import (
    FileIdempotencyStore,
    GcsIdempotencyStore,
    IdempotencyStore,
    MemoryIdempotencyStore,
)
from relay.functions._pipeline import HandlerPipeline
from relay.functions._publisher import PubSubPublisher, ResultPublisher
from relay.functions._request import Request
from relay.functions._runtime import Runtime
from relay.functions._settings import (
    BLOB_STORES_ENV,
    MAX_DELIVERY_ATTEMPTS_ENV,
    PUBSUB_API_ENDPOINT_ENV,
    PUSH_ALLOWED_EMAILS_ENV,
    PUSH_AUDIENCE_ENV,
    PUSH_CERTS_URL_ENV,
    REPLY_TOPICS_ENV,
)

__all__ = [
    "BLOB_STORES_ENV",
    "DELIVERY_COUNT_ATTRIBUTE",
    "GOOGLE_CERTS_URL",
    "MAX_DELIVERY_ATTEMPTS_ENV",
    "PUBSUB_API_ENDPOINT_ENV",
    "PUSH_ALLOWED_EMAILS_ENV",
    "PUSH_AUDIENCE_ENV",
    "PUSH_CERTS_URL_ENV",
    "REPLY_TOPICS_ENV",
    "Call",
    "FileIdempotencyStore",
    "GcsIdempotencyStore",
    "HandlerPipeline",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "NonRetryableError",
    "PubSubPublisher",
    "PushAuth",
    "PushAuthError",
    "RelayDeliveryError",
    "Request",
    "Response",
    "ResultPublisher",
    "Runtime",
    "dead_letter_function",
    "dead_letter_pipeline",
    "relay_function",
]
