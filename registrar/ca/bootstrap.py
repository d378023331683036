"""``mesh-registrar init``: a fresh root + intermediate, or an imported Istio plug-in CA,
a server TLS certificate chaining to the same root, and a starter config.

State directory layout (Istio's plug-in names, so an imported CA looks the same):

    root-cert.pem     the trust bundle; copy it to agents as registrar-ca.pem
    ca-cert.pem       signing intermediate        ca-key.pem   its key (0600)
    cert-chain.pem    intermediate + root (Istio's convention)
    root-key.pem      only for a generated root (0600); move it offline
    server-cert.pem   the registrar's TLS cert + intermediate;  server-key.pem (0600)
    registrar.yaml    starter config;  registrar.db  the inventory (created by serve)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.durable import write_atomic
from registrar.ca.authority import SigningKey, pem, utcnow
from registrar.ca.keyids import authority_key_id
from registrar.ca.plugin import ImportRefused, load_plugin_ca

ROOT_TTL = dt.timedelta(days=3650)
INTERMEDIATE_TTL = dt.timedelta(days=1825)
SERVER_TTL = dt.timedelta(days=365)


class InitError(Exception):
    """``init`` cannot proceed; the message says what to do."""


@dataclass(frozen=True)
class InitResult:
    state_dir: Path
    config_path: Path
    trust_anchor: Path
    imported: bool
    warnings: tuple[str, ...] = ()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ca_certificate(subject: str, *, key: ec.EllipticCurvePrivateKey,
                   issuer: x509.Certificate | None, issuer_key: SigningKey,
                   ttl: dt.timedelta, path_length: int | None,
                   trust_domain: str) -> x509.Certificate:
    """A CA certificate as the SPIFFE X.509-SVID spec wants it: keyCertSign and cRLSign
    only (digitalSignature is for leaves), the trust domain's URI SAN, and both key
    identifiers (strict verifiers refuse a CA without them)."""
    now = utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = (authority_key_id(issuer).extension if issuer else
           x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def server_certificate(names: list[str], key: ec.EllipticCurvePrivateKey,
                       issuer: x509.Certificate, issuer_key: SigningKey) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_TTL, issuer.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(authority_key_id(issuer).extension, critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def starter_config(state_dir: Path, trust_domain: str) -> str:
    return f"""\
# mesh-registrar configuration (written by `mesh-registrar init`).
# Agents trust {state_dir / "root-cert.pem"} (copy it to /etc/mesh-agent/registrar-ca.pem).
trust_domain: {trust_domain}
listen: 127.0.0.1:8443
state_dir: {state_dir}
workers: 1
challenge_ttl: 5m
log_level: info
limits:
  max_body_bytes: 65536
  max_header_bytes: 8190
  rate:
    attest: {{per_second: 1000, burst: 2000}}
    renew: {{per_second: 1000, burst: 2000}}
evidence:
  join_token: {{}}
groups:
  - name: example
    namespace: default
    service_account: example-vm
    cert_ttl: 24h
    labels: {{app: example}}
"""


def init_state(state_dir: Path, trust_domain: str, server_names: list[str],
               import_dir: Path | None = None, *, allow_nonstrict: bool = False) -> InitResult:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = [n for n in ("ca-cert.pem", "ca-key.pem") if (state_dir / n).exists()]
    if existing:
        raise InitError(f"{state_dir}: a CA already exists ({', '.join(existing)}); "
                        "refusing to overwrite it. Use a new --state-dir.")
    warnings: tuple[str, ...] = ()
    if import_dir is not None:
        try:
            plugin = load_plugin_ca(import_dir, allow_nonstrict=allow_nonstrict)
        except ImportRefused as exc:
            raise InitError(str(exc)) from None
        ca_cert, ca_key, roots, chain = plugin.cert, plugin.key, plugin.roots, plugin.chain
        warnings = plugin.warnings
        signing_pem = key_pem(ca_key)
    else:
        root_key = new_key()
        root = ca_certificate(f"{trust_domain} mesh root", key=root_key, issuer=None,
                        issuer_key=root_key, ttl=ROOT_TTL, path_length=1,
                        trust_domain=trust_domain)
        ca_key = new_key()
        ca_cert = ca_certificate(f"{trust_domain} registrar intermediate", key=ca_key, issuer=root,
                           issuer_key=root_key, ttl=INTERMEDIATE_TTL, path_length=0,
                           trust_domain=trust_domain)
        roots, chain = [root], [ca_cert, root]
        signing_pem = key_pem(ca_key)
        write_atomic(state_dir / "root-key.pem", key_pem(root_key), mode=0o600)
    # Keys first: a crash part-way leaves a key without a cert, which init refuses
    # to overwrite, rather than a cert nobody can sign with.
    write_atomic(state_dir / "ca-key.pem", signing_pem, mode=0o600)
    write_atomic(state_dir / "root-cert.pem", pem(roots).encode(), mode=0o644)
    write_atomic(state_dir / "cert-chain.pem", pem(chain).encode(), mode=0o644)
    server_key = new_key()
    server = server_certificate(server_names, server_key, ca_cert, ca_key)
    intermediates = [c for c in chain if c.issuer != c.subject and c not in roots]
    if ca_cert not in intermediates and ca_cert.issuer != ca_cert.subject:
        intermediates.insert(0, ca_cert)
    write_atomic(state_dir / "server-key.pem", key_pem(server_key), mode=0o600)
    write_atomic(state_dir / "server-cert.pem", pem([server, *intermediates]).encode(),
                 mode=0o644)
    write_atomic(state_dir / "ca-cert.pem", pem([ca_cert]).encode(), mode=0o644)
    config_path = state_dir / "registrar.yaml"
    if not config_path.exists():
        write_atomic(config_path, starter_config(state_dir, trust_domain).encode(), mode=0o640)
    return InitResult(state_dir=state_dir, config_path=config_path,
                      trust_anchor=state_dir / "root-cert.pem", imported=import_dir is not None,
                      warnings=warnings)


