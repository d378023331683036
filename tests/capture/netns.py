"""Network namespaces for capture tests: a "vm" and (optionally) a "peer" on a veth.

Names carry the test process id and a counter so parallel runs never collide;
``Topology.close`` always deletes what was created.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count()
ENDPOINTS = str(Path(__file__).with_name("endpoints.py"))
VM4, PEER4, VM6, PEER6 = "10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"
METADATA4, METADATA6 = "169.254.169.254", "fd00:ec2::254"


def sh(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.returncode}: {result.stderr}")
    return result.stdout


def require_root() -> None:
    # Needs root and netns: fail loudly, never skip (CI is root).
    if os.geteuid() != 0:
        raise RuntimeError("capture tests need root (CAP_NET_ADMIN) for network namespaces")


@dataclass
class Topology:
    vm: str
    peer: str | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    def serve(self, ns: str, *specs: str) -> None:
        proc = subprocess.Popen([*self.ns(ns), sys.executable, ENDPOINTS, "serve", *specs],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"endpoint failed in {ns}: {err}")

    def connect(self, ns: str, uid: int, gid: int, *targets: str) -> list[str]:
        out = sh(*self.ns(ns), sys.executable, ENDPOINTS, "connect", str(uid), str(gid), *targets)
        answers: list[str] = json.loads(out)
        return answers

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for name in (self.vm, self.peer):
            if name:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def make(with_peer: bool) -> Topology:
    require_root()
    n = f"{os.getpid()}-{next(_counter)}"
    topo = Topology(vm=f"mcap-vm-{n}", peer=f"mcap-peer-{n}" if with_peer else None)
    try:
        sh("ip", "netns", "add", topo.vm)
        vm = ["ip", "-n", topo.vm]
        sh(*vm, "link", "set", "lo", "up")
        if topo.peer is None:
            # A default route so probe addresses route (into a veth whose other end is
            # in the same namespace; no dummy module on every kernel) like on a real VM.
            sh(*vm, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
            sh(*vm, "link", "set", "d1", "up")
            sh(*vm, "link", "set", "d0", "up")
            sh(*vm, "addr", "add", "10.78.0.1/24", "dev", "d0")
            sh(*vm, "-6", "addr", "add", "fd78::1/64", "dev", "d0", "nodad")
            sh(*vm, "route", "add", "default", "dev", "d0")
            sh(*vm, "-6", "route", "add", "default", "dev", "d0")
            return topo
        sh("ip", "netns", "add", topo.peer)
        peer = ["ip", "-n", topo.peer]
        sh(*peer, "link", "set", "lo", "up")
        sh(*vm, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", topo.peer)
        for cmd, dev, a4, a6 in ((vm, "v0", VM4, VM6), (peer, "v1", PEER4, PEER6)):
            sh(*cmd, "link", "set", dev, "up")
            sh(*cmd, "addr", "add", f"{a4}/24", "dev", dev)
            sh(*cmd, "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
        sh(*peer, "addr", "add", f"{METADATA4}/32", "dev", "v1")
        sh(*peer, "-6", "addr", "add", f"{METADATA6}/128", "dev", "v1", "nodad")
        sh(*vm, "route", "add", "default", "via", PEER4)
        sh(*vm, "-6", "route", "add", "default", "via", PEER6)
    except BaseException:
        topo.close()
        raise
    return topo


_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NFT_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")


_EMPTY_TABLE = re.compile(r"^\*(\w+)\n(?::[A-Z]+ ACCEPT \[0:0\]\n)+COMMIT\n", re.M)


def ruleset(ns: str, *, ignore_empty_legacy: bool = False) -> str:
    """Every table of every backend in ``ns``, comments and counters removed.

    ``ignore_empty_legacy`` drops legacy tables holding only built-in chains with
    ACCEPT policies and no rules: the kernel instantiates them on first use and
    nothing (not even ``iptables -X``) can delete them again.
    """
    parts = []
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
                 "ip6tables-nft-save"):
        text = sh("ip", "netns", "exec", ns, tool)
        text = "".join(_COUNTERS.sub("[0:0]", line) + "\n" for line in text.splitlines()
                       if not line.startswith("#"))
        if ignore_empty_legacy and "legacy" in tool:
            text = _EMPTY_TABLE.sub("", text)
        parts.append(f"## {tool}\n{text}")
    text = sh("ip", "netns", "exec", ns, "nft", "list", "ruleset")
    parts.append("## nft\n" + _NFT_COUNTERS.sub("counter", text))
    return "\n".join(parts)
