"""The registrar's own HTTPS certificate, reissued from a CA directory.

Used by ``ca rotate activate`` / ``--intermediate-only`` (the server certificate
follows the signing CA) and by ``mesh-registrar server-cert reissue`` (a state
made before strict X.509, whose server certificate lacks the Authority Key
Identifier Python 3.13 requires). The names are kept from the current
certificate unless new ones are given. A running registrar picks the new pair
up on its own (registrar/ca/live.py); the key is written first and the
certificate last, and a reader that meets a mismatched pair keeps the old one.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshcore.durable import write_atomic
from registrar.ca.authority import load_pem_certs, load_signing_key, pem
from registrar.ca.bootstrap import key_pem, new_key, server_certificate
from registrar.config import RegistrarConfig


def server_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate is for, in order."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for general in sans:
        if isinstance(general, x509.DNSName):
            names.append(general.value)
        elif isinstance(general, x509.IPAddress) and isinstance(
                general.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            names.append(str(general.value))
    return names


def reissue_server_certificate(config: RegistrarConfig, ca_dir: Path | None = None,
                               names: list[str] | None = None) -> x509.Certificate:
    """A new key and certificate (with both key identifiers) from the CA in ``ca_dir``
    (Istio layout), or from the configured signing CA when None."""
    cert_file = ca_dir / "ca-cert.pem" if ca_dir else config.ca.cert
    key_file = ca_dir / "ca-key.pem" if ca_dir else config.ca.key
    chain_file = ca_dir / "cert-chain.pem" if ca_dir else config.ca.chain
    roots_file = ca_dir / "root-cert.pem" if ca_dir else config.ca.roots
    issuer = load_pem_certs(cert_file)[0]
    issuer_key = load_signing_key(key_file)
    if not names:
        names = server_names(load_pem_certs(config.tls_cert)[0]) or ["localhost", "127.0.0.1"]
    root_fps = {r.fingerprint(hashes.SHA256()) for r in load_pem_certs(roots_file)}
    intermediates = [c for c in load_pem_certs(chain_file)
                     if c.issuer != c.subject and c.fingerprint(hashes.SHA256()) not in root_fps]
    if issuer.issuer != issuer.subject and issuer not in intermediates:
        intermediates.insert(0, issuer)
    key = new_key()
    server = server_certificate(names, key, issuer, issuer_key)
    write_atomic(config.tls_key, key_pem(key), mode=0o600)
    write_atomic(config.tls_cert, pem([server, *intermediates]).encode(), mode=0o644)
    return server
