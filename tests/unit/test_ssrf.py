"""The SSRF guard: non-public destinations are refused, by literal and by every resolved address."""

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from deliverer.delivery import send
from deliverer.security import ssrf
from tests.support import Receiver

BLOCKED = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",  # loopback, private
    "169.254.169.254", "169.254.0.1",  # link-local, cloud metadata
    "100.64.0.1", "100.127.255.254",  # CGNAT
    "224.0.0.1", "239.255.255.250",  # multicast
    "240.0.0.1", "255.255.255.255", "192.0.2.10", "198.18.0.1",  # reserved, documentation, benchmarking
    "0.0.0.0", "0.1.2.3",  # unspecified, "this network"
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",  # IPv6 equivalents
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::", "2002:a9fe:a9fe::",  # 6to4 around 127.0.0.1 and 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2002:808:808::"]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Every non-public class, IPv4 and IPv6, including IPv4 inside IPv6, is refused with a reason."""
    reason = ssrf.refusal(ipaddress.ip_address(address))
    assert reason is not None and ("not a public" in reason)
    with pytest.raises(ssrf.SsrfBlocked):
        ssrf.check_host(f"[{address}]" if ":" in address else address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    """Public addresses pass."""
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_exempts_its_networks_only() -> None:
    """DELIVERER_ALLOWED_NETWORKS-style lists open exactly those networks."""
    allowed = ssrf.parse_networks("127.0.0.0/8, ::1")
    assert ssrf.refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert ssrf.refusal(ipaddress.ip_address("::1"), allowed) is None
    assert ssrf.refusal(ipaddress.ip_address("10.0.0.1"), allowed) is not None
    with pytest.raises(ValueError, match="'nope' is not a network"):
        ssrf.parse_networks("10.0.0.0/8,nope")


class StubResolver(AbstractResolver):
    """Answers from a script: each call pops the next list of addresses."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        self.calls += 1
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in addresses]

    async def close(self) -> None:
        pass


async def test_a_name_with_any_private_address_is_refused() -> None:
    """A hostname resolving to a public and a private address is refused outright."""
    resolver = ssrf.GuardedResolver(inner=StubResolver(["93.184.216.34", "10.0.0.7"]))
    with pytest.raises(ssrf.SsrfBlocked, match=r"10\.0\.0\.7 is in 10\.0\.0\.0/8"):
        await resolver.resolve("hooks.example.com", 443)
    public = ssrf.GuardedResolver(inner=StubResolver(["93.184.216.34"]))
    assert [r["host"] for r in await public.resolve("hooks.example.com", 443)] == ["93.184.216.34"]


async def _post_via(resolver: AbstractResolver, url: str,
                    allowed: tuple[ssrf.Network, ...] = ()) -> send.Outcome:
    """One attempt through the deliverer's own client, resolving names with ``resolver``."""
    client = send.Client(allowed=allowed, resolver=resolver)
    try:
        return await client.post(url, b"{}", {"Content-Type": "application/json"}, timeout=5)
    finally:
        await client.close()


async def test_connections_go_to_the_vetted_address(receiver: Receiver) -> None:
    """The request connects to the address the guard vetted: allowed loopback works, refused loopback never connects."""
    port = int(receiver.base_url.rsplit(":", 1)[1])
    allowed = await _post_via(StubResolver(["127.0.0.1"]), f"http://hooks.test:{port}/ok",
                              ssrf.parse_networks("127.0.0.0/8"))
    assert allowed.http_status == 200
    refused = await _post_via(StubResolver(["127.0.0.1"]), f"http://hooks.test:{port}/blocked")
    assert refused.error_class == "ssrf_blocked" and "127.0.0.0/8" in (refused.error_message or "")
    assert [r.path for r in receiver.requests] == ["/ok"]


async def test_rebinding_after_registration_is_caught_at_delivery(receiver: Receiver) -> None:
    """A name that was public when registered and rebinds to loopback later is refused when sending."""
    port = int(receiver.base_url.rsplit(":", 1)[1])
    stub = StubResolver(["93.184.216.34"], ["127.0.0.1"])
    guard = ssrf.GuardedResolver(inner=stub)
    assert [r["host"] for r in await guard.resolve("rebind.test", port)] == ["93.184.216.34"]  # registration
    outcome = await _post_via(stub, f"http://rebind.test:{port}/hook")  # delivery: resolved again, vetted again
    assert outcome.error_class == "ssrf_blocked"
    assert receiver.requests == [] and stub.calls == 2
