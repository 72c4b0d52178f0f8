"""Shared fixtures: the in-process lab servers, a private Dovecot, and a TCP fault proxy.

Every protocol test talks to a real server over a real socket; faults are made by the
server (fault hooks, `doveadm kick`) or by the proxy, never by mocking the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import dovecot as dovecot_lab
import pytest

from mailcare.sandbox import LabImap, LabSmtp


@pytest.fixture
def lab_imap() -> Iterator[LabImap]:
    with LabImap({"support@lab.test": "secret", "agent1@lab.test": "secret"}) as lab:
        yield lab


@pytest.fixture
def lab_smtp() -> Iterator[LabSmtp]:
    with LabSmtp() as sink:
        yield sink


@pytest.fixture(scope="session")
def dovecot() -> Iterator[dovecot_lab.Dovecot]:
    """Debian's Dovecot on a free port. Missing Dovecot skips locally but fails under CI,
    where these tests are the point."""
    reason = dovecot_lab.available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires Dovecot: {reason}")
        pytest.skip(reason)
    instance = dovecot_lab.Dovecot.start()
    try:
        yield instance
    finally:
        instance.stop()


T = TypeVar("T")


@pytest.fixture
def dovecot_user(dovecot: dovecot_lab.Dovecot) -> str:
    """A mailbox of its own for one test on the shared Dovecot."""
    return dovecot.fresh_user()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, for network faults a server cannot
    produce on demand (RELIABILITY I02, I04): pass, cut after N bytes server->client,
    stall (sockets open, nothing forwarded), reset (RST to the client), coalesce (a
    continuation line `+ ...` is held and sent in one segment with what follows it)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.mode = "pass"
        self.forwarded = 0  # bytes server->client, for assertions
        self.upstream = bytearray()  # everything client->server, for assertions
        self._budget = 0
        self._held = b""  # a continuation line waiting for the next server data (coalesce)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._run(self._close_all(rst=False))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def passthrough(self) -> None:
        self.mode = "pass"

    def stall(self) -> None:
        self.mode = "stall"

    def coalesce(self) -> None:
        self.mode = "coalesce"

    def cut(self, after: int) -> None:
        """Forward `after` more bytes from the server, then close both sides."""
        self._budget = after
        self.mode = "cut"

    def reset(self) -> None:
        """Send RST to every connected client now."""
        self._run(self._close_all(rst=True))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        pair = (client_w, server_w)
        self._writers.update(pair)
        await asyncio.gather(
            self._pump(client_r, server_w, pair, downstream=False),
            self._pump(server_r, client_w, pair, downstream=True),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
        *,
        downstream: bool,
    ) -> None:
        while data := await reader.read(65536):
            while self.mode == "stall":
                await asyncio.sleep(0.05)
            if downstream and self.mode == "cut" and len(data) >= self._budget:
                writer.write(data[: self._budget])
                self.forwarded += self._budget
                await writer.drain()
                break
            if downstream and self.mode == "coalesce":
                if data.startswith(b"+") and not self._held:
                    self._held = data
                    continue
                data, self._held = self._held + data, b""
            if downstream:
                self._budget -= len(data) if self.mode == "cut" else 0
                self.forwarded += len(data)
            else:
                self.upstream += data
            writer.write(data)
            await writer.drain()
        for each in pair:
            each.close()

    async def _close_all(self, *, rst: bool) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str, int], FaultProxy]]:
    """`fault_proxy(host, port)` -> a started FaultProxy in front of that server."""
    proxies: list[FaultProxy] = []

    def make(host: str, port: int) -> FaultProxy:
        proxy = FaultProxy(host, port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
