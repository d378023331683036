"""Tiny TCP endpoints for capture tests, run inside network namespaces.

``serve TAG:FAMILY:ADDR:PORT ...`` answers every connection with one line
``TAG orig=<SO_ORIGINAL_DST or ->`` and prints ``ready`` once all listen.
``connect UID GID ADDR:PORT[|PAYLOAD] ...`` drops to UID/GID (like a preexec
setuid), dials each target, sends PAYLOAD if given, and prints one JSON list of
the answers (or errors).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


def original_dst(conn: socket.socket) -> tuple[str, int]:
    """The pre-NAT destination of an accepted, redirected connection."""
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        return str(ipaddress.IPv4Address(packed)), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, packed = struct.unpack_from("!2xH4x16s", raw)
    return str(ipaddress.IPv6Address(packed)), port


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _answer(listener: socket.socket, tag: str) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                host, port = original_dst(conn)
                orig = f"{host}:{port}"
            except OSError:
                orig = "-"  # not a NATed connection
            conn.sendall(f"{tag} orig={orig}\n".encode())


def serve(specs: list[str]) -> None:
    for spec in specs:
        tag, family, rest = spec.split(":", 2)
        addr, port = rest.rsplit(":", 1)
        addr = addr.strip("[]")
        af = socket.AF_INET if family == "4" else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr, int(port)))
        sock.listen(16)
        threading.Thread(target=_answer, args=(sock, tag), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(uid: int, gid: int, targets: list[str]) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    answers = []
    for target in targets:
        target, _, payload = target.partition("|")  # "host:port|bytes to send first"
        host, port = _split(target)
        af = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            # No getaddrinfo: after setuid the interpreter's lazily imported codecs
            # may be unreadable (the venv's Python can live under /root).
            with socket.socket(af, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect((host, port))
                if payload:
                    sock.sendall(payload.encode())
                answers.append(sock.recv(200).decode(errors="replace").strip())
        except OSError as exc:
            answers.append(f"error {exc}")
    print(json.dumps(answers))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        connect(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
