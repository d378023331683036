"""Writes the starting seeds of every target: ``python -m tests.fuzz.make_seeds``.

Valid inputs first (mutation finds most from there), then the usual damaged
shapes. Crashers found by fuzzing are added to ``seeds/TARGET/`` by hand, named
``crash-WHAT``, and are never regenerated here. The registrar's evidence is
signed with the committed test PKI (``tests/fuzz/pki``, made on first run) at
the target's fixed time (``registrar_request.now``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.capture.record import CaptureRecord, encode
from agent.identity.keys import PrivateKey, build_csr, generate_key, key_pem
from tests.fakes.cloud_pki import CloudPki, _name, issue, new_key
from tests.fuzz import agent_state, registrar_request
from tests.fuzz.agent_config import SPLIT

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
NONCE = "n" * 43


def _write(target: str, name: str, data: bytes) -> None:
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def _registrar(pki: CloudPki) -> None:
    now = registrar_request.now(pki)
    csr = build_csr(generate_key("ecdsa-p256"), "vm-1").decode()
    rsa_csr = build_csr(generate_key("rsa-2048"), "vm-2").decode()
    host = {"hostname": "vm-1", "addresses": ["10.0.0.12", "fd00::12"]}
    doc = pki.aws_document(pending=now - 300)
    bodies: dict[str, object] = {
        "attest-join-token": {"evidence": {"type": "join_token", "token": "x" * 43},
                              "csr": csr, **host},
        "attest-aws": {"evidence": {"type": "aws",
                                    "document": base64.b64encode(doc).decode(),
                                    "pkcs7": pki.aws_pkcs7(doc)}, "csr": csr, **host},
        "attest-azure": {"evidence": {"type": "azure", "document": pki.azure_signature(
            pki.azure_content(NONCE, now=now))}, "challenge": NONCE, "csr": rsa_csr},
        "attest-gce": {"evidence": {"type": "gce", "token": pki.gce_token(NONCE, now=now)},
                       "challenge": NONCE, "csr": csr},
        "renew": {"csr": csr, **host},
        "renew-bare": {"csr": rsa_csr},
        "unknown-field": {"csr": csr, "evidence": {"type": "tpm"}, "extra": [1, {"a": None}]},
        "deep": {"a": [[[[[[[[[[{}]]]]]]]]]]},
    }
    for name, body in bodies.items():
        _write("registrar_request", name, json.dumps(body, indent=1).encode())
    _write("registrar_request", "surrogate", b'{"csr": "\\ud800", "evidence": {"type": "aws"}}')
    _write("registrar_request", "not-an-object", b"[1, 2.5e400, \"x\"]")


def _configs() -> None:
    docs = HERE.parent.parent / "docs"
    n = 0
    for page in sorted(docs.glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S):
            n += 1
            _write("agent_config", f"doc-{page.stem}-{n:02d}.yaml", block.encode())
    main = (b"registrar:\n  url: https://registrar.example:8443\n"
            b"  ca_file: /etc/mesh-agent/registrar-ca.pem\n")
    _write("agent_config", "minimal.yaml", main)
    _write("agent_config", "with-dropin.yaml", main + SPLIT + (
        b"capture:\n  enabled: true\n  outbound_port: 15001\nsidecar:\n  enabled: true\n"
        b"rotation: {renew_at: 0.6, min_backoff: 2s, max_backoff: 1m}\n"))
    _write("agent_config", "refused.yaml", b"a: &x [1]\nb: *x\nb: 2\n")


def _leaf_for(key: PrivateKey, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey
              ) -> x509.Certificate:
    """A workload leaf for ``key`` (``issue`` certifies the key that signs)."""
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name("vm-1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                "spiffe://mesh.example/ns/prod/sa/web")]), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _state() -> None:
    key = generate_key("ecdsa-p256")
    ca_key = new_key()
    ca = issue(_name("mesh CA"), ca_key, ca=True)
    other = ec.generate_private_key(ec.SECP256R1())
    leaf = issue(_name("vm-1"), ca_key, issuer=ca.subject, dns="vm-1")
    good = _leaf_for(key, ca, ca_key)
    pem = serialization.Encoding.PEM
    state = json.dumps({"schema": 2, "spiffe_id": "spiffe://mesh.example/ns/prod/sa/web",
                        "rotations": 3, "renew_after": "2026-12-01T10:00:00+00:00",
                        "mesh": {"trust_domain": "mesh.example"}}).encode()
    generation = {"current": b"g00000001", "key.pem": key_pem(key),
                  "cert-chain.pem": good.public_bytes(pem) + ca.public_bytes(pem),
                  "bundle.pem": ca.public_bytes(pem)}
    cases: dict[str, dict[str, bytes]] = {
        "good": {"state.json": state, **generation},
        "v1-state": {"state.json": b'{"schema": 1, "renew_at": null, "spiffe_id": "x"}',
                     **generation},
        "wrong-key": {**generation, "key.pem": key_pem(other)},
        "foreign-leaf": {**generation, "cert-chain.pem": leaf.public_bytes(pem)},
        "empty-bundle": {**generation, "bundle.pem": b""},
        "link-outside": {**generation, "current": b"../../etc"},
        "bad-state": {"state.json": b'{"schema": 2, "rotations": true}', **generation},
        "nothing": {},
    }
    for name, parts in cases.items():
        _write("agent_state", name, agent_state.join(parts))


def _records() -> None:
    applied = CaptureRecord(backend="nftables", backend_source="detected", phase="applied",
                            families=(4, 6), created_tables=("inet mesh_agent",),
                            applied={"nat": ("add rule inet mesh_agent out tcp dport 80",)},
                            plan_digest="ab12", owner="mesh-agent daemon pid 1",
                            updated_at="2026-12-01T10:00:00Z")
    _write("capture_record", "applied.json", encode(applied))
    _write("capture_record", "removing.json", encode(applied.with_phase("removing")))
    _write("capture_record", "iptables.json", encode(CaptureRecord("iptables", "configured")))
    _write("capture_record", "newer.json", b'{"schema": 7}')


def main() -> None:
    pki_dir = registrar_request.PKI
    pki = CloudPki.load(pki_dir) if pki_dir.is_dir() else CloudPki.create(pki_dir)
    _registrar(pki)
    _configs()
    _state()
    _records()


if __name__ == "__main__":
    main()
