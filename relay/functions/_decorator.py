"""`@relay_function`: turn `def handle(request: Request) -> JSON` into a functions-framework
CloudEvent function that speaks relay's protocol.

The decorated object is registered exactly like `@functions_framework.cloud_event` (so
`functions-framework --target handle` serves it and Cloud Functions 2nd gen deploys it unchanged)
and can be called with a CloudEvent. When functions-framework loads the module it builds a Flask
app and runs the module inside that app's context: relay then also registers a `before_request`
hook on that app, so relay reads every POST raw (headers and body) before functions-framework's
CloudEvent parsing. That is what lets it accept a Pub/Sub push with no_wrapper (which
functions-framework would answer 400), keep `subscription` and `deliveryAttempt` (which its push
conversion drops), check push tokens first, and choose the status code Pub/Sub acts on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast, overload

from relay.functions import _settings as settings
from relay.functions._auth import PushAuth
from relay.functions._call import Response
from relay.functions._envelope import from_cloud_event
from relay.functions._errors import Unanswerable
from relay.functions._idempotency import IdempotencyStore
from relay.functions._pipeline import HandlerPipeline
from relay.functions._publisher import ResultPublisher
from relay.functions._runtime import BodyError, Runtime
from relay.protocol import BlobStore, SchemaRegistry

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

_DEFAULT = object()
BODY_READ_TIMEOUT = 5.0  # seconds a client may pause while sending a body (gunicorn only)


class RelayDeliveryError(Exception):
    """Raised from the CloudEvent entry point when the delivery must not be acked
    (functions-framework turns it into a 500); carries relay's intended response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.body.decode("utf-8", "replace"))
        self.response = response


def default_source(name: str) -> str:
    """ce-source of results: RELAY_FUNCTION_SOURCE, else the Cloud Run service (K_SERVICE)."""
    explicit = os.environ.get("RELAY_FUNCTION_SOURCE")
    if explicit:
        return explicit
    return f"//functions/{os.environ.get('K_SERVICE') or name}"


@overload
def relay_function(func: HandlerT, /) -> Callable[[Any], None]: ...


@overload
def relay_function(
    func: None = None,
    /,
    *,
    source: str | None = None,
    registry: SchemaRegistry | object | None = _DEFAULT,
    blob_stores: Iterable[BlobStore] | None = None,
    reply_topics: Iterable[str] | None = None,
    publisher: ResultPublisher | None = None,
    idempotency: IdempotencyStore | None = None,
    publish_timeout: float = 30.0,
    push_audience: str | None = None,
    push_allowed_emails: Iterable[str] | None = None,
    push_certs_url: str | None = None,
    name: str | None = None,
) -> Callable[[HandlerT], Callable[[Any], None]]: ...


def relay_function(
    func: Callable[..., Any] | None = None,
    /,
    *,
    source: str | None = None,
    registry: SchemaRegistry | object | None = _DEFAULT,
    blob_stores: Iterable[BlobStore] | None = None,
    reply_topics: Iterable[str] | None = None,
    publisher: ResultPublisher | None = None,
    idempotency: IdempotencyStore | None = None,
    publish_timeout: float = 30.0,
    push_audience: str | None = None,
    push_allowed_emails: Iterable[str] | None = None,
    push_certs_url: str | None = None,
    name: str | None = None,
) -> Any:
    """Make `func(request: Request) -> JSON-able` (sync or async) a relay Cloud Function.

    source: ce-source of the results (default: RELAY_FUNCTION_SOURCE or //functions/<K_SERVICE>).
    registry: schemas to validate request data (default: relay's default_registry(); None: off).
    blob_stores: the only stores datarefs are read from; large results go to the first (default:
    RELAY_BLOB_STORES; none configured: every dataref is refused, large results fail).
    reply_topics: the only topics results are published to, full paths or projects/<p>/topics/*
    (default: RELAY_REPLY_TOPICS; none configured: every request is refused, unanswered).
    publisher: result publisher (default: one lazily created PublisherClient per instance).
    idempotency: an IdempotencyStore to answer duplicates with the stored result (default: off).
    publish_timeout: seconds to wait for the result publish before answering 5xx.
    push_audience / push_allowed_emails / push_certs_url: opt-in push OIDC token checks (also
    from RELAY_PUSH_AUDIENCE, RELAY_PUSH_ALLOWED_EMAILS, RELAY_PUSH_CERTS_URL).
    name: the functions-framework target name (default: the function's __name__).
    """

    def decorate(handler: Callable[..., Any]) -> Callable[[Any], None]:
        function_name = name or handler.__name__
        runtime = Runtime(
            HandlerPipeline(handler),
            name=function_name,
            source=source or default_source(function_name),
            registry=None if registry is _DEFAULT else registry,  # type: ignore[arg-type]
            use_default_registry=registry is _DEFAULT,
            blob_stores=settings.blob_stores(blob_stores),
            reply_topics=settings.reply_topics(reply_topics),
            publisher=publisher,
            idempotency=idempotency,
            publish_timeout=publish_timeout,
            auth=PushAuth.configure(push_audience, push_allowed_emails, push_certs_url),
        )
        return build_function(runtime, handler)

    if func is not None:
        return decorate(func)
    return decorate


def build_function(runtime: Runtime, wrapped: Callable[..., Any] | None) -> Callable[[Any], None]:
    """The CloudEvent function for `runtime`, registered with functions-framework."""

    def cloud_event_function(cloud_event: Any) -> None:
        """functions-framework entry point (used when relay's Flask hook is not installed)."""
        response = serve_cloud_event(runtime, cloud_event)
        if response.status >= 300:
            raise RelayDeliveryError(response)

    if wrapped is not None:
        functools.update_wrapper(cloud_event_function, wrapped)
    cloud_event_function.__name__ = runtime.name
    cloud_event_function.__qualname__ = runtime.name
    cloud_event_function.relay_runtime = runtime  # type: ignore[attr-defined]
    import functions_framework

    # The public decorator: registers `runtime.name` as a cloudevent function.
    registered: Callable[[Any], None] = functions_framework.cloud_event(cloud_event_function)
    _install_hook(runtime)
    return registered


def serve_cloud_event(runtime: Runtime, cloud_event: Any) -> Response:
    """Serve an already parsed cloudevents.http.CloudEvent (no raw request available)."""
    try:
        attributes = dict(cloud_event.get_attributes())
        data = cloud_event.get_data()
    except AttributeError:
        raise TypeError(
            f"expected a cloudevents CloudEvent, got {type(cloud_event).__name__}"
        ) from None
    headers = _flask_headers()
    if headers is not None:  # inside a Flask request without the hook: the raw request is better
        return runtime.handle_http(headers, _body_reader(_flask_request()))
    try:
        delivery = from_cloud_event(attributes, data)
    except Unanswerable as exc:
        return runtime.unanswerable(exc)
    return runtime.handle_delivery(delivery)


def _flask_headers() -> dict[str, str] | None:
    try:
        import flask
    except ImportError:  # pragma: no cover - flask comes with functions-framework
        return None
    if not flask.has_request_context():
        return None
    return {key.lower(): value for key, value in flask.request.headers.items()}  # cold path


def _flask_request() -> Any:
    import flask

    return flask.request._get_current_object()  # type: ignore[attr-defined]


def _body_reader(request: Any) -> Callable[[int], bytes]:
    """A reader of a werkzeug request's body: over `limit` bytes is 413 (Content-Length was
    checked before; a chunked body is cut at the limit), and under gunicorn a client that stops
    sending for BODY_READ_TIMEOUT seconds gets 408 instead of holding a worker thread."""

    environ = request.environ

    def read(limit: int) -> bytes:
        if not environ.get("CONTENT_LENGTH"):
            request.max_content_length = limit
        sock = environ.get("gunicorn.socket")
        previous = None
        if sock is not None:
            previous = sock.gettimeout()
            sock.settimeout(BODY_READ_TIMEOUT)
        try:
            return bytes(request.get_data())
        except Exception as exc:
            raise _body_error(exc, limit) from exc
        finally:
            if sock is not None:
                sock.settimeout(previous)

    return read


def _body_error(exc: Exception, limit: int) -> Exception:
    """The BodyError for what reading a body raised (anything else unchanged)."""
    from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

    if isinstance(exc, RequestEntityTooLarge):
        return BodyError(413, f"body exceeds {limit} bytes")
    if isinstance(exc, (OSError, ClientDisconnected)):  # the socket timed out, or the client left
        return BodyError(408, f"body not received in {BODY_READ_TIMEOUT} s: {exc}")
    return exc


def _install_hook(runtime: Runtime) -> None:
    """Install the raw-request hook on the Flask app functions-framework is building, if any."""
    import flask

    if not flask.has_app_context():
        return
    app: Any = flask.current_app._get_current_object()  # type: ignore[attr-defined]
    if app.name != runtime.name or getattr(app, "_relay_hooked", False):
        return

    def relay_before_request() -> flask.Response | None:
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        if request.method != "POST":
            return None
        # werkzeug's Headers: case-insensitive get / `in`, all from_http needs (a Mapping in spirit)
        headers = cast("Mapping[str, str]", request.headers)
        response = runtime.handle_http(headers, _body_reader(request))
        return flask.Response(
            response.body, status=response.status, content_type=response.content_type
        )

    app.before_request(relay_before_request)
    app._relay_hooked = True
