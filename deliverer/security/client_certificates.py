"""Client certificates for mutual TLS: judged when an endpoint registers one, loaded when it is sent to.

A certificate that could only fail at send time (a key that does not belong to it,
one already expired or not yet valid, a PEM that OpenSSL will not load) is refused
at registration, where the person registering it can still fix it.

Python's ``ssl`` loads a certificate chain only from a file. The key is written to
an anonymous in-memory file (``memfd_create``, Linux) and read back through its
``/proc/self/fd`` path, so it never reaches a disk; elsewhere a private temporary
directory stands in, removed at once.
"""

import contextlib
import functools
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

MAX_PEM = 64 * 1024
"""Largest certificate (chain) or key accepted, in characters."""


class CertificateError(ValueError):
    """The certificate and key cannot be used for mutual TLS; the message says why."""


def check(certificate: str, key: str, *, now: datetime | None = None) -> None:
    """Raise CertificateError unless ``certificate`` (PEM, the client's first, then any intermediates)
    is valid ``now`` and ``key`` (PEM, unencrypted) is its private key."""
    for name, pem in (("certificate", certificate), ("key", key)):
        if not isinstance(pem, str) or not pem.strip() or len(pem) > MAX_PEM:
            raise CertificateError(f"the {name} must be PEM text of at most {MAX_PEM} characters")
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        raise CertificateError("the certificate is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except TypeError:
        raise CertificateError("the key is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError("the key is not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    leaf = chain[0]
    moment = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= moment:
        raise CertificateError(f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    if leaf.not_valid_before_utc > moment:
        raise CertificateError(f"the certificate is not valid before {leaf.not_valid_before_utc.isoformat()}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
            != private.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise CertificateError("the key does not belong to the certificate (their public keys differ)")
    try:
        load(ssl.create_default_context(), certificate, key)
    except ssl.SSLError as exc:
        raise CertificateError(f"OpenSSL cannot use the certificate and key: {exc.reason or exc}") from None


@functools.lru_cache(maxsize=1024)  # per request sent with one; the strings come from a cache, hashed once
def fingerprint(certificate: str, key: str) -> str:
    """Which client identity a connection carries: connections are shared only between equal ones."""
    return hashlib.sha256(f"{certificate}\0{key}".encode()).hexdigest()


def load(context: ssl.SSLContext, certificate: str, key: str) -> ssl.SSLContext:
    """``context`` presenting the certificate and key; returns it."""
    with _pem_file(certificate + "\n" + key) as path:
        context.load_cert_chain(path)
    return context


@contextlib.contextmanager
def _pem_file(text: str) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("client-certificate")
        try:
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # made 0700
        path = os.path.join(directory, "client.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="ascii") as file:
            file.write(text)
        yield path
