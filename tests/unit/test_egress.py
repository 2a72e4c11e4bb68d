"""DELIVERER_EGRESS_PROXY as read: which proxy, its credentials, and never a password in what is shown."""

import pytest

from deliverer.ops.logsetup import redact_secrets
from deliverer.security import egress
from deliverer.settings import ConfigError, Settings


def test_http_and_socks5_proxies_with_credentials() -> None:
    """User and password are percent-decoded; the default ports are the usual ones; str() leaves them out."""
    proxy = egress.parse("http://hooks:p%40ss@proxy.internal:3128")
    assert proxy == egress.Proxy("http", "proxy.internal", 3128, "hooks", "p@ss")
    assert str(proxy) == "http://proxy.internal:3128" and "p@ss" not in repr(proxy)
    assert proxy.authorization == "Basic aG9va3M6cEBzcw=="
    assert egress.parse("socks5://[fd00::1]") == egress.Proxy("socks5", "fd00::1", 1080)
    assert str(egress.parse("socks5://[fd00::1]")) == "socks5://[fd00::1]:1080"
    assert egress.parse("") is None


@pytest.mark.parametrize(("url", "message"), [
    ("https://u:hunter2@proxy:3128", "must be an http:// or socks5:// URL"),
    ("socks4://u:hunter2@proxy:1080", "must be an http:// or socks5:// URL"),
    ("http://u:hunter2@proxy:3128/path", "only scheme, host and port"),
    ("http://u:hunter2@:3128", "has no host"),
    ("http://u:hunter2@proxy:99999", "not a valid URL"),
])
def test_bad_proxy_urls_are_refused_at_start_without_the_password(url: str, message: str) -> None:
    """Settings.validated refuses them, so `run` does not start; the message never repeats the password."""
    with pytest.raises(ConfigError) as refused:
        Settings(database_url="postgresql://x/y", egress_proxy=url).validated()
    assert message in str(refused.value) and "hunter2" not in str(refused.value)


def test_a_proxy_url_in_a_log_line_loses_its_password() -> None:
    """The settings or an error that carries the URL are logged with the user information redacted."""
    event = redact_secrets(None, "info", {"event": "started", "proxy": "http://hooks:hunter2@proxy:3128",
                                          "settings": repr(Settings(egress_proxy="socks5://a:hunter2@p:1080"))})
    assert "hunter2" not in str(event)
