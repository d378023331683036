"""Strict X.509 (Python 3.13's default, Debian 13): every certificate the registrar
makes or issues passes ``openssl verify -x509_strict``, with its own CA and with
an imported Istio plug-in CA, and strict TLS clients (the agent's, and the
fixture's readiness probe) connect. A plug-in CA that strict verifiers would
refuse is refused at ``init``, with each problem named."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.registrar_client import RegistrarClient, RegistrarError
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key
from tests.registrar.test_cli import cli
from tests.registrar.test_renew import enrol, mtls

TD = "example.org"


def openssl_verify(cert: Path, root: Path, *, untrusted: Path | None = None,
                   purpose: str | None = None) -> None:
    args = ["openssl", "verify", "-x509_strict", "-CAfile", str(root)]
    if untrusted is not None:
        args += ["-untrusted", str(untrusted)]
    if purpose is not None:
        args += ["-purpose", purpose]
    out = subprocess.run([*args, str(cert)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out.stdout + out.stderr


def split(chain: Path, where: Path) -> list[Path]:
    """Each certificate of ``chain`` in its own file: leaf.pem, 1.pem, ..."""
    paths = []
    for i, cert in enumerate(x509.load_pem_x509_certificates(chain.read_bytes())):
        path = where / ("leaf.pem" if i == 0 else f"{i}.pem")
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
    return paths


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier).value.key_identifier


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def verify_everything(reg: RegistrarProcess, tmp_path: Path) -> dict[str, x509.Certificate]:
    """openssl -x509_strict over the root, intermediate, server cert and issued leaves
    (from attest and from renew); returns them by name."""
    state = reg.state_dir
    root, ca = state / "root-cert.pem", state / "ca-cert.pem"
    openssl_verify(root, root)
    openssl_verify(ca, root)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server_leaf, *_ = split(state / "server-cert.pem", server_dir)
    openssl_verify(server_leaf, root, untrusted=ca, purpose="sslserver")
    attested = enrol(reg, tmp_path / "attested")
    new_key = ec_key()
    with mtls(reg, *attested) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(new_key)})
    assert status == 200, body
    (tmp_path / "renewed.pem").write_text(body["cert_chain"])
    leaves = {}
    for name, chain in (("attested", attested[0]), ("renewed", tmp_path / "renewed.pem")):
        where = tmp_path / f"{name}-split"
        where.mkdir()
        leaf, *intermediates = split(chain, where)
        assert [load(p) for p in intermediates] == [load(ca)]
        openssl_verify(leaf, root, untrusted=ca, purpose="sslclient")
        openssl_verify(leaf, root, untrusted=ca, purpose="sslserver")
        leaves[name] = load(leaf)
    return {"root": load(root), "ca": load(ca), "server": load(server_leaf), **leaves}


def test_own_ca_every_certificate_is_strict_and_spiffe_shaped(
        registrar: RegistrarProcess, tmp_path: Path) -> None:
    certs = verify_everything(registrar, tmp_path)
    root, ca = certs["root"], certs["ca"]
    for name in ("root", "ca"):
        cert = certs[name]
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical
        assert (usage.value.key_cert_sign, usage.value.crl_sign,
                usage.value.digital_signature) == (True, True, False), name
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    # Every certificate names its issuer by the issuer's own SKI.
    assert aki(root) == ski(root)
    for name in ("ca",):
        assert aki(certs[name]) == ski(root)
    for name in ("server", "attested", "renewed"):
        cert = certs[name]
        assert aki(cert) == ski(ca), name
        assert ski(cert) == x509.SubjectKeyIdentifier.from_public_key(
            cert.public_key()).digest, name


def _ca(name: str, key: ec.EllipticCurvePrivateKey, *, issuer: x509.Certificate | None = None,
        issuer_key: ec.EllipticCurvePrivateKey | None = None,
        with_ski: bool = True) -> x509.Certificate:
    """A plug-in-CA certificate as another tool might make it: its SKI is not RFC 5280
    method 1 (SHA-256, truncated), so only copying it gives a matching AKI."""
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    own_ski = x509.SubjectKeyIdentifier(hashlib.sha256(der).digest()[:20])
    signer_ski = own_ski if issuer is None else issuer.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                   signer_ski), critical=False))
    if with_ski:
        builder = builder.add_extension(own_ski, critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def plugin_ca(where: Path, *, intermediate_ski: bool = True) -> x509.Certificate:
    root_key, ca_key = ec_key(), ec_key()
    root = _ca("root", root_key)
    ca = _ca("intermediate", ca_key, issuer=root, issuer_key=root_key,
             with_ski=intermediate_ski)
    where.mkdir()
    pem = serialization.Encoding.PEM
    (where / "root-cert.pem").write_bytes(root.public_bytes(pem))
    (where / "ca-cert.pem").write_bytes(ca.public_bytes(pem))
    (where / "cert-chain.pem").write_bytes(ca.public_bytes(pem) + root.public_bytes(pem))
    (where / "ca-key.pem").write_bytes(ca_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca


def test_imported_ca_every_certificate_is_strict(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    ca = plugin_ca(tmp_path / "cacerts")
    reg = registrar_factory(trust_domain=TD, groups={"web": ("default", "web-vm", 600)},
                            import_ca=tmp_path / "cacerts")  # readiness: a strict client
    certs = verify_everything(reg, tmp_path)
    assert certs["ca"] == ca
    for name in ("server", "attested", "renewed"):
        assert aki(certs[name]) == ski(ca), name  # the plug-in's own SKI, copied


def test_the_agents_client_verifies_strictly(
        registrar: RegistrarProcess, registrar_factory: Callable[..., RegistrarProcess],
        tmp_path: Path) -> None:
    """The agent's own TLS context is strict on every Python: it talks to our registrar,
    and refuses one whose CA Python 3.13 would refuse (here imported with
    --allow-nonstrict-ca) with the same error Debian 13 gives."""
    good = RegistrarClient(registrar.url, registrar.ca_file, timeout=10)
    assert asyncio.run(good.bundle()) == registrar.ca_file.read_bytes()
    plugin_ca(tmp_path / "cacerts", intermediate_ski=False)
    lenient = registrar_factory(trust_domain=TD, import_ca=tmp_path / "cacerts",
                                init_args=["--allow-nonstrict-ca"], strict=False)
    client = RegistrarClient(lenient.url, lenient.ca_file, timeout=10)
    with pytest.raises(RegistrarError) as refused:
        asyncio.run(client.bundle())
    assert refused.value.reason == "registrar_untrusted"
    assert "Missing Subject Key Identifier" in refused.value.message
    assert ("will refuse this registrar: signing CA certificate has no Subject Key "
            "Identifier") in lenient.log_text()
    assert "strict X.509" not in registrar.log_text()


def test_a_server_certificate_from_an_older_init_is_named_at_start(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    """The failure Debian 13 reported (``Missing Authority Key Identifier``): the
    registrar warns at start-up, and the agent's client refuses it on Python 3.11 too."""
    reg = registrar_factory(start=False, strict=False)
    state = reg.state_dir
    server, *chain = x509.load_pem_x509_certificates((state / "server-cert.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((state / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    old = x509.CertificateBuilder(
        issuer_name=server.issuer, subject_name=server.subject,
        public_key=server.public_key(), serial_number=x509.random_serial_number(),
        not_valid_before=server.not_valid_before_utc, not_valid_after=server.not_valid_after_utc,
        extensions=[e for e in server.extensions
                    if not isinstance(e.value, x509.AuthorityKeyIdentifier)],
    ).sign(ca_key, hashes.SHA256())
    (state / "server-cert.pem").write_bytes(b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (old, *chain)))
    reg.start()
    assert ("will refuse this registrar: server certificate has no Authority Key "
            "Identifier") in reg.log_text()
    client = RegistrarClient(reg.url, reg.ca_file, timeout=10)
    with pytest.raises(RegistrarError) as refused:
        asyncio.run(client.bundle())
    assert refused.value.reason == "registrar_untrusted"
    assert "Missing Authority Key Identifier" in refused.value.message

    # The fix without the openssl workaround: reissue only the server certificate;
    # the running registrar serves it from its next handshake; strict clients accept it.
    out = reg.cli("server-cert", "reissue")
    assert "server certificate reissued for 127.0.0.1, localhost" in out.stdout, out
    reissued = x509.load_pem_x509_certificates((state / "server-cert.pem").read_bytes())
    assert reissued[0].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert (state / "server-key.pem").stat().st_mode & 0o777 == 0o600
    deadline = time.monotonic() + 10
    while True:
        try:
            assert asyncio.run(client.bundle()) == reg.ca_file.read_bytes()
            break
        except RegistrarError:
            assert time.monotonic() < deadline, reg.log_text()[-2000:]
            time.sleep(0.2)
    assert reg.running()  # no restart


def test_import_refuses_a_ca_strict_verifiers_would_refuse(tmp_path: Path) -> None:
    ca = plugin_ca(tmp_path / "cacerts", intermediate_ski=False)
    state = tmp_path / "state"
    out = cli("init", "--state-dir", str(state), "--trust-domain", TD,
              "--import-ca", str(tmp_path / "cacerts"))
    assert out.returncode == 65, out.stderr
    assert "ca-cert.pem" in out.stderr and "no Subject Key Identifier" in out.stderr
    assert "--allow-nonstrict-ca" in out.stderr
    assert not (state / "ca-key.pem").exists() and not (state / "server-cert.pem").exists()

    out = cli("init", "--state-dir", str(state), "--trust-domain", TD,
              "--import-ca", str(tmp_path / "cacerts"), "--allow-nonstrict-ca")
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr and "method 1" in out.stderr
    server = load(state / "server-cert.pem")
    method1 = x509.AuthorityKeyIdentifier.from_issuer_public_key(
        ca.public_key()).key_identifier
    assert aki(server) == method1
