"""A tiny dnspython-based nameserver for namespace tests (the VM's "resolv.conf
nameserver"): ``example.org`` A 192.0.2.80, NXDOMAIN for everything else, on
UDP and TCP. ``python resolver.py ADDRESS`` prints ``ready`` when serving and
appends every question to stderr (so tests see who reached it)."""

from __future__ import annotations

import asyncio
import struct
import sys

import dns.message
import dns.rcode
import dns.rrset

ZONE = {"example.org.": "192.0.2.80"}


def answer(wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    print(f"question {question.name}", file=sys.stderr, flush=True)
    address = ZONE.get(question.name.to_text().lower())
    if address is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", address))
    return response.to_wire()


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(answer(data), addr)  # type: ignore[attr-defined]


async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (size,) = struct.unpack("!H", await reader.readexactly(2))
    out = answer(await reader.readexactly(size))
    writer.write(struct.pack("!H", len(out)) + out)
    await writer.drain()
    writer.close()


async def main(address: str) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, local_addr=(address, 53))
    server = await asyncio.start_server(tcp, address, 53)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
