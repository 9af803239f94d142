"""Impersonation chains under `relay broker --require-auth`: the IAM Credentials API
(generateAccessToken, generateIdToken) that google-auth's impersonated credentials call.

Every client is a process of the identity `airflow` (its metadata server gives the source
credentials) that reaches https://iamcredentials.googleapis.com, the URL google-auth builds,
through the broker's CONNECT proxy with standard variables only (https_proxy, no_proxy,
REQUESTS_CA_BUNDLE): google-auth's ImpersonatedCredentials and IDTokenCredentials unmodified
(tests/_auth_client.py), and relay's RelayHook on the Google provider's GoogleBaseHook with
`impersonation_chain` (tests/_hook_client.py). The accounts impersonated have no metadata server:
their tokens come from the chain only.
"""

from __future__ import annotations

import calendar
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from _auth_client import (
    Client,
    access_token,
    auth_broker_fields,
    client_environment,
    iam_proxy_field,
)
from _hook_client import HookClient

PROJECT = "relay-test"


def _sa(name: str) -> str:
    return f"{name}@{PROJECT}.iam.gserviceaccount.com"


ADMIN, CALLER = _sa("admin"), _sa("airflow")
HOP, TARGET, NOBODY, TOKEN_ONLY = _sa("hop"), _sa("target"), _sa("nobody"), _sa("token-only")
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
GET_ACCESS_TOKEN_ONLY = f"projects/{PROJECT}/roles/getAccessTokenOnly"
AUDIENCE = "http://127.0.0.1:9/echo"
IAM_URL = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts"


def _binding(resource: str, role: str, *emails: str) -> dict[str, Any]:
    return {"resource": resource, "role": role, "members": [f"serviceAccount:{e}" for e in emails]}


def _on(email: str) -> str:
    return f"projects/{PROJECT}/serviceAccounts/{email}"


# airflow -> hop -> target is the chain; token-only holds a custom role with getAccessToken alone
# (no implicitDelegation, no getOpenIdToken); nobody may mint tokens of `nobody`.
GRANTS = {
    "roles": {GET_ACCESS_TOKEN_ONLY: ["iam.serviceAccounts.getAccessToken"]},
    "bindings": [
        _binding(f"projects/{PROJECT}", "roles/pubsub.admin", ADMIN),
        _binding(f"projects/{PROJECT}", "roles/pubsub.publisher", TARGET),
        _binding(_on(HOP), TOKEN_CREATOR, CALLER),
        _binding(_on(TARGET), TOKEN_CREATOR, HOP, TOKEN_ONLY),
        _binding(_on(TOKEN_ONLY), GET_ACCESS_TOKEN_ONLY, CALLER),
    ],
}


@dataclass
class Broker:
    """A --require-auth broker, its TLS CA, metadata servers and IAM Credentials proxy."""

    process: Any
    ca: Path
    metadata: dict[str, str]
    proxy: str
    logs: Path
    clients: list[Any] = field(default_factory=list)

    def environment(self, email: str = CALLER) -> dict[str, str]:
        return client_environment(self.metadata[email], self.ca, iam_proxy=self.proxy)

    def client(self, *chain: str, email: str = CALLER, **variables: str) -> Client:
        """A stock-client process of `email`, acting as chain[-1] through chain (none: itself)."""
        environment = self.environment(email)
        if chain:
            environment["AUTH_CLIENT_IMPERSONATE"] = ",".join(chain)
        environment.update(variables)
        client = Client(
            self.process.host, environment, self.logs / f"client-{len(self.clients)}.log"
        )
        self.clients.append(client)
        return client

    def hook(self, *chain: str) -> HookClient:
        """A RelayHook process of `airflow` with impersonation_chain=chain."""
        connection = {
            "conn_type": "google_cloud_platform",
            "extra": {"project": PROJECT, "api_endpoint": self.process.host},
        }
        log = self.logs / f"hook-{len(self.clients)}.log"
        client = HookClient(self.environment(), connection, list(chain), log)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


def _start(start: Callable[..., Any], root: Path, *args: str) -> Broker:
    root.mkdir(parents=True, exist_ok=True)
    (root / "grants.json").write_text(json.dumps(GRANTS))
    process = start(
        root / "data",
        args=[
            "--require-auth",
            "--grants",
            str(root / "grants.json"),
            "--identity",
            ADMIN,
            "--identity",
            CALLER,
            "--push-audiences",
            AUDIENCE,
            *args,
        ],
    )
    ca, metadata = auth_broker_fields(process.log_text())
    return Broker(process, ca, metadata, iam_proxy_field(process.log_text()), root)


@pytest.fixture(scope="module")
def broker(
    start_module_broker: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    started = _start(start_module_broker, tmp_path_factory.mktemp("impersonation"))
    yield started
    started.close()


@pytest.fixture
def topic(broker: Broker, unique: Callable[[str], str]) -> str:
    name = f"projects/{PROJECT}/topics/{unique('topic')}"
    admin = broker.client(email=ADMIN)
    admin.ok("publisher", "create_topic", name=name)
    return name


def _iam(broker: Broker, target: str, method: str, body: Any, token: str | None) -> Any:
    """One IAM Credentials call at Google's URL through the broker's proxy: the response."""
    session = requests.Session()
    session.trust_env = False
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        return session.post(
            f"{IAM_URL}/{target}:{method}",
            json=body,
            headers=headers,
            proxies={"https": broker.proxy},
            verify=str(broker.ca),
            timeout=10,
        )
    finally:
        session.close()


def _certs(broker: Broker) -> dict[str, str]:
    with urllib.request.urlopen(broker.process.certs_url, timeout=10) as response:
        certs: dict[str, str] = json.load(response)
    return certs


def _denied(error: str, permission: str, holder: str, account: str, hop: str) -> None:
    """Google's PERMISSION_DENIED for `permission`, naming who lacks it on which account."""
    assert "Unable to acquire impersonated credentials" in error or "ID token" in error, error
    assert "PERMISSION_DENIED" in error, error
    assert f"Permission '{permission}' denied on resource (or it may not exist)." in error, error
    assert f"relay broker, {hop}: serviceAccount:{holder} lacks permission" in error, error
    assert f"on resource '{_on(account)}'" in error, error
    assert "IAM_PERMISSION_DENIED" in error, error  # Google's ErrorInfo, naming the permission
    assert re.search(rf"""["']permission["']: ["']{re.escape(permission)}["']""", error), error


# -- google-auth's ImpersonatedCredentials, unmodified ------------------------------------------


def test_a_chain_publishes_as_its_target(broker: Broker, topic: str) -> None:
    message = {"messages": [{"data": "as target"}]}
    # airflow itself may not publish: what goes through below goes as the target.
    code, text = broker.client().refused("publisher", "publish", topic=topic, **message)
    assert (code, f"serviceAccount:{CALLER} lacks" in text) == ("PERMISSION_DENIED", True)
    before = broker.process.stats()["auth"]
    chained = broker.client(HOP, TARGET)
    assert chained.ok("publisher", "publish", topic=topic, **message)["message_ids"]
    after = broker.process.stats()["auth"]
    minted = after["impersonated"].get(f"generateAccessToken {TARGET}", 0)
    assert minted > before["impersonated"].get(f"generateAccessToken {TARGET}", 0), after
    assert after["calls"][TARGET] > before["calls"].get(TARGET, 0), after
    # The delegate's own tokens are never minted: Google's chain mints only the target's.
    assert HOP not in after["tokens_minted"], after


@pytest.mark.parametrize(
    ("chain", "permission", "holder", "account", "hop"),
    [
        (
            (TARGET,),
            "iam.serviceAccounts.getAccessToken",
            CALLER,
            TARGET,
            "the caller on the target",
        ),
        (
            (TARGET, HOP),
            "iam.serviceAccounts.implicitDelegation",
            CALLER,
            TARGET,
            "the caller on the first delegate",
        ),
        (
            (HOP, NOBODY),
            "iam.serviceAccounts.getAccessToken",
            HOP,
            NOBODY,
            "the last delegate on the target",
        ),
        # getAccessToken alone on a delegate does not let the caller delegate through it.
        (
            (TOKEN_ONLY, TARGET),
            "iam.serviceAccounts.implicitDelegation",
            CALLER,
            TOKEN_ONLY,
            "the caller on the first delegate",
        ),
    ],
    ids=["direct", "first-delegate", "last-delegate", "no-implicit-delegation"],
)
def test_each_missing_grant_of_a_chain_is_permission_denied(
    broker: Broker, chain: tuple[str, ...], permission: str, holder: str, account: str, hop: str
) -> None:
    refreshed = broker.client(*chain).ask({"refresh": True})
    assert not refreshed["ok"], refreshed
    _denied(refreshed["error"], permission, holder, account, hop)


def test_each_grant_of_a_chain_is_enough(broker: Broker) -> None:
    """The grants the refusals above lack are the ones that let these through."""
    for chain in ((HOP,), (HOP, TARGET), (TOKEN_ONLY,)):
        refreshed = broker.client(*chain).ask({"refresh": True})
        assert refreshed["ok"], (chain, refreshed)


def test_impersonated_id_tokens_are_signed_for_the_target(broker: Broker) -> None:
    from google.auth import jwt

    client = broker.client(HOP, TARGET)
    with_email = client.ask({"id_token": AUDIENCE, "include_email": True})
    assert with_email["ok"], with_email
    claims = jwt.decode(with_email["token"], certs=_certs(broker), audience=AUDIENCE)  # type: ignore[no-untyped-call]
    assert (claims["email"], claims["email_verified"]) == (TARGET, True)
    assert claims["iss"] == "https://accounts.google.com"
    without = client.ask({"id_token": AUDIENCE, "include_email": False})
    claims = jwt.decode(without["token"], certs=_certs(broker), audience=AUDIENCE)  # type: ignore[no-untyped-call]
    assert "email" not in claims, claims
    assert claims["sub"], claims
    assert claims["aud"] == AUDIENCE, claims
    # The audiences of --push-audiences only, as the metadata servers.
    other = client.ask({"id_token": "https://example.com/", "include_email": True})
    assert not other["ok"], other
    assert "signs ID tokens only for the audiences" in other["error"], other
    assert AUDIENCE in other["error"], other


def test_an_id_token_needs_get_open_id_token(broker: Broker) -> None:
    client = broker.client(TOKEN_ONLY)  # getAccessToken on token-only, not getOpenIdToken
    assert client.ask({"refresh": True})["ok"]
    minted = client.ask({"id_token": AUDIENCE, "include_email": True})
    assert not minted["ok"], minted
    _denied(
        minted["error"],
        "iam.serviceAccounts.getOpenIdToken",
        CALLER,
        TOKEN_ONLY,
        "the caller on the target",
    )


def test_an_impersonated_token_is_refreshed_once_it_expires(
    start_broker: Callable[..., Any], tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """Tokens of 2 s: the chain asks for an hour, gets 2 s and an honest expireTime, so
    google-auth mints a new one when it runs out (stock clients and RelayHook alike); a client
    that holds the first is refused."""
    broker = _start(start_broker, tmp_path, "--token-lifetime", "2")
    try:
        topic = f"projects/{PROJECT}/topics/{unique('expiring')}"
        broker.client(email=ADMIN).ok("publisher", "create_topic", name=topic)
        chained = broker.client(HOP, TARGET)
        for n in range(3):
            published = chained.call(
                "publisher", "publish", topic=topic, messages=[{"data": f"{n}"}]
            )
            assert published["ok"], published
            time.sleep(2.5)
        # The same through the Google provider's impersonation_chain (RelayHook), ID tokens too.
        hook = broker.hook(HOP, TARGET)
        for n in range(2):
            published = hook.ask({"publish": topic, "data": f"hook {n}"})
            assert published["ok"], published
            assert hook.ask({"id_token": AUDIENCE})["ok"]
            time.sleep(2.5)
        auth = broker.process.stats()["auth"]
        assert auth["impersonated"][f"generateAccessToken {TARGET}"] >= 5, auth
        assert auth["impersonated"][f"generateIdToken {TARGET}"] >= 2, auth
        assert "UNAUTHENTICATED" not in auth["refused"], auth

        answer = _iam(
            broker,
            TARGET,
            "generateAccessToken",
            {
                "delegates": [f"projects/-/serviceAccounts/{HOP}"],
                "scope": ["x"],
                "lifetime": "3600s",
            },
            access_token(broker.metadata[CALLER]),
        ).json()
        expires = calendar.timegm(time.strptime(answer["expireTime"], "%Y-%m-%dT%H:%M:%SZ"))
        assert expires - time.time() <= 2, answer  # capped by --token-lifetime
        # (No publish with it first: a client process can take longer than 2 s to start here.)
        holder = broker.client(email=CALLER, AUTH_CLIENT_FIXED_TOKEN=answer["accessToken"])
        time.sleep(max(0.0, expires + 0.5 - time.time()))
        code, message = holder.refused(
            "publisher", "publish", topic=topic, messages=[{"data": "late"}]
        )
        assert code == "UNAUTHENTICATED", message
        assert f"the access token of {TARGET} expired" in message, message
    finally:
        broker.close()


# -- the API as Google answers it ---------------------------------------------------------------


def test_calls_without_a_token_of_the_broker_are_unauthenticated(broker: Broker) -> None:
    body = {"scope": ["https://www.googleapis.com/auth/cloud-platform"]}
    for token in (None, "ya29.a0-not-ours"):
        response = _iam(broker, HOP, "generateAccessToken", body, token)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED"), error
        assert "Expected OAuth 2 access token" in error["message"], error
    response = _iam(broker, HOP, "generateAccessToken", body, access_token(broker.metadata[CALLER]))
    assert response.status_code == 200, response.text
    assert response.json()["accessToken"].startswith("ya29.")


@pytest.mark.parametrize(
    ("target", "body", "why"),
    [
        (HOP, {}, "Scope required"),
        (HOP, {"scope": ["s"], "lifetime": "3601s"}, "between 1 and 3600 seconds"),
        (HOP, {"scope": ["s"], "lifetime": "an hour"}, "expected a duration"),
        (
            HOP,
            {"scope": ["s"], "delegates": [f"projects/{PROJECT}/serviceAccounts/{HOP}"]},
            "wildcard",
        ),
        (HOP, {"scope": ["s"], "delegates": ["someone@example.com"]}, "Invalid delegate"),
    ],
    ids=[
        "no-scope",
        "lifetime-too-long",
        "lifetime-malformed",
        "delegate-project",
        "delegate-email",
    ],
)
def test_malformed_requests_are_invalid_argument(
    broker: Broker, target: str, body: dict[str, Any], why: str
) -> None:
    response = _iam(
        broker, target, "generateAccessToken", body, access_token(broker.metadata[CALLER])
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT", error
    assert why in error["message"], error


def test_the_proxy_tunnels_only_to_the_iam_credentials_api(broker: Broker) -> None:
    session = requests.Session()
    session.trust_env = False
    try:
        for url in (
            "https://pubsub.googleapis.com/v1/projects/x/topics",
            "https://oauth2.googleapis.com/token",
            "https://example.com/",
        ):
            with pytest.raises(requests.exceptions.ProxyError, match="403"):
                session.get(url, proxies={"https": broker.proxy}, verify=str(broker.ca), timeout=10)
        response = session.get("http://example.com/", proxies={"http": broker.proxy}, timeout=10)
        assert response.status_code == 403
        assert "tunnels only to iamcredentials.googleapis.com:443" in response.text
    finally:
        session.close()


# -- the Google provider's impersonation_chain, through RelayHook -------------------------------


def test_relay_hook_impersonation_chain_publishes_and_mints_id_tokens(
    broker: Broker, topic: str
) -> None:
    from google.auth import jwt

    hook = broker.hook(HOP, TARGET)
    published = hook.ask({"publish": topic, "data": "through the provider"})
    assert published["ok"], published
    assert len(published["ids"]) == 1, published
    minted = hook.ask({"id_token": AUDIENCE})
    assert minted["ok"], minted
    claims = jwt.decode(minted["token"], certs=_certs(broker), audience=AUDIENCE)  # type: ignore[no-untyped-call]
    assert claims["email"] == TARGET  # RelayHook asks for includeEmail


def test_relay_hook_without_the_token_creator_grant_fails_naming_it(
    broker: Broker, topic: str
) -> None:
    hook = broker.hook(NOBODY)
    refreshed = hook.ask({"refresh": True})
    assert not refreshed["ok"], refreshed
    _denied(
        refreshed["error"],
        "iam.serviceAccounts.getAccessToken",
        CALLER,
        NOBODY,
        "the caller on the target",
    )
    # gRPC reports credentials that cannot refresh as UNAVAILABLE, with google-auth's error.
    published = hook.ask({"publish_once": topic})
    assert (published["ok"], published["type"]) == (False, "ServiceUnavailable"), published
    assert "Getting metadata from plugin failed" in published["error"], published
    assert "Unable to acquire impersonated credentials" in published["error"], published
    assert '"permission": "iam.serviceAccounts.getAccessToken"' in published["error"], published
