"""Real forward proxies on loopback, started by the test: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5).

Both are Debian packages (.ci/run installs them). Each logs the tunnels it opens,
which is how a test shows that a request crossed the proxy and to which address.
"""

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deliverer.dev.waiting import eventually


@dataclass
class RunningProxy:
    url: str  # with the credentials, as DELIVERER_EGRESS_PROXY takes it
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _needs(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"needs {program}: apt-get install {program} (.ci/run does)")
    return path


@contextlib.contextmanager
def _running(command: list[str], port: int, log_path: Path, url: str) -> Iterator[RunningProxy]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: process.poll() is None and _accepting(port),
                   lambda: f"{command[0]} accepting on {port}: {log_path.read_text(errors='replace')}")
        yield RunningProxy(url, port, log_path)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def tinyproxy(directory: Path, *, credentials: tuple[str, str] | None = None,
              connect_ports: tuple[int, ...] = ()) -> Iterator[RunningProxy]:
    """An HTTP proxy; ``connect_ports``: the only ports it opens tunnels to (none given: any)."""
    program = _needs("tinyproxy")
    port = _free_port()
    lines = ["User nobody", "Group nogroup", f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Connect",
             "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes",
             *(f"ConnectPort {p}" for p in connect_ports)]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config = directory / f"tinyproxy-{port}.conf"
    config.write_text("\n".join(lines) + "\n")
    userinfo = "" if credentials is None else f"{credentials[0]}:{credentials[1]}@"
    with _running([program, "-d", "-c", str(config)], port, directory / f"tinyproxy-{port}.log",
                  f"http://{userinfo}127.0.0.1:{port}") as proxy:
        yield proxy


@contextlib.contextmanager
def microsocks(directory: Path, *, credentials: tuple[str, str] | None = None) -> Iterator[RunningProxy]:
    """A SOCKS5 proxy, with user/password authentication when ``credentials`` are given."""
    program = _needs("microsocks")
    port = _free_port()
    auth = [] if credentials is None else ["-u", credentials[0], "-P", credentials[1]]
    userinfo = "" if credentials is None else f"{credentials[0]}:{credentials[1]}@"
    with _running([program, "-i", "127.0.0.1", "-p", str(port), *auth], port, directory / f"microsocks-{port}.log",
                  f"socks5://{userinfo}127.0.0.1:{port}") as proxy:
        yield proxy
