"""What receivers verify, without a network: the known-answer signature and the Standard Webhooks checks.

Requests signed and sent by a real worker are in tests/integration/test_delivery.py.
"""

import pytest

from deliverer.delivery import sign
from deliverer.registry import endpoints
from outbox import signatures


class TestWhatReceiversGet:
    def test_standard_verification_rejects_tampering_old_timestamps_and_other_secrets(self) -> None:
        """The receiver kit refuses a changed body, a replay outside the tolerance and a wrong secret."""
        secret = endpoints.new_secret()
        body = b'{"event":"webhook.test","data":{}}'
        headers = sign.headers(secret=secret, body=body, event_id="evt_1", event_type="webhook.test",
                               delivery_id="dlv_1", attempt=1, timestamp=1_700_000_000)
        signatures.verify_standard(body, headers, secret, now=1_700_000_100)
        with pytest.raises(signatures.InvalidSignature, match="no webhook-signature matches"):
            signatures.verify_standard(body + b" ", headers, secret, now=1_700_000_100)
        with pytest.raises(signatures.InvalidSignature, match="more than 300 s from now"):
            signatures.verify_standard(body, headers, secret, now=1_700_000_301)
        with pytest.raises(signatures.InvalidSignature, match="no webhook-signature matches"):
            signatures.verify_standard(body, headers, endpoints.new_secret(), now=1_700_000_100)
        with pytest.raises(signatures.InvalidSignature, match="missing"):
            signatures.verify_standard(body, {}, secret)

    def test_signature_is_hex_hmac_sha256_of_the_body(self) -> None:
        """Known answer, computed independently with openssl."""
        # printf '{"event":"webhook.test"}' | openssl dgst -sha256 -hmac 'whsec_test'
        body = b'{"event":"webhook.test"}'
        expected = "e1202d2376daf8d5d43fdf1ebc2de3477727322835b6b57e43748d89454cb183"
        assert signatures.docextract_signature("whsec_test", body) == expected
        assert signatures.verify_signature(body, expected, "whsec_test")
        assert not signatures.verify_signature(body + b" ", expected, "whsec_test")
        assert not signatures.verify_signature(body, None, "whsec_test")
