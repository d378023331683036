"""``mesh-registrar`` init / config / token / workloads, as an operator runs them."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tests.fixtures.registrar import REPO, RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key
from tests.registrar.test_attest import verify_chain


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registrar", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    state = tmp_path / "s"
    out = cli("init", "--state-dir", str(state), "--trust-domain", "corp.example")
    assert out.returncode == 0, out.stderr
    assert str(state / "root-cert.pem") in out.stdout
    for name in ("ca-key.pem", "root-key.pem", "server-key.pem"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    before = (state / "ca-key.pem").read_bytes()
    again = cli("init", "--state-dir", str(state), "--trust-domain", "corp.example")
    assert again.returncode == 65 and "refusing to overwrite" in again.stderr
    assert (state / "ca-key.pem").read_bytes() == before
    server = x509.load_pem_x509_certificates((state / "server-cert.pem").read_bytes())
    sans = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_imported_istio_ca_signs_workloads_under_the_mesh_root(tmp_path: Path) -> None:
    """An Istio plug-in CA (here: made by one init) is imported by another; leaves chain to
    the original root, as the Kubernetes side's do."""
    mesh = tmp_path / "mesh"
    assert cli("init", "--state-dir", str(mesh), "--trust-domain", "cluster.local").returncode == 0
    plugin = tmp_path / "cacerts"
    plugin.mkdir()
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (plugin / name).write_bytes((mesh / name).read_bytes())
    reg = RegistrarProcess(tmp_path / "imported", trust_domain="cluster.local",
                           groups={"vm": ("apps", "vm", 600)}, import_ca=plugin)
    reg.base_dir.mkdir()
    try:
        reg.start()
        assert not (reg.state_dir / "root-key.pem").exists()
        assert reg.ca_file.read_bytes() == (mesh / "root-cert.pem").read_bytes()
        with calls.client(reg) as c:
            status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
                reg.create_token("vm"), csr_pem(ec_key())))
        assert status == 200
        verify_chain(body["cert_chain"], (mesh / "root-cert.pem").read_text())
        assert body["spiffe_id"] == "spiffe://cluster.local/ns/apps/sa/vm"
    finally:
        reg.kill()


def test_import_with_missing_files_names_them(tmp_path: Path) -> None:
    (tmp_path / "cacerts").mkdir()
    out = cli("init", "--state-dir", str(tmp_path / "s"), "--trust-domain", "x.example",
              "--import-ca", str(tmp_path / "cacerts"))
    assert out.returncode == 65 and "ca-key.pem" in out.stderr and "cert-chain.pem" in out.stderr


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("trust_domain: Bad_Domain\n", "trust_domain", "lowercase"),
    ("listen: nowhere\n", "listen", "IP address and port"),
    ("groups: [{name: web, namespace: default, service_account: sa, cert_ttl: 0s}]\n",
     "groups[0].cert_ttl", "between 1s"),
    ("groups: [{name: web, namespace: default, service_account: sa, cert_ttl: 59s}]\n",
     "groups[0].cert_ttl", "at least 6 x cert_backdate = 60s"),
    ("cert_backdate: 1m\ngroups: [{name: web, namespace: default, service_account: sa,"
     " cert_ttl: 5m}]\n", "groups[0].cert_ttl", "at least 6 x cert_backdate = 360s"),
    ("cert_backdate: 2h\n", "cert_backdate", "between 0s and 3600s"),
    ("groups: [{name: web, namespace: default}]\n", "groups[0].service_account", "string"),
    ("limits: {max_body_bytes: 10}\n", "limits.max_body_bytes", "1024.."),
    ("evidence: {tpm: {}}\n", "evidence.tpm", "join_token"),
    ("listn: 127.0.0.1:1\n", "listn", "listen"),
])
def test_bad_config_exits_78_naming_file_key_and_allowed(
        tmp_path: Path, text: str, key: str, allowed: str) -> None:
    state = tmp_path / "s"
    assert cli("init", "--state-dir", str(state), "--trust-domain", "x.example").returncode == 0
    config = state / "registrar.yaml"
    # A drop-in overrides the starter config (a key written twice in one file is an
    # error of its own), and the error must name the drop-in that set the key.
    dropin = state / "registrar.d" / "90-test.yaml"
    dropin.parent.mkdir()
    dropin.write_text(text)
    for command in (["serve"], ["token", "list"]):
        out = cli(*command, "--config", str(config))
        assert out.returncode == 78, out.stderr
        assert str(dropin) in out.stderr and key in out.stderr and allowed in out.stderr


def test_token_create_for_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / "s"
    cli("init", "--state-dir", str(state), "--trust-domain", "x.example")
    out = cli("token", "create", "--config", str(state / "registrar.yaml"), "--group", "nope")
    assert out.returncode == 78 and "example" in out.stderr
