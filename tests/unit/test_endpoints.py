"""Endpoint registration rules: HTTPS only, no loopback or private targets, known event types."""

import base64
import re

import pytest

from deliverer.registry import endpoints
from deliverer.registry.endpoints import EndpointError
from deliverer.security import ssrf


@pytest.mark.parametrize("url", [
    "https://example.com/webhooks/docextract",
    "https://hooks.example.com:8443/a?b=c",
])
def test_public_https_urls_are_accepted(url: str) -> None:
    """Ordinary HTTPS URLs pass unchanged."""
    assert endpoints.check_url(url, allow_insecure=False) == url


@pytest.mark.parametrize(("url", "message"), [
    ("http://example.com/hook", "must use https://; plain http:// is refused: set DELIVERER_ALLOW_INSECURE_URLS=1"),
    ("https://localhost/hook", "loopback or private address"),
    ("https://127.0.0.1:3000/hook", "loopback or private address"),
    ("https://[::1]/hook", "loopback or private address"),
    ("https://10.0.0.5/hook", "loopback or private address"),
    ("https://169.254.169.254/latest/meta-data", "loopback or private address"),
    ("ftp://example.com/hook", "absolute https:// URL"),
    ("example.com/hook", "absolute https:// URL"),
    ("https://user:pw@example.com/hook", "user name or password"),
    ("https://example.com:99999/hook", "not a valid URL"),
    ("https://example.com/" + "a" * 2100, "the limit is 2048"),
    ("", "url is required"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    """Each refusal says what is wrong and, where there is one, how to allow it."""
    with pytest.raises(EndpointError, match=re.escape(message)):
        endpoints.check_url(url, allow_insecure=False)


def test_development_setting_allows_http_and_loopback() -> None:
    """With the development setting, http:// and loopback targets are accepted."""
    assert endpoints.check_url("http://127.0.0.1:3000/hook", allow_insecure=True)


@pytest.mark.parametrize("url", ["https://[::ffff:127.0.0.1]/hook", "https://[2002:a9fe:a9fe::]/latest",
                                 "https://100.64.0.1/hook", "https://[fd00::1]/hook"])
def test_registration_uses_the_ssrf_rules(url: str) -> None:
    """IPv4 hidden in IPv6, CGNAT and unique-local addresses are refused at registration too."""
    with pytest.raises(EndpointError, match="loopback or private address"):
        endpoints.check_url(url, allow_insecure=False)


def test_an_allow_list_opens_only_its_networks() -> None:
    """A listed private network may be registered over https while others stay refused."""
    allowed = ssrf.parse_networks("10.1.0.0/16")
    assert endpoints.check_url("https://10.1.2.3/hook", allow_insecure=False, allowed=allowed)
    with pytest.raises(EndpointError, match="DELIVERER_ALLOWED_NETWORKS"):
        endpoints.check_url("https://10.2.0.1/hook", allow_insecure=False, allowed=allowed)


def test_new_secrets_are_standard_webhooks_format() -> None:
    """whsec_ followed by the base64 of 32 random bytes, different every time."""
    secret = endpoints.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert endpoints.new_secret() != secret


@pytest.mark.parametrize("events", [None, [], ["*"], ["job.completed", "*"]])
def test_no_event_types_means_all(events: list[str] | None) -> None:
    """An endpoint without a list, or with *, receives every event type."""
    assert endpoints.check_event_types(events) is None


def test_unknown_event_types_are_refused() -> None:
    """A typo in an event type is an error naming the known types."""
    with pytest.raises(EndpointError, match=r"unknown event type.*job\.complete.*known: job\.completed"):
        endpoints.check_event_types(["job.complete"])


def test_imported_secret_must_be_plausible() -> None:
    """A short or whitespace-containing secret is refused with a way out."""
    with pytest.raises(EndpointError, match="leave it out to have a new whsec_ secret generated"):
        endpoints.check_secret("short")


@pytest.mark.parametrize(("value", "stored"), [(None, None), (1, 1), (1000, 1000), (25.0, 25)])
def test_max_in_flight_is_a_whole_number_up_to_1000_or_the_default(value: object, stored: int | None) -> None:
    """1..1000 requests open at once; 25.0 is 25 (JSON does not tell them apart); None is the default."""
    assert endpoints.check_max_in_flight(value) == stored


@pytest.mark.parametrize("value", [0, -1, 1001, 2.5, float("nan"), "10", True, [5]])
def test_other_max_in_flight_values_are_refused_saying_what_is_allowed(value: object) -> None:
    """Each refusal is the one message the API and the CLI show, about the max_in_flight field."""
    with pytest.raises(EndpointError) as refused:
        endpoints.check_max_in_flight(value)
    assert str(refused.value) == ("max_in_flight must be a whole number from 1 to 1000 (requests open at once), "
                                  "or null for the deployment's default")
    assert refused.value.field == "max_in_flight"


@pytest.mark.parametrize(("value", "stored"), [(None, None), (0.5, 0.5), (1, 1.0), (10000, 10000.0)])
def test_rate_limit_is_a_positive_number_up_to_10000_or_the_default(value: object, stored: float | None) -> None:
    """Deliveries a second, fractions allowed; None is the default."""
    assert endpoints.check_rate_limit(value) == stored


@pytest.mark.parametrize("value", [0, -0.5, 10000.01, float("nan"), float("inf"), "5", False])
def test_other_rate_limits_are_refused_saying_what_is_allowed(value: object) -> None:
    """Zero, negatives, NaN, infinity, text and booleans get the one rate_limit message."""
    with pytest.raises(EndpointError) as refused:
        endpoints.check_rate_limit(value)
    assert str(refused.value) == ("rate_limit must be a number of deliveries per second above 0 and at most 10000, "
                                  "or null for the deployment's default")
    assert refused.value.field == "rate_limit"
