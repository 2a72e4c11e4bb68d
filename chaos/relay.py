"""A TCP relay between the workers and PostgreSQL that the scenario can turn into a black hole.

Black-holed, it forwards nothing in either direction and accepts no new
connection (the kernel completes the handshakes its listen queue holds, and no
byte ever follows), yet closes nothing and resets nothing: what a network
partition looks like from either end. Healed, it forwards again, including
whatever waited in its buffers.
"""

import asyncio
import contextlib
import socket


class Relay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0

    def start(self) -> None:
        self._spawn(self._accept())

    def black_hole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._listener.close()

    def _spawn(self, coro: "asyncio.Future[None] | asyncio.coroutines.Coroutine[object, object, None]") -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._open.wait()  # black-holed: nothing accepted, the listen queue fills
            client, _ = await loop.sock_accept(self._listener)
            self.connections += 1
            self._spawn(self._serve(client))

    async def _serve(self, client: socket.socket) -> None:
        client_reader, client_writer = await asyncio.open_connection(sock=client)
        try:
            host, port = self.upstream
            if host.startswith("/"):  # a socket directory, as libpq names it (the embedded server's)
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        pumps = [asyncio.ensure_future(self._pump(client_reader, upstream_writer)),
                 asyncio.ensure_future(self._pump(upstream_reader, client_writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self._open.wait()  # read before the partition, held until it heals
                writer.write(data)
                await writer.drain()
