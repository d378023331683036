"""The agent's DNS side inside a VM namespace: the real DNS proxy, capture with the
DNS redirect (the real controller and backend) and the guard, as the agent runs
them. ``python agent_dns.py STATE_DIR BACKEND NAMESERVER``; prints ``ready``
once the redirect is installed; a line ``stop`` on stdin stops the proxy's
listeners (the proxy "dies"); the guard must then remove the redirect."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.plan import DnsCapture
from agent.dns.guard import DnsGuard, wire_check
from agent.dns.proxy import DnsProxy
from agent.dns.table import LISTEN, NameTable
from agent.proxy.config import ProxyConfig
from meshcore.clock import SystemClock

NAMES = {"orders.shop.mesh": "240.240.0.1"}


async def main(state: Path, backend: str, nameserver: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    proxy = DnsProxy(NameTable(NAMES), (nameserver,))
    await proxy.start()
    config = CaptureConfig(enabled=True, backend=backend, ipv6=False, probe=False,
                           proxy=ProxyConfig(uid=1337, gid=1337))
    capture = CaptureController(config, state_dir=state)
    # The forwarder runs as this process's user (root here, mesh-agent in production).
    dns_capture = DnsCapture((nameserver,), to_port=LISTEN[1], exempt_uids=(0,))
    guard = DnsGuard(capture, dns_capture, wire_check(*LISTEN), SystemClock(),
                     interval=0.2, failures=2)
    await guard.step()
    assert guard.redirecting
    print("ready", flush=True)
    task = asyncio.create_task(guard.run())
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() == "stop":
        await proxy.stop()
        print("stopped", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    task.cancel()
    await capture.remove()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
