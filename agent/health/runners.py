"""Thin runners: one probe attempt against the local app, True when it passed.

Istio's semantics: ``httpGet`` passes on a status in 200..399, ``tcpSocket``
when the connection opens, ``exec`` when the command exits 0. Every attempt
is bounded by the probe's timeout on the event loop's clock (a deadline on
real I/O); a timed-out command is killed. Failures are results, not errors:
the reason goes to the debug log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.health.spec import ProbeSpec

log = logging.getLogger(__name__)
Runner = Callable[[ProbeSpec], Awaitable[bool]]
LOCAL = "127.0.0.1"
MAX_STATUS_LINE = 4096


async def _http(spec: ProbeSpec, host: str) -> bool:
    reader, writer = await asyncio.open_connection(host, spec.port)
    try:
        writer.write(f"GET {spec.path} HTTP/1.1\r\nHost: {host}:{spec.port}\r\n"
                     f"User-Agent: mesh-agent-probe\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        words = line[:MAX_STATUS_LINE].split()
        if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
            log.debug("probe httpGet: not an HTTP answer: %r", line[:80])
            return False
        status = int(words[1])
        log.debug("probe httpGet %s: %d", spec.path, status)
        return 200 <= status < 400
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _tcp(spec: ProbeSpec, host: str) -> bool:
    _, writer = await asyncio.open_connection(host, spec.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _exec(spec: ProbeSpec) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *spec.command, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await proc.wait() == 0
    finally:
        if proc.returncode is None:  # cancelled by the timeout
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run_probe(spec: ProbeSpec, host: str = LOCAL) -> bool:
    """One attempt of ``spec`` against ``host`` (the local app by default)."""
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.kind == "httpGet":
                return await _http(spec, host)
            if spec.kind == "tcpSocket":
                return await _tcp(spec, host)
            return await _exec(spec)
    except TimeoutError:
        log.debug("probe %s: no answer within %gs", spec.kind, spec.timeout)
    except OSError as exc:
        log.debug("probe %s: %s", spec.kind, exc)
    return False
