"""The egress proxy (DELIVERER_EGRESS_PROXY): which forward proxy webhook connections go through.

``http://[user:password@]host:port`` is an HTTP proxy asked for a CONNECT tunnel;
``socks5://[user:password@]host:port`` a SOCKS5 proxy (RFC 1928, user/password
authentication of RFC 1929). Either way the proxy is given the address the SSRF
guard vetted, never a name, so it cannot be made to resolve a name to a private
address on our behalf (see deliverer.delivery.tunnel).

The credentials are kept out of every string this module makes: ``str(proxy)`` and
the errors name the proxy by scheme, host and port alone.
"""

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 8080, "socks5": 1080}


class ProxyUrlError(ValueError):
    """DELIVERER_EGRESS_PROXY cannot be used; the message says why and never repeats a password."""


@dataclass(frozen=True)
class Proxy:
    scheme: str  # http or socks5
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization value for an HTTP proxy with credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def parse(url: str) -> Proxy | None:
    """The proxy ``url`` names; None for an empty value (no proxy)."""
    if not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ProxyUrlError("DELIVERER_EGRESS_PROXY is not a valid URL (its port?)") from None
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme not in DEFAULT_PORTS:
        raise ProxyUrlError(f"DELIVERER_EGRESS_PROXY must be an http:// or socks5:// URL, not {shown}")
    if not parts.hostname:
        raise ProxyUrlError("DELIVERER_EGRESS_PROXY has no host, e.g. http://proxy.internal:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyUrlError(f"DELIVERER_EGRESS_PROXY must be only scheme, host and port ({shown}…)")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    if parts.scheme == "socks5" and username is not None and (
            len(username.encode()) > 255 or len((password or "").encode()) > 255):
        raise ProxyUrlError("a SOCKS5 user name and password are at most 255 bytes each")
    return Proxy(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], username, password)
