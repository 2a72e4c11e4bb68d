"""A test certificate authority made with ``cryptography``: server certificates for loopback receivers,
client certificates for mutual TLS (valid, expired, not yet valid), and TLS contexts using them.

Written out by hand rather than with trustme because the tests need certificates that
are wrong on purpose: expired ones, and keys that belong to another certificate.
"""

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deliverer.security import client_certificates

KeyPair = ec.EllipticCurvePrivateKey


def _key() -> KeyPair:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: KeyPair) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass(frozen=True)
class Issued:
    certificate: str  # PEM
    key: str  # PEM

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_text(self.certificate)
        key.write_text(self.key)
        return cert, key


class CA:
    """A self-signed root that issues leaf certificates."""

    def __init__(self, name: str = "DocExtract test CA") -> None:
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, name: str, *, server: bool, not_before: datetime | None = None,
              not_after: datetime | None = None) -> Issued:
        """A leaf for ``name`` (a host name or an IP address: its subjectAltName), for a server or a client."""
        key = _key()
        now = datetime.now(UTC)
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            alt = x509.DNSName(name)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(hours=1))
            .not_valid_after(not_after or now + timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256()))
        return Issued(certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))

    def write_trust(self, path: Path) -> Path:
        """The root as a CA bundle (for SSL_CERT_FILE, which ssl.create_default_context reads)."""
        path.write_text(self.pem)
        return path

    def server_context(self, name: str = "127.0.0.1", *, require_client_from: "CA | None" = None) -> ssl.SSLContext:
        """A server's TLS context with a certificate for ``name``; with ``require_client_from``, a
        handshake without a client certificate signed by that CA is refused."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issued = self.issue(name, server=True)
        client_certificates.load(context, issued.certificate, issued.key)
        if require_client_from is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=require_client_from.pem)
        return context

    def trusting(self) -> ssl.SSLContext:
        """A client's TLS context that trusts this CA."""
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=self.pem)
        return context
