"""Istio mode through the real CLI without istiod: the outcomes that must not
need it (an expired token and no certificate: exit 79 with the recovery
steps; an istiod that does not chain to root-cert.pem: exit 78), and
cluster.env's capture settings on the capture config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.capture.config import CaptureConfig
from agent.istio.dataplane import capture_from_cluster_env
from agent.istio.vm import load_vm
from tests.agent.istio.test_ca_client import foreign_tls_server
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import (
    ISTIOD_HOST,
    agent_yaml,
    token_claims,
    unsigned_jwt,
    write_vm_files,
)

__all__ = ["foreign_tls_server"]


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_expired_token_and_no_certificate_exits_79_with_recovery(tmp_path: Path) -> None:
    token = unsigned_jwt(token_claims(lifetime=-60))
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=TestCA().bundle_pem, token=token)
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "state"))
    result = _run(config)
    assert result.returncode == 79, result.stderr
    assert "istioctl x workload entry configure" in result.stderr
    assert str(istio_dir / "istio-token") in result.stderr
    assert token not in result.stderr
    assert not (tmp_path / "state" / "credentials" / "current").exists()


def test_failure_after_the_sds_server_started_exits_cleanly() -> None:
    """With the sidecar on, the SDS server is up before the first certificate;
    an exit on the way (here 79, expired token) stops it on a live loop: no
    grpcio traceback at exit (seen on the booted VM)."""
    from tests.istio.binaries import envoy_binary

    base = Path(tempfile.mkdtemp(prefix="mesh-istio-run-"))
    try:
        base.chmod(0o755)  # Envoy's user must traverse to the state dir
        istio_dir = write_vm_files(base / "istio", root_pem=TestCA().bundle_pem,
                                   token=unsigned_jwt(token_claims(lifetime=-60)))
        config = base / "agent.yaml"
        config.write_text(agent_yaml(istio_dir, base / "state", extra=(
            f"sidecar:\n  enabled: true\n  envoy_path: {envoy_binary()}\n"
            "  proxy_uid: 1337\n  proxy_gid: 1337\n")))
        result = _run(config)
        assert result.returncode == 79, result.stderr
        assert "sds server listening" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "never awaited" not in result.stderr, \
            result.stderr
        assert not (base / "state" / "envoy" / "sds.sock").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_wrong_root_cert_exits_78(tmp_path: Path, foreign_tls_server: int) -> None:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=TestCA().bundle_pem,
                               istiod_ip="127.0.0.1",
                               discovery=f"{ISTIOD_HOST}:{foreign_tls_server}")
    config = tmp_path / "agent.yaml"
    config.write_text(agent_yaml(istio_dir, tmp_path / "state"))
    result = _run(config)
    assert result.returncode == 78, result.stderr
    assert "istiod_untrusted" in result.stderr and "root-cert.pem" in result.stderr


def test_capture_follows_cluster_env(tmp_path: Path) -> None:
    vm = load_vm(write_vm_files(tmp_path, root_pem=TestCA().bundle_pem, env_extra={
        "ISTIO_INBOUND_PORTS": "8080,9090", "ISTIO_SERVICE_CIDR": "10.96.0.0/12",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020,2222",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "5432"}))
    base = CaptureConfig(enabled=True, exclude_outbound_cidrs=("192.0.2.0/24",))
    out = capture_from_cluster_env(base, vm)
    assert out.inbound_ports == (8080, 9090)
    assert 2222 in out.exclude_inbound_ports and 22 in out.exclude_inbound_ports
    assert out.include_outbound_cidrs == ("10.96.0.0/12",)
    # istiod is exempted as the control plane, not here (test_istio_plan.py).
    assert out.exclude_outbound_cidrs == ("192.0.2.0/24",)
    assert out.exclude_outbound_ports == (5432,)
    # An IPv4 node: istiod gives its Envoy IPv4 listeners only (found on the VM).
    assert out.ipv6 is False
    star = capture_from_cluster_env(base, load_vm(write_vm_files(
        tmp_path / "b", root_pem=TestCA().bundle_pem)))
    assert star.inbound_ports is None and star.include_outbound_cidrs is None
    assert star.exclude_outbound_cidrs == base.exclude_outbound_cidrs
    six = capture_from_cluster_env(base, load_vm(write_vm_files(
        tmp_path / "c", root_pem=TestCA().bundle_pem, env_extra={"ISTIO_SVC_IP": "fd00::20"})))
    assert six.ipv6 is True
