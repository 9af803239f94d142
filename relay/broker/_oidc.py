"""OIDC ID tokens for push subscriptions, signed like Google signs them.

The broker keeps one RSA key in its data directory, signs RS256 JWTs carrying the claims Google
puts in push tokens, and publishes the matching X.509 certificate in Google's `{kid: PEM}` form,
so receivers verify with `google.oauth2.id_token.verify_token(..., certs_url=<broker>/certs)`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["ISSUER", "TokenSigner"]

ISSUER = "https://accounts.google.com"
_KEY_FILE = "oidc-key.pem"
_CERT_FILE = "oidc-cert.pem"


class TokenSigner:
    """Mints push OIDC tokens with a persistent RSA key; `certs()` serves the public half."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self._certificate = certificate
        # Stable across restarts: derived from the public key only.
        self.kid = hashlib.sha256(_public_der(key)).hexdigest()[:40]
        self._header = _b64url(
            json.dumps(
                {"alg": "RS256", "typ": "JWT", "kid": self.kid}, separators=(",", ":")
            ).encode("ascii")
        )
        self._cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TokenSigner:
        """Load the key from `data_dir` or create it there (mode 0600) on first use."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        key_path = data_dir / _KEY_FILE
        if not key_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(key_path, pem)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path} does not hold an RSA private key")
        os.chmod(key_path, 0o600)
        cert_path = data_dir / _CERT_FILE
        certificate = _load_certificate(cert_path, loaded)
        if certificate is None:
            certificate = _self_signed(loaded)
            tmp = cert_path.with_suffix(".tmp")
            tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
            os.replace(tmp, cert_path)
        return cls(loaded, certificate)

    def mint(
        self,
        audience: str,
        email: str,
        *,
        now: float | None = None,
        lifetime: int = 3600,
        include_email: bool = True,
    ) -> str:
        """Return an RS256 ID token for `audience` on behalf of the service account `email`
        (without the `email` and `email_verified` claims when not `include_email`, as
        generateIdToken's includeEmail=false gives)."""
        issued = int(time.time() if now is None else now)
        payload: dict[str, object] = {
            "iss": ISSUER,
            "aud": audience,
            "azp": _subject(email),
            "sub": _subject(email),
            "email": email,
            "email_verified": True,
            "iat": issued,
            "exp": issued + lifetime,
        }
        if not include_email:
            del payload["email"], payload["email_verified"]
        body = _b64url(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        signing_input = f"{self._header}.{body}".encode("ascii")
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{self._header}.{body}.{_b64url(signature)}"

    def certs(self) -> dict[str, str]:
        """The public certificates in Google's `{kid: PEM X.509 certificate}` form."""
        return {self.kid: self._cert_pem}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject(email: str) -> str:
    """A stable numeric id for a service account, like Google's 21-digit unique ids."""
    digest = int.from_bytes(hashlib.sha256(email.encode("utf-8")).digest()[:9], "big")
    return str(10**20 + digest % (9 * 10**20))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_certificate(path: Path, key: rsa.RSAPrivateKey) -> x509.Certificate | None:
    """The stored certificate when it still matches the key and is valid for a day or more."""
    if not path.exists():
        return None
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return None
    cert_der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    same_key = cert_der == _public_der(key)
    fresh = certificate.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return certificate if same_key and fresh else None


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay broker push tokens")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
