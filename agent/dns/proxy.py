"""The DNS proxy's shell: UDP and TCP listeners on 127.0.0.1:15053, the name
table, and forwarding to the nameservers of /etc/resolv.conf.

It runs inside the agent, as the agent's user: capture exempts that user for
port 53, so the forwarder's own queries go straight to the nameservers and
are never redirected back to the proxy. Upstreams are tried in resolv.conf
order; when none answers, the app gets SERVFAIL (its resolver then tries its
own next server, as without the proxy).

The TCP listener is our own accept loop rather than ``asyncio.start_server``:
when a listening socket dies under asyncio's server (``ss -K`` destroys it, as
a firewall tool or an operator can), every later ``accept`` fails and the event
loop calls it again at once, logging a traceback each time: the agent spins a
core and floods its log. Here the loop ends, ``serving`` turns False, and the
guard (``agent/dns/guard.py``) restarts the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from typing import cast

import dns.asyncquery
import dns.exception
import dns.message

from agent.dns.answer import mesh_answer, servfail
from agent.dns.table import LISTEN, NameTable

log = logging.getLogger(__name__)
MAX_TCP_MESSAGE = 65535
# accept() failures that pass (no descriptors or memory for now): wait, then go on.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
TRANSIENT_PAUSE = 0.1


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
        self._udp_protocol: _Udp
        self._tcp: asyncio.Task[None] | None = None  # the accept loop
        self._conns: set[asyncio.Task[None]] = set()

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
        """Bind UDP and TCP on ``listen`` (OSError when the address is taken)."""
        loop = asyncio.get_running_loop()
        host, port = self.listen
        self._udp, self._udp_protocol = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(host, port))
        listener = socket.create_server((host, port), backlog=64)
        listener.setblocking(False)
        self._tcp = asyncio.ensure_future(self._accept(listener))
        log.info("dns proxy on %s:%d (udp, tcp), %d mesh names, upstreams %s",
                 host, port, len(self.table.names), ",".join(self.upstreams) or "none")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
            # The socket closes one loop pass later: a restart must not bind before.
            await self._udp_protocol.closed
        if self._tcp is not None:
            self._tcp.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tcp
            self._tcp = None
        for task in list(self._conns):
            task.cancel()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def serving(self) -> bool:
        """Both listeners alive (the guard's first question)."""
        return (self._udp is not None and not self._udp.is_closing()
                and self._tcp is not None and not self._tcp.done())

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with listener:
            while True:
                try:
                    conn, _ = await loop.sock_accept(listener)
                except OSError as exc:
                    if exc.errno in TRANSIENT:
                        await asyncio.sleep(TRANSIENT_PAUSE)
                        continue
                    log.error("dns proxy: the TCP listener failed (%s); the guard "
                              "restarts the proxy", exc)
                    return
                task = asyncio.ensure_future(self._serve_tcp(conn))
                self._conns.add(task)
                task.add_done_callback(self._conns.discard)

    async def _serve_tcp(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
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
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        answer = await self.proxy.resolve(data, tcp=False)
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)
