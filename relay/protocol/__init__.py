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
    check_subscription_lifetime,
)
from relay.protocol._names import (
    CORRELATION_ID_ATTRIBUTE,
    ID_ATTRIBUTE,
    MAX_FILTER_BYTES,
    REPLY_TO_ATTRIBUTE,
    TYPE_ATTRIBUTE,
    check_correlation_id,
    check_group,
    check_project_id,
    check_resource_id,
    correlation_group,
    group_filter,
    grouped_id,
    project_of,
    subscription_path,
    topic_path,
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
    "CORRELATION_ID_ATTRIBUTE",
    "DEFAULT_OFFLOAD_THRESHOLD",
    "EXAMPLE_CSV_PROFILE",
    "EXAMPLE_ECHO",
    "ID_ATTRIBUTE",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_FILTER_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROGRESS",
    "REPLY_TO_ATTRIBUTE",
    "RESULT_FAILED",
    "RESULT_SUCCEEDED",
    "STRUCTURED_CONTENT_TYPE",
    "TYPE_ATTRIBUTE",
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
    "check_correlation_id",
    "check_group",
    "check_message",
    "check_project_id",
    "check_resource_id",
    "check_subscription_lifetime",
    "correlation_group",
    "default_registry",
    "failed",
    "from_binary",
    "from_message",
    "from_structured",
    "group_filter",
    "grouped_id",
    "new_request",
    "project_of",
    "subscription_path",
    "succeeded",
    "to_binary",
    "to_structured",
    "topic_path",
]
