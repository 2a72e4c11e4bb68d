"""Opening a connection through the egress proxy: a socket whose other end is the vetted address.

The SSRF guard has already resolved and vetted the customer's host; the proxy is
asked for that address (an IP literal, never the name), so neither the proxy's DNS
nor a name that changes between our check and its lookup can take a webhook to a
private network. What travels in the tunnel is ours end to end: TLS to the
customer starts after the tunnel is open and is verified against the customer's
host name, so the proxy sees only the address and port.

Any failure of the proxy (unreachable, refusing the tunnel, not speaking the
protocol) is a :class:`TunnelError`, which the client records as ``proxy_error``.
Its message names the proxy without its credentials.
"""

import asyncio
import ipaddress
import socket

from deliverer.security.egress import Proxy

MAX_PROXY_HEAD = 16 * 1024
"""Largest CONNECT answer read before the tunnel is given up on."""

_SOCKS_REPLIES = {
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}


class TunnelError(Exception):
    """The proxy could not give us a tunnel; the message says which proxy and why (no credentials)."""


async def open_tunnel(proxy: Proxy, address: str, port: int) -> socket.socket:
    """A connected, non-blocking socket tunnelled through ``proxy`` to ``address`` (an IP literal), ``port``."""
    sock = await _connect_to_proxy(proxy)
    try:
        if proxy.scheme == "http":
            await _http_connect(sock, proxy, address, port)
        else:
            await _socks5_connect(sock, proxy, address, port)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_to_proxy(proxy: Proxy) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TunnelError(f"could not resolve the proxy {proxy}: {exc}") from None
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise TunnelError(f"could not connect to the proxy {proxy}: {error}")


async def _recv_exactly(sock: socket.socket, n: int, proxy: Proxy) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise TunnelError(f"the proxy {proxy} closed the connection during the handshake")
        data += chunk
    return data


def _authority(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def _http_connect(sock: socket.socket, proxy: Proxy, address: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    authority = _authority(address, port)
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization is not None:
        request += f"Proxy-Authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode("latin-1"))
    head = b""
    # Byte by byte past the first chunk would be slow; the proxy sends nothing after its answer
    # until the far end speaks, and the far end waits for us, so reading in chunks cannot eat tunnel bytes.
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_PROXY_HEAD:
            raise TunnelError(f"the proxy {proxy} sent over {MAX_PROXY_HEAD} bytes without ending its answer")
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise TunnelError(f"the proxy {proxy} closed the connection before answering CONNECT {authority}")
        head += chunk
    answer, _, rest = head.partition(b"\r\n\r\n")
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TunnelError(f"the proxy {proxy} did not answer CONNECT in HTTP: {status_line[:100]!r}")
    if not 200 <= int(parts[1]) < 300:
        raise TunnelError(f"the proxy {proxy} refused CONNECT {authority}: {status_line[:200]}")
    if rest:
        raise TunnelError(f"the proxy {proxy} sent bytes of its own after opening the tunnel")


async def _socks5_connect(sock: socket.socket, proxy: Proxy, address: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    methods = b"\x00\x02" if proxy.username is not None else b"\x00"
    await loop.sock_sendall(sock, b"\x05" + bytes([len(methods)]) + methods)
    version, method = await _recv_exactly(sock, 2, proxy)
    if version != 5:
        raise TunnelError(f"the proxy {proxy} does not speak SOCKS5")
    if method == 0x02 and proxy.username is not None:
        user, password = proxy.username.encode(), (proxy.password or "").encode()
        await loop.sock_sendall(sock, b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if (await _recv_exactly(sock, 2, proxy))[1] != 0:
            raise TunnelError(f"the proxy {proxy} refused our user name and password")
    elif method != 0x00:
        raise TunnelError(f"the proxy {proxy} accepts none of our authentication methods"
                          + ("" if proxy.username is not None else " (does it need a user name and password?)"))
    ip = ipaddress.ip_address(address)
    kind = b"\x01" if ip.version == 4 else b"\x04"
    await loop.sock_sendall(sock, b"\x05\x01\x00" + kind + ip.packed + port.to_bytes(2, "big"))
    _, reply, _, bound_kind = await _recv_exactly(sock, 4, proxy)
    if reply != 0:
        raise TunnelError(f"the proxy {proxy} refused CONNECT {_authority(address, port)}: "
                          f"{_SOCKS_REPLIES.get(reply, f'reply {reply}')}")
    if bound_kind == 3:
        length = (await _recv_exactly(sock, 1, proxy))[0]
        await _recv_exactly(sock, length + 2, proxy)
    else:
        await _recv_exactly(sock, (4 if bound_kind == 1 else 16) + 2, proxy)
