"""Where webhooks may not go: the SSRF guard.

Customers choose the URLs we POST to, so without a guard a webhook could reach
the cloud metadata service (169.254.169.254), the database, or anything else on
our private network. By default every address that is not public is refused:
loopback, private, link-local, CGNAT, multicast, reserved, unspecified, IPv4
and IPv6 alike, including IPv4 addresses hidden inside IPv6 (IPv4-mapped,
6to4, NAT64, Teredo).

A hostname is refused if *any* address it resolves to is refused. The guard is
the connection's resolver: each attempt resolves once, vets every address, and
the connection goes to exactly those vetted addresses, so DNS cannot answer one
thing to the check and another to the connect (rebinding). IP literals skip
resolution and are vetted by :func:`check_host` before the request.

``allowed`` networks (DELIVERER_ALLOWED_NETWORKS) are exempt, for development
and tests.
"""

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not public, whatever the ipaddress module's tables say in a given Python version.
_BLOCKED: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


EVERYWHERE: tuple[Network, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
"""The allow-list of development mode: no network is refused."""


def allowed_networks(listed: str, *, allow_insecure: bool) -> tuple[Network, ...]:
    """The networks exempt from the guard: those ``listed`` (DELIVERER_ALLOWED_NETWORKS), else every
    network in development mode (DELIVERER_ALLOW_INSECURE_URLS), else none."""
    if listed.strip():
        return parse_networks(listed)
    return EVERYWHERE if allow_insecure else ()


class SsrfBlocked(OSError):
    """The destination is not a public address. An OSError, so aiohttp passes it through as the cause."""


def parse_networks(raw: str) -> tuple[Network, ...]:
    """``10.1.0.0/16, ::1`` → networks; raises ValueError naming the bad entry."""
    networks = []
    for part in raw.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not a network like 10.1.0.0/16 or ::1") from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why ``address`` may not be a webhook destination, or None when it may."""
    if any(address.version == n.version and address in n for n in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = refusal(inner, allowed)
            return None if reason is None else f"{address} carries {inner}, which {reason.split(' ', 1)[1]}"
    for network in _BLOCKED:
        if address.version == network.version and address in network:
            return f"{address} is in {network}, which is not a public network"
    if not address.is_global or address.is_multicast:
        return f"{address} is not a public address"
    return None


def check_address(address: Address, allowed: Sequence[Network] = ()) -> None:
    reason = refusal(address, allowed)
    if reason is not None:
        raise SsrfBlocked(f"refused to connect: {reason}")


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_host(host: str, allowed: Sequence[Network] = ()) -> None:
    """Vet a URL's host if it is an IP literal; names are vetted by the resolver when connecting."""
    address = literal(host)
    if address is not None:
        check_address(address, allowed)


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the name if any address it got is not allowed."""

    def __init__(self, allowed: Sequence[Network] = (), inner: AbstractResolver | None = None) -> None:
        self.allowed = tuple(allowed)
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            reason = refusal(ipaddress.ip_address(result["host"]), self.allowed)
            if reason is not None:
                raise SsrfBlocked(f"refused to connect to {host}: {reason}")
        return results

    async def close(self) -> None:
        await self.inner.close()


def check_name(host: str, allowed: Sequence[Network] = ()) -> None:
    """Registration-time check: refuse a host that is, or now resolves to, a refused address.

    A name that does not resolve yet is let through: it is checked again at every attempt.
    """
    if literal(host) is not None:
        check_host(host, allowed)
        return
    if all(any(n.prefixlen == 0 and n.version == v for n in allowed) for v in (4, 6)):
        return  # everything is allowed: nothing to look up
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return
    for info in infos:
        check_address(ipaddress.ip_address(info[4][0]), allowed)
