"""The DNS proxy's shell: UDP and TCP listeners on 127.0.0.1:15053, the name
table, and forwarding to the nameservers of /etc/resolv.conf.

It runs inside the agent, as the agent's user: capture exempts that user for
port 53, so the forwarder's own queries go straight to the nameservers and
are never redirected back to the proxy. Upstreams are tried in resolv.conf
order; when none answers, the app gets SERVFAIL (its resolver then tries its
own next server, as without the proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import cast

import dns.asyncquery
import dns.exception
import dns.message

from agent.dns.answer import mesh_answer, servfail
from agent.dns.table import LISTEN, NameTable

log = logging.getLogger(__name__)
MAX_TCP_MESSAGE = 65535


class DnsProxy:
    def __init__(self, table: NameTable, upstreams: tuple[str, ...], *,
                 listen: tuple[str, int] = LISTEN, upstream_port: int = 53,
                 timeout: float = 2.0) -> None:
        self.table = table
        self.upstreams = upstreams
        self.listen = listen
        self.upstream_port = upstream_port
        self.timeout = timeout
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def resolve(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The answer to one query in wire format; None for garbage (dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        answer = mesh_answer(query, self.table.names)
        if answer is None:
            answer = await self._forward(query, tcp=tcp)
        return answer.to_wire(max_size=MAX_TCP_MESSAGE if tcp else _udp_size(query))

    async def _forward(self, query: dns.message.Message, *, tcp: bool) -> dns.message.Message:
        for upstream in self.upstreams:
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, upstream, timeout=self.timeout,
                                                    port=self.upstream_port)
                return await dns.asyncquery.udp(query, upstream, timeout=self.timeout,
                                                port=self.upstream_port, ignore_trailing=True)
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("dns: upstream %s failed: %s", upstream, exc)
        return servfail(query)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.listen
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(host, port))
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
        log.info("dns proxy on %s:%d (udp, tcp), %d mesh names, upstreams %s",
                 host, port, len(self.table.names), ",".join(self.upstreams) or "none")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    @property
    def serving(self) -> bool:
        return self._udp is not None and not self._udp.is_closing()

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(10):
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(size)
                answer = await self.resolve(wire, tcp=True)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()


def _udp_size(query: dns.message.Message) -> int:
    return max(512, min(query.payload, 4096)) if query.edns >= 0 else 512


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        answer = await self.proxy.resolve(data, tcp=False)
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)
