"""Two registrar replicas on one PostgreSQL, each with its own xDS server on its
own port, VMs that attest and report through either, and EDS subscribers held
open on either replica's xDS: shared by tests/registrar/xds/test_replicas_xds.py
and scripts/bench/xds_replicas.py.

Everything is on loopback and real: ``mesh-registrar serve`` processes, mTLS
to the API and to ADS, PostgreSQL from Debian's package.
"""

from __future__ import annotations

import json
import queue
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from tests.fixtures.registrar import REPO, RegistrarProcess, free_port
from tests.registrar.csrs import csr_pem, ec_key

ORDERS_PORT = 9090
ORDERS_CLUSTER = f"outbound|{ORDERS_PORT}||orders.shop.mesh"
ORDERS_SERVICE = ["orders", "--host", "orders.shop.mesh", "--port", f"http:{ORDERS_PORT}/HTTP",
                  "--selector", "app=orders", "--vip", "240.240.0.1", "--allow", "frontend"]
GROUPS = [
    {"name": "frontend", "namespace": "shop", "service_account": "frontend",
     "cert_ttl": "1h", "labels": {"app": "frontend"}},
    {"name": "orders", "namespace": "shop", "service_account": "orders", "cert_ttl": "1h",
     "labels": {"app": "orders"}, "ports": {"http": ORDERS_PORT}},
]


def xds_section(port: int) -> dict[str, Any]:
    # health_grace at its maximum: no VM goes stale during a test, so nothing but a
    # change seen through the store makes an xDS server re-read its catalog before
    # its MAX_IDLE safety net (registrar/xds/hub.py).
    return {"listen": f"127.0.0.1:{port}", "health_grace": "1h"}


def start_pair(base: Path, dsn: str) -> tuple[RegistrarProcess, RegistrarProcess]:
    """Replica A and replica B (each ``serve`` with its own API and xDS port) on the
    database ``dsn`` (already migrated). The caller kills them."""
    a = RegistrarProcess(base / "a", store={"type": "postgres", "dsn": dsn},
                         config={"groups": GROUPS, "xds": xds_section(free_port())})
    (base / "a").mkdir(parents=True)
    a.init()
    b = a.replica(base / "b")
    b.write_config(xds=xds_section(free_port()))
    for reg in (a, b):
        reg.start()
        wait_until(lambda reg=reg: "xds serving" in reg.log_text(), 30,
                   f"xDS of {reg.config_path}")
    return a, b


def xds_target(reg: RegistrarProcess) -> str:
    import yaml
    return str(yaml.safe_load(reg.config_path.read_text())["xds"]["listen"])


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(0.05)


class Vm:
    """One VM's identity: attested with a join token through one replica, its key
    kept here, its API calls (mTLS) made to whichever replica it is given."""

    def __init__(self, base: Path, group: str) -> None:
        self.dir = base / f"vm-{group}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.group = group
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        self.spiffe_id = ""

    def attest(self, reg: RegistrarProcess) -> None:
        key = ec_key()
        body = {"evidence": {"type": "join_token", "token": reg.create_token(self.group)},
                "csr": csr_pem(key)}
        ctx = ssl.create_default_context(cafile=str(reg.ca_file))
        with httpx.Client(verify=ctx, timeout=30) as c:
            response = c.post(f"{reg.url}/v1/attest", json=body)
        assert response.status_code == 200, response.text
        issued = response.json()
        self.spiffe_id = issued["spiffe_id"]
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.key.chmod(0o600)
        self.cert.write_text(issued["cert_chain"])

    def report(self, reg: RegistrarProcess, address: str, health: str) -> None:
        ctx = ssl.create_default_context(cafile=str(reg.ca_file))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        with httpx.Client(verify=ctx, timeout=30) as c:
            response = c.post(f"{reg.url}/v1/workload/status",
                              json={"addresses": [address], "health": health})
        assert response.status_code == 200, response.text


class EdsWatch:
    """tests/registrar/xds/eds_watch.py subscribed to ORDERS_CLUSTER on one
    replica's xDS with ``vm``'s certificate; every push it receives is kept."""

    def __init__(self, name: str, reg: RegistrarProcess, vm: Vm) -> None:
        self.name = name
        self.stderr = vm.dir / f"eds-watch-{name}.log"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.registrar.xds.eds_watch", "--target",
                 xds_target(reg), "--ca", str(reg.ca_file), "--cert", str(vm.cert), "--key",
                 str(vm.key), "--node-id", vm.spiffe_id, "--cluster", ORDERS_CLUSTER],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.updates: queue.Queue[dict[str, Any]] = queue.Queue()
        self.latest: dict[str, Any] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.updates.put(json.loads(line))
        code = self.proc.wait()
        self.updates.put({"error": f"eds_watch exited {code}: "
                                   f"{self.stderr.read_text(errors='replace')[-2000:]}"})

    def wait(self, endpoints: list[str], *, since: float, timeout: float) -> float:
        """Seconds from ``since`` (time.time()) to the first push received after it
        whose healthy endpoints are ``endpoints``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if (self.latest is not None and self.latest["t"] >= since
                    and self.latest["endpoints"] == endpoints):
                return float(self.latest["t"]) - since
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"replica {self.name}'s xDS did not push {endpoints} "
                                     f"within {timeout}s; last push: {self.latest}")
            try:
                update = self.updates.get(timeout=left)
            except queue.Empty:
                continue
            if "error" in update:
                raise AssertionError(f"replica {self.name}'s EDS stream: {update['error']}")
            self.latest = update

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
