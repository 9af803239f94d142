"""What travels between Airflow and Cloud Functions: CloudEvents over Pub/Sub (docs/protocol.md).

Import-light on purpose (it runs in a function's cold start): no google, grpc, airflow or
functions_framework imports; jsonschema loads on first validation, google-cloud-storage only
inside GcsBlobStore.
"""

from relay.protocol._blobs import BlobStore, GcsBlobStore, LocalBlobStore, blob_store_for
from relay.protocol._errors import (
    DataRefError,
    DecodeError,
    InvalidAttributeError,
    LimitError,
    MissingAttributeError,
    ProtocolError,
    SchemaValidationError,
)
from relay.protocol._event import (
    EXAMPLE_CSV_PROFILE,
    EXAMPLE_ECHO,
    PROGRESS,
    RESULT_FAILED,
    RESULT_SUCCEEDED,
    Event,
)
from relay.protocol._limits import (
    DEFAULT_OFFLOAD_THRESHOLD,
    MAX_ATTRIBUTE_KEY_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    check_message,
)
from relay.protocol._pubsub import (
    STRUCTURED_CONTENT_TYPE,
    Message,
    from_binary,
    from_message,
    from_structured,
    to_binary,
    to_structured,
)
from relay.protocol._results import ErrorInfo, failed, new_request, succeeded
from relay.protocol._schemas import SchemaRegistry, default_registry

__all__ = [
    "DEFAULT_OFFLOAD_THRESHOLD",
    "EXAMPLE_CSV_PROFILE",
    "EXAMPLE_ECHO",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROGRESS",
    "RESULT_FAILED",
    "RESULT_SUCCEEDED",
    "STRUCTURED_CONTENT_TYPE",
    "BlobStore",
    "DataRefError",
    "DecodeError",
    "ErrorInfo",
    "Event",
    "GcsBlobStore",
    "InvalidAttributeError",
    "LimitError",
    "LocalBlobStore",
    "Message",
    "MissingAttributeError",
    "ProtocolError",
    "SchemaRegistry",
    "SchemaValidationError",
    "blob_store_for",
    "check_message",
    "default_registry",
    "failed",
    "from_binary",
    "from_message",
    "from_structured",
    "new_request",
    "succeeded",
    "to_binary",
    "to_structured",
]
