"""Network namespaces as hosts for sidecar tests: a "VM" and a "mesh peer" joined by veth.

Linux network namespaces are per *thread*: a thread that calls setns(2) opens
sockets and forks children in that namespace. So each namespace gets its own
thread running an asyncio loop; the supervisor runs there and the Envoy it
forks lands in the namespace, exactly as if the agent ran on that host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def enter(name: str) -> None:
    """Move the calling thread into netns ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Run a blocking ``fn`` on a fresh thread inside netns ``name``."""
    with concurrent.futures.ThreadPoolExecutor(1, initializer=enter, initargs=(name,)) as pool:
        return pool.submit(fn).result()


class NetnsLoop:
    """An asyncio loop on a thread inside a namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            try:
                enter(name)
            except BaseException as exc:
                error.append(exc)
                ready.set()
                return
            asyncio.set_event_loop(self.loop)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=f"netns-{name}", daemon=True)
        self.thread.start()
        ready.wait()
        if error:
            raise error[0]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Host:
    """One namespace with loopback up and (once linked) an address on its veth."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address

    def ip(self, *args: str) -> None:
        sh("ip", "-n", self.name, *args)

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv, check=check)


class HostPair:
    """``vm`` 10.77.0.1 and ``peer`` 10.77.0.2 on one veth link; names carry the pid."""

    def __init__(self, tag: str) -> None:
        pid = os.getpid()
        self.vm = Host(f"sc-{tag}-vm-{pid}", "10.77.0.1")
        self.peer = Host(f"sc-{tag}-peer-{pid}", "10.77.0.2")
        short = f"{pid % 100000}{tag[:2]}"
        self._veths = (f"scv{short}", f"scp{short}")

    def create(self) -> None:
        for host in (self.vm, self.peer):
            sh("ip", "netns", "add", host.name)
        a, b = self._veths
        sh("ip", "link", "add", a, "netns", self.vm.name, "type", "veth",
           "peer", "name", b, "netns", self.peer.name)
        for host, dev in ((self.vm, a), (self.peer, b)):
            host.ip("link", "set", "lo", "up")
            host.ip("addr", "add", f"{host.address}/24", "dev", dev)
            host.ip("link", "set", dev, "up")

    def route_each_other(self) -> None:
        """Each host's default route through the other: an address off the link is
        routable (capture's probe needs a route to connect through)."""
        self.vm.ip("route", "add", "default", "via", self.peer.address)
        self.peer.ip("route", "add", "default", "via", self.vm.address)

    def destroy(self) -> None:
        for host in (self.vm, self.peer):
            sh("ip", "netns", "del", host.name, check=False)
