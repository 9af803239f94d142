"""The broker's TLS for --require-auth: a local CA and server certificates in the data directory.

Clients trust the CA the standard way (gRPC: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=<data>/tls-ca.pem;
requests: REQUESTS_CA_BUNDLE). Both are reused across restarts while valid for another day; the
server certificate is made again (by the same CA) when it would not name the host the broker
listens on. Keys are 0600. Certificates carry the key identifiers RFC 5280 asks for, which
OpenSSL's strict verification (urllib3 on Python 3.13+) requires; older ones are made again.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_FILE", "ServerTls"]

CA_FILE = "tls-ca.pem"
_CA_KEY = "tls-ca-key.pem"
_CERT = "tls-server.pem"
_KEY = "tls-server-key.pem"
_LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")
_CA_DAYS = 3650
_CERT_DAYS = 825
_FRESH = dt.timedelta(days=1)


@dataclass(frozen=True)
class ServerTls:
    """What the gRPC server presents (PEM key and certificate) and the CA file clients trust."""

    ca_file: Path
    key_pem: bytes
    cert_pem: bytes

    @classmethod
    def load_or_create(cls, data_dir: Path, host: str) -> ServerTls:
        """The CA and a certificate for `host` (and 127.0.0.1, ::1, localhost) in `data_dir`."""
        names = tuple(dict.fromkeys((*_LOCAL_NAMES, host)))
        return cls.for_names(data_dir, names, _CERT, _KEY)

    @classmethod
    def for_names(
        cls, data_dir: Path, names: tuple[str, ...], cert_file: str, key_file: str
    ) -> ServerTls:
        """The CA and a certificate for exactly `names` (the last one its common name), kept in
        `cert_file` and `key_file` of `data_dir`."""
        ca_key, ca_cert = _ca(data_dir)
        key_path, cert_path = data_dir / key_file, data_dir / cert_file
        if not _serves(key_path, cert_path, ca_cert, names):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _signed(key.public_key(), ca_key, ca_cert, names)
            _write(key_path, _private_pem(key), private=True)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        return cls(data_dir / CA_FILE, key_path.read_bytes(), cert_path.read_bytes())


def _ca(data_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The data dir's CA, made (with a new key) when missing, unreadable, about to expire or
    without a subject key identifier."""
    key_path, cert_path = data_dir / _CA_KEY, data_dir / CA_FILE
    loaded = _load(key_path, cert_path)
    if (
        loaded is not None
        and loaded[1].not_valid_after_utc > _now() + _FRESH
        and _has(loaded[1], x509.SubjectKeyIdentifier)
    ):
        return loaded
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay broker local CA")])
    cert = (
        _builder(name, name, key.public_key(), _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _private_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return key, cert


def _serves(
    key_path: Path, cert_path: Path, ca_cert: x509.Certificate, names: tuple[str, ...]
) -> bool:
    """Whether the stored server certificate is this CA's, fresh, for its key and every name."""
    loaded = _load(key_path, cert_path)
    if loaded is None:
        return False
    key, cert = loaded
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc <= _now() + _FRESH:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    same_key = _public_der(key.public_key()) == _public_der(cert.public_key())
    identified = _has(cert, x509.AuthorityKeyIdentifier)
    return same_key and identified and all(_general_name(name) in sans for name in names)


def _has(cert: x509.Certificate, extension: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(extension)
    except x509.ExtensionNotFound:
        return False
    return True


def _signed(
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: tuple[str, ...],
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])])
    return (
        _builder(subject, ca_cert.subject, public_key, _CERT_DAYS)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load(
    key_path: Path, cert_path: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError):
        return None
    return (key, cert) if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write `path` atomically, 0600 for a key (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
