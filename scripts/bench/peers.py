"""The benchmark peers of scripts/bench/side_by_side.py: SPIRE (server + agent)
and Istio's pilot-agent (against the kube-less istiod the Istio tests use), run
from the binaries cached by scripts/bootstrap-spire and scripts/bootstrap-istio.

Each peer runs with its documented defaults plus only what the benchmark needs;
every departure is written next to the setting that makes it (SPIRE_SERVER_CONF,
SPIRE_AGENT_CONF, PilotAgentPeer) and printed by side_by_side.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MESH_AGENT_PEER_CACHE", "/var/cache/mesh-agent-peers"))
SPIRE_VERSION = "v1.13.3"
TD = "example.org"
WORKLOAD_ID = f"spiffe://{TD}/ns/shop/sa/vm-app"
GO = shutil.which("go") or "/usr/local/go/bin/go"

# SPIRE's quickstart server config (conf/server/server.conf in the release):
# sqlite3 datastore, disk key manager, join_token node attestor. Benchmark
# needs only: loopback address/port, per-run directories, and
# `ratelimit.attestation = false`, because every benchmark client comes from
# 127.0.0.1 and the default allows one attestation per second per IP (a real
# fleet's VMs have an address each; mesh-registrar's own limiter is raised the
# same way for the same reason).
SPIRE_SERVER_CONF = """\
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{dir}/api.sock"
    trust_domain = "{td}"
    data_dir = "{dir}/data"
    log_level = "WARN"
    ratelimit {{ attestation = {rate_limit} }}
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{dir}/data/datastore.sqlite3"
        }}
    }}
    KeyManager "disk" {{ plugin_data {{ keys_path = "{dir}/data/keys.json" }} }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"""

# SPIRE's quickstart agent config (conf/agent/agent.conf): join_token node
# attestor, disk key manager (so a restart reuses the stored agent SVID, as a
# VM's agent does), unix workload attestor. Only paths, the server's loopback
# address and the bootstrap bundle file are ours.
SPIRE_AGENT_CONF = """\
agent {{
    data_dir = "{dir}/data"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{dir}/agent.sock"
    trust_bundle_path = "{bundle}"
    trust_domain = "{td}"
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "disk" {{ plugin_data {{ directory = "{dir}/data" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"""


def spire_dir() -> Path:
    """Build (first run on a machine) or find SPIRE's binaries."""
    out = subprocess.run([str(REPO / "scripts" / "bootstrap-spire")], capture_output=True,
                         text=True, timeout=7200, check=False)
    if out.returncode != 0:
        raise SystemExit(f"scripts/bootstrap-spire failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def attest_load_binary() -> Path:
    """scripts/bench/attest_load/main.go, built against SPIRE's module graph and
    cached by the hash of its source."""
    source = REPO / "scripts" / "bench" / "attest_load" / "main.go"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"spire-{SPIRE_VERSION}" / f"attest-load-{digest}"
    if binary.exists():
        return binary
    # cgo on like SPIRE's build, so its cached packages are reused.
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "1",
           "PATH": f"{os.environ.get('PATH', '')}:/usr/local/go/bin"}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(source, tmp)
        for argv in (["mod", "init", "mesh-agent.invalid/attest-load"],
                     ["get", f"github.com/spiffe/spire@{SPIRE_VERSION}"],
                     ["build", "-o", str(binary), "."]):
            subprocess.run([GO, *argv], cwd=tmp, env=env, check=True, capture_output=True,
                           timeout=1800)
    return binary


class Spire:
    """One spire-server and spire-agents against it, all on loopback."""

    def __init__(self, base: Path, *, rate_limit: bool = False) -> None:
        self.bin = spire_dir()
        self.base = base
        self.server_dir = base / "server"
        (self.server_dir / "data").mkdir(parents=True)
        self.port = _free_port()
        self.conf = self.server_dir / "server.conf"
        self.conf.write_text(SPIRE_SERVER_CONF.format(
            port=self.port, dir=self.server_dir, td=TD,
            rate_limit="true" if rate_limit else "false"))
        self.socket = self.server_dir / "api.sock"
        self.bundle = base / "bundle.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.server_dir / "server.log").open("ab")
        self.proc = subprocess.Popen([str(self.bin / "spire-server"), "run", "-config",
                                      str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while self._cli("healthcheck", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("spire-server did not start:\n"
                                 + (self.server_dir / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        self.bundle.write_text(self._cli("bundle", "show").stdout)

    def _cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Subcommand words first ("bundle show"), then the flags.
        return subprocess.run([str(self.bin / "spire-server"), *args, "-socketPath",
                               str(self.socket)], capture_output=True, text=True,
                              check=check, timeout=60)

    def join_token(self, node_id: str) -> str:
        """A join token whose agent gets the alias ``node_id`` (spire-server token
        generate -spiffeID), and one workload entry under it for uid 0: the
        certificate the benchmark's "workload" (this root process) fetches."""
        out = self._cli("token", "generate", "-spiffeID", node_id, "-ttl", "3600").stdout
        token = out.split("Token:", 1)[1].split()[0]
        if not self._entry_exists(node_id):
            self._cli("entry", "create", "-parentID", node_id, "-spiffeID", WORKLOAD_ID,
                      "-selector", "unix:uid:0")
        return token

    def _entry_exists(self, parent: str) -> bool:
        out = self._cli("entry", "show", "-parentID", parent, "-output", "json", check=False)
        return out.returncode == 0 and bool(json.loads(out.stdout or "{}").get("entries"))

    def stop(self) -> None:
        _stop(self.proc)


class SpireAgent:
    def __init__(self, spire: Spire, name: str) -> None:
        self.spire = spire
        self.dir = spire.base / name
        (self.dir / "data").mkdir(parents=True)
        self.conf = self.dir / "agent.conf"
        self.conf.write_text(SPIRE_AGENT_CONF.format(dir=self.dir, port=spire.port, td=TD,
                                                     bundle=spire.bundle))
        self.socket = self.dir / "agent.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, token: str | None = None) -> None:
        argv = [str(self.spire.bin / "spire-agent"), "run", "-config", str(self.conf)]
        if token:
            argv += ["-joinToken", token]
        log = (self.dir / "agent.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def has_svid(self) -> bool:
        """A workload (this process, uid 0) got an X.509 SVID from the Workload API."""
        return workload_api_svid(self.socket)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def workload_api_svid(socket: Path) -> bool:
    """One FetchX509SVID call on SPIRE's Workload API; True when it returns an SVID.
    Raw bytes over grpcio: the empty request is b"", and any answer message
    carries at least one SVID (the agent answers PermissionDenied until then)."""
    import grpc

    if not socket.exists():
        return False
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID")
        try:
            for message in call(b"", metadata=(("workload.spiffe.io", "true"),), timeout=2):
                return len(message) > 0
        except grpc.RpcError:
            return False
    return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
