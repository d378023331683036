"""Capture apply/remove timing, per backend, inside a scratch network namespace.

Two rule sets: the default one, and one with 200 ports/CIDRs (100 inbound
ports, 50 excluded outbound ports, 50 excluded CIDRs split IPv4/IPv6).
Figures: the backend transaction alone (``apply``: read live state + one
restore/``nft -f`` per family; ``remove``), and the controller's full apply
(transaction + read-back verification + two durable record writes + a real
probe per family, answered by a stand-in proxy listening on 15001).

    .venv/bin/python scripts/bench/capture_apply.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.capture.backend import make_backend  # noqa: E402
from agent.capture.config import CaptureConfig  # noqa: E402
from agent.capture.controller import CaptureController  # noqa: E402
from agent.capture.plan import CaptureSettings, plan  # noqa: E402
from agent.capture.probe import SubprocessProber  # noqa: E402
from agent.capture.runner import SubprocessRunner  # noqa: E402
from agent.proxy.config import ProxyConfig  # noqa: E402

ENDPOINTS = REPO / "tests" / "capture" / "endpoints.py"

BACKENDS = ("iptables-nft", "iptables-legacy", "nftables")
DEFAULT = CaptureConfig(enabled=True, proxy=ProxyConfig(uid=1337, gid=1337))
LARGE = CaptureConfig(
    enabled=True, proxy=ProxyConfig(uid=1337, gid=1337),
    inbound_ports=tuple(range(20000, 20100)),
    exclude_outbound_ports=tuple(range(30000, 30050)),
    exclude_outbound_cidrs=tuple([f"10.{i}.0.0/16" for i in range(25)]
                                 + [f"fd00:{i:x}::/32" for i in range(25)]))


def netns() -> str:
    name = f"mcap-bench-{os.getpid()}"
    for cmd in (["ip", "netns", "add", name],
                ["ip", "-n", name, "link", "set", "lo", "up"],
                ["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                ["ip", "-n", name, "link", "set", "d0", "up"],
                ["ip", "-n", name, "link", "set", "d1", "up"],
                ["ip", "-n", name, "addr", "add", "10.78.0.1/24", "dev", "d0"],
                ["ip", "-n", name, "-6", "addr", "add", "fd78::1/64", "dev", "d0", "nodad"],
                ["ip", "-n", name, "route", "add", "default", "dev", "d0"],
                ["ip", "-n", name, "-6", "route", "add", "default", "dev", "d0"]):
        subprocess.run(cmd, check=True)
    return name


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


def fmt(samples: list[float]) -> str:
    samples = sorted(samples)
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    return f"median {statistics.median(samples):6.1f} ms  p90 {p90:6.1f} ms"


async def bench(ns: str, runs: int) -> None:
    runner = SubprocessRunner(["ip", "netns", "exec", ns])
    print(f"{'backend':16} {'rule set':8} {'rules':>5}  what")
    for name in BACKENDS:
        backend = make_backend(name, runner)
        for label, config in (("default", DEFAULT), ("200", LARGE)):
            ruleset = plan(CaptureSettings(config, 1337, 1337))
            rules = sum(len(f.rules) + len(f.jumps) for f in ruleset.families)
            applies, removes, full, verified = [], [], [], []
            for _ in range(runs):
                applies.append(await timed(lambda b=backend, rs=ruleset: b.apply(rs)))
                removes.append(await timed(backend.remove))
            with tempfile.TemporaryDirectory() as state:
                ctl = CaptureController(CaptureConfig(**{**config.__dict__, "backend": name}),
                                        state_dir=Path(state), runner=runner,
                                        prober=SubprocessProber(runner, sys.executable))
                for _ in range(max(3, runs // 4)):
                    full.append(await timed(ctl.apply))
                    await ctl.remove()
                ctl.reconfigure(CaptureConfig(**{**config.__dict__, "backend": name,
                                                 "probe": False}))
                for _ in range(runs):
                    verified.append(await timed(ctl.apply))
                    await ctl.remove()
            print(f"{name:16} {label:8} {rules:5d}  apply  {fmt(applies)}")
            print(f"{'':16} {'':8} {'':5}  remove {fmt(removes)}")
            print(f"{'':16} {'':8} {'':5}  controller apply+read-back+record {fmt(verified)}")
            print(f"{'':16} {'':8} {'':5}  ... + probe (python helper per family) {fmt(full)}")


def stand_in_proxy(ns: str) -> subprocess.Popen[str]:
    """Something else than the agent on 15001: the probe only accepts a proxy's answer."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(ENDPOINTS), "serve",
                             "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    ns = netns()
    proxy = stand_in_proxy(ns)
    try:
        asyncio.run(bench(ns, args.runs))
    finally:
        proxy.kill()
        proxy.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
