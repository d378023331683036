"""Envoy's admin endpoint on 127.0.0.1: readiness and drain.

A tiny HTTP/1.1 (Connection: close) client on asyncio streams: the admin API is local, plain HTTP,
and a few calls per second at most; no pool or TLS is wanted here.
"""

from __future__ import annotations

import asyncio
import contextlib

ADMIN_HOST = "127.0.0.1"
PROBE_TIMEOUT = 1.0


async def admin_request(port: int, method: str, path: str,
                        *, timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    """(status, body) of one admin call; raises OSError/TimeoutError when unreachable."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(ADMIN_HOST, port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {ADMIN_HOST}\r\n"
                         "Connection: close\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
    except (IndexError, ValueError):
        raise OSError(f"malformed admin reply from {ADMIN_HOST}:{port}{path}") from None
    return status, body.decode(errors="replace")


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


class AdminProbe:
    """Readiness is Envoy's own ``/ready`` (200 once listeners and secrets are up)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def ready(self) -> bool:
        try:
            status, _ = await admin_request(self.port, "GET", "/ready")
        except (OSError, TimeoutError):
            return False
        return status == 200

    async def drain(self) -> bool:
        """Start a graceful drain of every listener; False when Envoy did not answer."""
        try:
            status, _ = await admin_request(self.port, "POST", "/drain_listeners?graceful")
        except (OSError, TimeoutError):
            return False
        return status == 200
