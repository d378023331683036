"""Real Envoys fed by the real registrar's ADS server, in network namespaces.

``frontend`` (10.77.0.1) and ``orders`` (10.77.0.2) are two namespaces on one
veth link (tests/sidecar/netns.py HostPair). The registrar runs inside
``orders`` on 10.77.0.2 (API and xDS), so both reach it without routing. Each
node attests with a join token for its own key, publishes its credentials
with the agent's own SDS mirror, and starts Envoy with an ADS bootstrap
written here (the agent's ADS renderer comes later).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization

from agent.sidecar.ads import ADS_RETRY_POLICY
from agent.sidecar.sds import Generation, ProxyIdentity, SdsMirror
from agent.sidecar.settings import EnvoyPaths
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import spec
from tests.registrar.csrs import csr_pem, ec_key
from tests.sidecar.netns import Host, call_in

XDS_PORT = 15010
ADMIN = "http://127.0.0.1:15000"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def ads_bootstrap(node_id: str, sds_dir: Path, registrar_ip: str, port: int) -> dict[str, Any]:
    def sds(name: str, file: str) -> dict[str, Any]:
        return {"name": name, "sds_config": {"path_config_source": {
            "path": str(sds_dir / file), "watched_directory": {"path": str(sds_dir)}},
            "resource_api_version": "V3"}}
    return {
        "node": {"id": node_id, "cluster": "test",
                 "metadata": {"SDS_DIR": str(sds_dir)}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "set_node_on_first_message_only": True,
                           # The agent's reconnect backoff (agent/sidecar/ads.py).
                           "grpc_services": [{"envoy_grpc": {
                               "cluster_name": "xds", "retry_policy": ADS_RETRY_POLICY}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2, "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": registrar_ip, "port_value": port}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": _TLS + "UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [sds("default", "cert.yaml")],
                    "combined_validation_context": {
                        "default_validation_context": {"match_typed_subject_alt_names": [
                            {"san_type": "IP_ADDRESS", "matcher": {"exact": registrar_ip}}]},
                        "validation_context_sds_secret_config": sds("ROOTCA", "bundle.yaml")},
                }}},
        }]},
    }


class Node:
    """One VM: its namespace, its attested identity, its Envoy."""

    def __init__(self, host: Host, base: Path, reg: RegistrarProcess, group: str) -> None:
        self.host = host
        self.base = base
        self.reg = reg
        self.group = group
        self.paths = EnvoyPaths(base / "envoy")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "envoy.log"
        self.spiffe_id = ""

    def in_ns(self, fn: Callable[[], Any]) -> Any:
        return call_in(self.host.name, fn)

    def attest(self) -> None:
        key = ec_key()
        token = self.reg.create_token(self.group)
        body = {"evidence": {"type": "join_token", "token": token}, "csr": csr_pem(key),
                "addresses": [self.host.address]}

        def post() -> Any:
            ctx = ssl.create_default_context(cafile=str(self.reg.ca_file))
            with httpx.Client(verify=ctx, timeout=10) as c:
                response = c.post(f"{self.reg.url}/v1/attest", json=body)
                assert response.status_code == 200, response.text
                return response.json()
        issued = self.in_ns(post)
        self.spiffe_id = issued["spiffe_id"]
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "key.pem").write_bytes(key_pem)
        (self.base / "key.pem").chmod(0o600)
        (self.base / "cert.pem").write_text(issued["cert_chain"])
        mirror = SdsMirror(self.paths, ProxyIdentity(os.getuid(), os.getgid()))
        mirror.prepare()
        mirror.publish(Generation(name="gen-1", key_pem=key_pem,
                                  chain_pem=issued["cert_chain"].encode(),
                                  bundle_pem=issued["trust_bundle"].encode()))

    def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """An mTLS call with the workload certificate; the response is checked
        against docs/api/openapi.yaml."""
        def call() -> tuple[int, Any]:
            ctx = ssl.create_default_context(cafile=str(self.reg.ca_file))
            ctx.load_cert_chain(str(self.base / "cert.pem"), str(self.base / "key.pem"))
            with httpx.Client(verify=ctx, timeout=10) as c:
                response = c.request(method, f"{self.reg.url}{path}", **kwargs)
                return response.status_code, spec.check(response)
        result: tuple[int, Any] = self.in_ns(call)
        return result

    def report(self, health: str = "healthy") -> Any:
        status, body = self.api("POST", "/v1/workload/status",
                                json={"addresses": [self.host.address], "health": health})
        assert status == 200, body
        return body

    def start_envoy(self, envoy: Path, node_id: str | None = None) -> None:
        bootstrap = self.base / "bootstrap.yaml"
        bootstrap.write_text(yaml.safe_dump(ads_bootstrap(
            node_id or self.spiffe_id, self.paths.sds_dir, self.reg.host, XDS_PORT)))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.name, str(envoy), "-c", str(bootstrap),
                 "--disable-hot-restart", "-l", "info", "--drain-time-s", "1",
                 "--file-flush-interval-msec", "100"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_envoy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def admin(self, path: str) -> Any:
        def get() -> Any:
            response = httpx.get(f"{ADMIN}{path}", timeout=5)
            return response.json() if "json" in response.headers.get(
                "content-type", "") else response.text
        return self.in_ns(get)

    def stats(self, *names: str) -> dict[str, int]:
        text = self.admin("/stats?filter=" + "|".join(n.replace(".", r"\.") for n in names))
        out = {}
        for line in str(text).splitlines():
            name, _, value = line.partition(": ")
            if name in names:
                out[name] = int(value)
        return out

    def dynamic(self) -> dict[str, Any]:
        """{'listeners': {name: (version, config)}, 'clusters': {...}} from /config_dump."""
        dump = self.admin("/config_dump")
        out: dict[str, Any] = {"listeners": {}, "clusters": {}, "versions": {}}
        for config in dump.get("configs", []):
            kind = config.get("@type", "").rsplit(".", 1)[-1]
            if "version_info" in config:
                out["versions"][kind] = config["version_info"]
            for item in config.get("dynamic_listeners", []):
                active = item.get("active_state")
                if active:
                    out["listeners"][item["name"]] = (active["version_info"],
                                                      active["listener"])
            for item in config.get("dynamic_active_clusters", []):
                out["clusters"][item["cluster"]["name"]] = (item["version_info"],
                                                            item["cluster"])
        return out

    def curl(self, url: str, timeout: float = 3) -> tuple[int, str]:
        result = subprocess.run(["ip", "netns", "exec", self.host.name, "curl", "-sS",
                                 "--max-time", str(timeout), "-o", "/dev/null", "-w",
                                 "%{http_code}", url], capture_output=True, text=True,
                                timeout=timeout + 5)
        return result.returncode, result.stdout + result.stderr


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.02) -> float:
    """Poll until ``check()`` is truthy; returns the seconds it took (fails on timeout)."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        try:
            last = check()
        except (httpx.HTTPError, KeyError) as exc:
            last = exc
        if last:
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s (last: {last!r})")
