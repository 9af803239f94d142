"""What a function process gets from relay up's stand-ins for Google, wherever relay up serves it:
its own process from the function's folder (`function_server`) or a revision `relay deploy`
started on the control plane. One place, so that both reach Pub/Sub, and are reached, alike."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from relay.functions import (
    PUBSUB_API_ENDPOINT_ENV,
    PUSH_ALLOWED_EMAILS_ENV,
    PUSH_AUDIENCE_ENV,
    PUSH_CERTS_URL_ENV,
)

# What a function process must not inherit under --require-auth: the emulator switch (no TLS,
# anonymous) and a key file, which Application Default Credentials would take first.
_NOT_INHERITED = ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
_INVOKER_CHECK = (PUSH_AUDIENCE_ENV, PUSH_CERTS_URL_ENV, PUSH_ALLOWED_EMAILS_ENV)


def google_stand_ins(
    env: Mapping[str, str],
    *,
    url: str,
    pubsub_host: str,
    certs_url: str,
    invokers: Collection[str],
    timeout_seconds: int,
    identity: Mapping[str, str] | None,
) -> dict[str, str]:
    """`env` with how the function reaches Pub/Sub, who may call it, and its request timeout.

    Pub/Sub: through PUBSUB_EMULATOR_HOST, or with `identity` (--require-auth: the environment
    of its runtime identity, `relay.up.identity_environment`) as that identity over TLS to the
    API endpoint `pubsub_host`. Callers: Cloud Run's invoker check, made by relay's function
    runtime: an ID token for `url`, signed by the broker (`certs_url`), of one of `invokers`
    (401 without a valid one, 403 for anyone else; no check without invokers). The timeout is
    Cloud Run's (functions-framework's gunicorn option).
    """
    served = dict(env)
    for key in (PUBSUB_API_ENDPOINT_ENV, *_INVOKER_CHECK):
        served.pop(key, None)
    if identity is None:
        served["PUBSUB_EMULATOR_HOST"] = pubsub_host
    else:
        for key in _NOT_INHERITED:
            served.pop(key, None)
        served.update(identity)
        served[PUBSUB_API_ENDPOINT_ENV] = pubsub_host
    if invokers:
        served.update(
            {
                PUSH_AUDIENCE_ENV: url,
                PUSH_CERTS_URL_ENV: certs_url,
                PUSH_ALLOWED_EMAILS_ENV: ",".join(sorted(set(invokers))),
            }
        )
    served["CLOUD_RUN_TIMEOUT_SECONDS"] = str(timeout_seconds)
    served["THREADED_TIMEOUT_ENABLED"] = "true"
    return served
