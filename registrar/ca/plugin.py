"""Importing an Istio plug-in CA (``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``,
``cert-chain.pem``) for ``mesh-registrar init --import-ca``.

Every CA certificate in it is checked against what strict X.509 verifiers refuse
(Python 3.13's default context, ``openssl verify -x509_strict``). A CA that fails
is refused with each problem named: agents on such systems could never verify
the registrar or their own chains, and the fault would only surface on the VMs.
``allow_nonstrict`` imports it anyway for fleets whose verifiers are all lenient,
and the problems come back as warnings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from registrar.ca.authority import SigningKey, load_pem_certs, load_signing_key
from registrar.ca.keyids import authority_key_id, strict_problems

ISTIO_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


class ImportRefused(Exception):
    """The plug-in CA cannot be imported; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class PluginCa:
    cert: x509.Certificate
    key: SigningKey
    roots: list[x509.Certificate]
    chain: list[x509.Certificate]
    warnings: tuple[str, ...]


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _problems(ca_cert: x509.Certificate, roots: list[x509.Certificate],
              chain: list[x509.Certificate]) -> list[str]:
    root_fps = {_fingerprint(r) for r in roots}
    named: list[tuple[str, x509.Certificate, bool]] = [
        (f"root-cert.pem #{i + 1}", r, True) for i, r in enumerate(roots)]
    named.append(("ca-cert.pem", ca_cert, _fingerprint(ca_cert) in root_fps))
    seen = {_fingerprint(c) for _, c, _ in named}
    for i, cert in enumerate(chain):
        if _fingerprint(cert) not in seen:
            seen.add(_fingerprint(cert))
            named.append((f"cert-chain.pem #{i + 1}", cert, False))
    return [f"{label} ({cert.subject.rfc4514_string() or 'empty subject'}) {problem}"
            for label, cert, anchor in named for problem in strict_problems(cert, anchor=anchor)]


def load_plugin_ca(import_dir: Path, *, allow_nonstrict: bool = False) -> PluginCa:
    missing = [n for n in ISTIO_FILES if not (import_dir / n).is_file()]
    if missing:
        raise ImportRefused(f"{import_dir}: missing {', '.join(missing)} "
                            f"(Istio plug-in layout: {', '.join(ISTIO_FILES)})")
    try:
        ca_cert = load_pem_certs(import_dir / "ca-cert.pem")[0]
        ca_key = load_signing_key(import_dir / "ca-key.pem")
        roots = load_pem_certs(import_dir / "root-cert.pem")
        chain = load_pem_certs(import_dir / "cert-chain.pem")
    except (ValueError, IndexError) as exc:
        raise ImportRefused(f"{import_dir}: cannot load the CA files: {exc}") from None
    if ca_cert.public_key() != ca_key.public_key():
        raise ImportRefused(f"{import_dir}: ca-key.pem does not match ca-cert.pem")
    problems = _problems(ca_cert, roots, chain)
    if problems and not allow_nonstrict:
        raise ImportRefused(
            f"{import_dir}: this CA would fail strict X.509 verification (Python 3.13, "
            "OpenSSL -x509_strict), so agents on such systems could not trust it:\n  "
            + "\n  ".join(problems)
            + "\nReissue the CA certificates with these fixed, or pass --allow-nonstrict-ca "
            "if every agent and peer verifies leniently.")
    warnings = [f"strict X.509 verifiers will refuse this CA: {p}" for p in problems]
    if authority_key_id(ca_cert).derived:
        warnings.append("ca-cert.pem has no Subject Key Identifier: the Authority Key "
                        "Identifier of the certificates it signs is derived from its public "
                        "key (RFC 5280 section 4.2.1.2, method 1)")
    return PluginCa(cert=ca_cert, key=ca_key, roots=roots, chain=chain,
                    warnings=tuple(warnings))
