"""What travels between VMs, as bytes: a packet tap on a VM's ``eth0``.

An ``AF_PACKET`` socket made inside the VM's namespace (no tcpdump needed)
sees every frame in and out of the interface. ``WireTap`` keeps the TCP
payloads of one port (IPv4), so a test can show that a call the app made in
plain HTTP crossed the network as TLS, and that the plain request never did.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from tests.sidecar.netns import call_in

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
TLS_HANDSHAKE = 0x16


@dataclass(frozen=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def parse_frame(frame: bytes) -> Segment | None:
    """An Ethernet frame's IPv4 TCP segment, or None for anything else."""
    if len(frame) < 34 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != socket.IPPROTO_TCP or len(ip) < ihl + 20:
        return None
    total = int.from_bytes(ip[2:4], "big") or len(ip)  # 0 in a GSO super-frame
    tcp = ip[ihl:total]
    offset = (tcp[12] >> 4) * 4
    return Segment(src=socket.inet_ntoa(ip[12:16]), sport=int.from_bytes(tcp[0:2], "big"),
                   dst=socket.inet_ntoa(ip[16:20]), dport=int.from_bytes(tcp[2:4], "big"),
                   payload=bytes(tcp[offset:]))


class WireTap:
    """TCP payloads to or from ``port`` on ``interface`` of namespace ``netns``."""

    def __init__(self, netns: str, port: int, interface: str = "eth0") -> None:
        self.port = port

        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((interface, 0))
            return sock

        self._sock = call_in(netns, open_socket)  # stays in netns after the thread ends
        self._sock.settimeout(0.2)
        self.segments: list[Segment] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tap-{netns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            segment = parse_frame(frame)
            if segment and self.port in (segment.sport, segment.dport) and segment.payload:
                self.segments.append(segment)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> WireTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sent_to_port(self) -> bytes:
        """Everything sent towards ``port`` (the client's side of the stream)."""
        return b"".join(s.payload for s in self.segments if s.dport == self.port)

    def received_from_port(self) -> bytes:
        return b"".join(s.payload for s in self.segments if s.sport == self.port)

    def first_payloads(self) -> list[bytes]:
        """The first payload of each client connection (by source port)."""
        first: dict[tuple[str, int], bytes] = {}
        for s in self.segments:
            if s.dport == self.port:
                first.setdefault((s.src, s.sport), s.payload)
        return list(first.values())


__all__ = ["Segment", "WireTap", "parse_frame"]
