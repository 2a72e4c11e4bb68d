"""What an endpoint adds to its requests: custom headers and auth, judged at registration, sealed, redacted."""

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from deliverer.ops.logsetup import REDACTED, redact_secrets
from deliverer.registry import request_options
from deliverer.registry.errors import EndpointError
from deliverer.security import sealing
from tests.support.certificates import CA


class TestHeaders:
    def test_headers_are_kept_as_given(self) -> None:
        """Names keep their case; an empty object is no headers."""
        assert request_options.check_headers({"X-Tenant": "acme", "x-trace": "a b"}) == {
            "X-Tenant": "acme", "x-trace": "a b"}
        assert request_options.check_headers({}) is None
        assert request_options.check_headers(None) is None

    @pytest.mark.parametrize("name", [
        "X-DocExtract-Signature", "x-docextract-event-id", "webhook-signature", "Webhook-Id", "Content-Type",
        "content-length", "Host", "User-Agent", "Transfer-Encoding", "Connection", "traceparent", "TraceState",
    ])
    def test_reserved_names_are_refused(self, name: str) -> None:
        """The headers the deliverer writes cannot be overridden, whatever their case."""
        with pytest.raises(EndpointError, match=re.escape(f"header {name!r} is reserved")) as refused:
            request_options.check_headers({name: "x"})
        assert refused.value.field == "headers"

    def test_authorization_points_at_auth(self) -> None:
        """Authorization is auth's to set, and the refusal says so."""
        with pytest.raises(EndpointError, match="set auth instead"):
            request_options.check_headers({"Authorization": "Bearer x"})

    @pytest.mark.parametrize(("headers", "message"), [
        ({"Bad Name": "x"}, "must be 1 to 64 letters"),
        ({"X-" + "a" * 63: "x"}, "must be 1 to 64 letters"),
        ({"X-Long": "v" * 1025}, "at most 1024 characters"),
        ({"X-Split": "a\r\nInjected: yes"}, "control characters"),
        ({"X-Pad": " padded"}, "surrounding spaces"),
        ({"X-Number": 5}, "string value"),
        ({"X-Euro": "€"}, "outside Latin-1"),
        ({"X-A": "1", "x-a": "2"}, "given twice"),
        ({f"X-{i}": "v" for i in range(21)}, "the limit is 20"),
        ({f"X-{i}": "v" * 1000 for i in range(9)}, "the limit is 8192"),
        (["X-A: 1"], "must be an object"),
    ])
    def test_bad_headers_are_refused_saying_why(self, headers: object, message: str) -> None:
        """Header injection, oversized headers and non-objects are refused before anything is stored."""
        with pytest.raises(EndpointError, match=re.escape(message)):
            request_options.check_headers(headers)

    def test_values_are_sealed_and_names_are_not(self) -> None:
        """Stored: each value sealed, under its name; unsealed they are what was given."""
        stored = request_options.seal_headers({"X-Api-Key": "k-123"})
        assert stored is not None and list(stored) == ["X-Api-Key"]
        assert stored["X-Api-Key"].startswith(sealing.PREFIX) and "k-123" not in stored["X-Api-Key"]
        assert request_options.unseal_headers(stored) == {"X-Api-Key": "k-123"}


class TestAuth:
    def test_basic_is_sent_as_rfc7617_credentials(self) -> None:
        """username:password, UTF-8, base64, after Basic; sealed at rest."""
        auth = request_options.check_auth({"type": "basic", "username": "docextract", "password": "pässword"})
        stored = request_options.seal_auth(auth)
        assert stored is not None and "pässword" not in stored
        header = request_options.credentials(stored).authorization
        assert header == "Basic " + base64.b64encode("docextract:pässword".encode()).decode()

    def test_bearer_is_sent_as_a_bearer_token(self) -> None:
        stored = request_options.seal_auth(request_options.check_auth({"type": "bearer", "token": "t0k3n"}))
        assert stored is not None
        assert request_options.credentials(stored).authorization == "Bearer t0k3n"
        assert "t0k3n" not in repr(request_options.credentials(stored))

    @pytest.mark.parametrize(("auth", "message"), [
        ({"type": "digest"}, "auth must be"),
        ("Bearer x", "auth must be"),
        ({"type": "basic", "username": "a:b", "password": "p"}, "without ':'"),
        ({"type": "basic", "username": "a"}, "exactly the string fields username, password"),
        ({"type": "bearer", "token": "two words"}, "without spaces"),
        ({"type": "bearer", "token": "t", "extra": 1}, "exactly the string fields token"),
        ({"type": "bearer", "token": "x" * 4097}, "1 to 4096"),
    ])
    def test_bad_auth_is_refused_saying_why(self, auth: object, message: str) -> None:
        with pytest.raises(EndpointError, match=re.escape(message)) as refused:
            request_options.check_auth(auth)
        assert refused.value.field == "auth"


class TestMutualTlsAtRegistration:
    """A client certificate and key are judged when registered, not when the first send fails."""

    ca = CA()

    def test_a_matching_valid_pair_is_accepted_and_sent_as_a_client_certificate(self) -> None:
        issued = self.ca.issue("customer", server=False)
        auth = {"type": "mtls", "certificate": issued.certificate, "key": issued.key}
        stored = request_options.seal_auth(request_options.check_auth(auth))
        assert stored is not None and "PRIVATE KEY" not in stored
        credentials = request_options.credentials(stored)
        assert (credentials.certificate, credentials.key, credentials.authorization) == (
            issued.certificate, issued.key, None)

    def test_a_key_of_another_certificate_is_refused(self) -> None:
        one, other = self.ca.issue("one", server=False), self.ca.issue("other", server=False)
        with pytest.raises(EndpointError, match="the key does not belong to the certificate"):
            request_options.check_auth({"type": "mtls", "certificate": one.certificate, "key": other.key})

    def test_an_expired_certificate_is_refused(self) -> None:
        now = datetime.now(UTC)
        expired = self.ca.issue("old", server=False, not_before=now - timedelta(days=10),
                                not_after=now - timedelta(days=1))
        with pytest.raises(EndpointError, match="the certificate expired at"):
            request_options.check_auth({"type": "mtls", "certificate": expired.certificate, "key": expired.key})

    def test_a_certificate_not_yet_valid_is_refused(self) -> None:
        later = self.ca.issue("later", server=False, not_before=datetime.now(UTC) + timedelta(days=1))
        with pytest.raises(EndpointError, match="is not valid before"):
            request_options.check_auth({"type": "mtls", "certificate": later.certificate, "key": later.key})

    @pytest.mark.parametrize(("certificate", "key", "message"), [
        ("not a certificate", None, "not a PEM certificate"),
        (None, "not a key", "not a PEM private key"),
        ("", None, "must be PEM text"),
    ])
    def test_what_is_not_pem_is_refused(self, certificate: str | None, key: str | None, message: str) -> None:
        issued = self.ca.issue("customer", server=False)
        auth = {"type": "mtls", "certificate": issued.certificate if certificate is None else certificate,
                "key": issued.key if key is None else key}
        with pytest.raises(EndpointError, match=re.escape(message)):
            request_options.check_auth(auth)


def test_credentials_are_redacted_from_log_lines() -> None:
    """Whatever is logged under a credential's name, and Authorization values and private keys inside any text,
    never reach the rendered line."""
    issued = CA().issue("customer", server=False)
    event = redact_secrets(None, "info", {
        "event": "attempt failed", "headers": {"X-Api-Key": "k-123"}, "auth": {"type": "bearer", "token": "t0k3n"},
        "error": f"sent Authorization: Basic ZG9jOnB3 and Bearer t0k3n; key {issued.key}",
        "token": "t0k3n",
    })
    line = json.dumps(event)
    for secret in ("k-123", "t0k3n", "ZG9jOnB3", "PRIVATE KEY"):
        assert secret not in line, secret
    assert event["headers"] == REDACTED and event["auth"] == REDACTED
