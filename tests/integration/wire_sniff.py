"""What crosses a link: ``python wire_sniff.py DEV PORT SECONDS MARKER`` (root, inside
the namespace that holds DEV; ``any`` for all of its interfaces, which a bridge
needs: frames forwarded between its ports never reach the bridge device itself)
reads every frame on DEV for SECONDS with an
AF_PACKET socket and prints one JSON line: how many TCP segments with payload
went to or from PORT, how many of those payloads were TLS records (content type
20..23, version 3.x), and whether MARKER (the request path the test sends)
appeared in clear anywhere on the link. Prints ``ready`` first, once capturing.

No tcpdump on a fresh machine; the kernel's packet socket is enough for IPv4/TCP.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def main(dev: str, port: int, seconds: float, marker: bytes) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if dev != "any":
        sock.bind((dev, 0))
    sock.settimeout(0.2)
    print("ready", flush=True)
    segments = tls = 0
    clear = False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        clear = clear or marker in frame
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != socket.IPPROTO_TCP:
            continue
        ihl = (frame[14] & 0x0F) * 4
        tcp = frame[14 + ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if port not in (sport, dport) or not payload:
            continue
        segments += 1
        if 20 <= payload[0] <= 23 and payload[1] == 3:
            tls += 1
    print(json.dumps({"segments": segments, "tls": tls, "clear": clear}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode())
