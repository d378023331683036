"""Test keys and certificates standing in for Google's, AWS's and Azure's.

Laid out on disk the way the registrar consumes the real ones, so it is
configured to trust them exactly as it trusts production keys:

    <dir>/gce/key.pem, <dir>/gce/jwks.json     JWT signing key + the JWKS a fake serves
    <dir>/aws/<partition>/<region>.pem          pinned regional certs (cert_dir override)
    <dir>/aws/keys/<region>.pem                 their private keys (fake EC2 only)
    <dir>/azure/root.pem, intermediate.pem      pinned root, configured intermediate
    <dir>/azure/signer.pem, signer-key.pem      "metadata.azure.com" leaf + key

Signing helpers build the same artefacts the real services return.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GCE_KID = "fake-google-kid-1"
AWS_REGIONS = {"us-east-1": "aws", "eu-west-1": "aws", "cn-north-1": "aws-cn"}
AWS_SUBJECT = x509.Name([
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington State"),
    x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services LLC (TEST)"),
])


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(subject: x509.Name, key: rsa.RSAPrivateKey, *, issuer: x509.Name | None = None,
          issuer_key: rsa.RSAPrivateKey | None = None, ca: bool = False,
          dns: str | None = None, serial: int | None = None,
          days: int = 3650) -> x509.Certificate:
    """An RFC 5280-clean certificate (cryptography's verifier is strict)."""
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer or subject).public_key(key.public_key())
               .serial_number(serial or x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   (issuer_key or key).public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def sign_pkcs7(content: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey, *,
               embed: bool) -> bytes:
    """DER SignedData over ``content`` (embedded, Binary: no MIME line-ending rewrite)."""
    options = [pkcs7.PKCS7Options.Binary]
    if not embed:
        options.append(pkcs7.PKCS7Options.NoCerts)
    return (pkcs7.PKCS7SignatureBuilder().set_data(content)
            .add_signer(cert, key, hashes.SHA256()).sign(serialization.Encoding.DER, options))


@dataclass
class CloudPki:
    root: Path
    gce_key: rsa.RSAPrivateKey
    aws_certs: dict[str, x509.Certificate]
    aws_keys: dict[str, rsa.RSAPrivateKey]
    azure_root: x509.Certificate
    azure_intermediate: x509.Certificate
    azure_signer: x509.Certificate
    azure_key: rsa.RSAPrivateKey

    # -- on disk ---------------------------------------------------------------
    @classmethod
    def create(cls, root: Path) -> CloudPki:
        gce_key = new_key()
        aws_keys = {region: new_key() for region in AWS_REGIONS}
        aws_certs = {region: issue(AWS_SUBJECT, key, days=36500)
                     for region, key in aws_keys.items()}
        root_key, mid_key, leaf_key = new_key(), new_key(), new_key()
        azure_root = issue(_name("Fake Azure Root G2"), root_key, ca=True)
        azure_mid = issue(_name("Fake Azure TLS Issuing CA"), mid_key,
                          issuer=azure_root.subject, issuer_key=root_key, ca=True)
        azure_leaf = issue(_name("metadata.azure.com"), leaf_key, issuer=azure_mid.subject,
                           issuer_key=mid_key, dns="metadata.azure.com", days=365)
        pki = cls(root, gce_key, aws_certs, aws_keys, azure_root, azure_mid, azure_leaf,
                  leaf_key)
        pki._write()
        return pki

    def _write(self) -> None:
        for sub in ("gce", "aws/keys", "azure"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "gce/key.pem").write_bytes(_pem_key(self.gce_key))
        (self.root / "gce/jwks.json").write_text(json.dumps(self.jwks()))
        for region, cert in self.aws_certs.items():
            part = self.root / "aws" / AWS_REGIONS[region]
            part.mkdir(exist_ok=True)
            (part / f"{region}.pem").write_bytes(_pem(cert))
            (self.root / "aws/keys" / f"{region}.pem").write_bytes(_pem_key(self.aws_keys[region]))
        (self.root / "azure/root.pem").write_bytes(_pem(self.azure_root))
        (self.root / "azure/intermediate.pem").write_bytes(_pem(self.azure_intermediate))
        (self.root / "azure/signer.pem").write_bytes(_pem(self.azure_signer))
        (self.root / "azure/signer-key.pem").write_bytes(_pem_key(self.azure_key))

    @classmethod
    def load(cls, root: Path) -> CloudPki:
        def key(path: Path) -> rsa.RSAPrivateKey:
            loaded = serialization.load_pem_private_key(path.read_bytes(), None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            return loaded

        def cert(path: Path) -> x509.Certificate:
            return x509.load_pem_x509_certificate(path.read_bytes())

        return cls(root, key(root / "gce/key.pem"),
                   {r: cert(root / "aws" / p / f"{r}.pem") for r, p in AWS_REGIONS.items()},
                   {r: key(root / "aws/keys" / f"{r}.pem") for r in AWS_REGIONS},
                   cert(root / "azure/root.pem"), cert(root / "azure/intermediate.pem"),
                   cert(root / "azure/signer.pem"), key(root / "azure/signer-key.pem"))

    # -- GCE -------------------------------------------------------------------
    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.gce_key.public_key()))
        jwk.update(kid=GCE_KID, alg="RS256", use="sig")
        return {"keys": [jwk]}

    def gce_claims(self, audience: str, *, now: float | None = None, ttl: int = 3600,
                   instance_id: str = "4242424242424242", project_id: str = "mesh-test",
                   email: str = "vm@mesh-test.iam.gserviceaccount.com",
                   created: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "iss": "https://accounts.google.com", "aud": audience, "azp": "1234567890",
            "email": email, "email_verified": True, "iat": int(now), "exp": int(now) + ttl,
            "sub": "1234567890",
            "google": {"compute_engine": {
                "project_id": project_id, "project_number": 987654321,
                "zone": "europe-west1-b", "instance_id": instance_id,
                "instance_name": "vm-1",
                "instance_creation_timestamp": int(created if created is not None
                                                   else now - 600)}},
        }

    def gce_token(self, audience: str, *, claims: dict[str, Any] | None = None,
                  kid: str = GCE_KID, **kwargs: Any) -> str:
        body = claims if claims is not None else self.gce_claims(audience, **kwargs)
        return jwt.encode(body, self.gce_key, algorithm="RS256", headers={"kid": kid})

    # -- EC2 -------------------------------------------------------------------
    @staticmethod
    def aws_document(*, instance_id: str = "i-0123456789abcdef0", region: str = "us-east-1",
                     account_id: str = "123456789012", pending: float | None = None,
                     private_ip: str = "10.0.0.12") -> bytes:
        pending = time.time() - 300 if pending is None else pending
        doc = {
            "accountId": account_id, "architecture": "x86_64",
            "availabilityZone": f"{region}a", "billingProducts": None,
            "devpayProductCodes": None, "marketplaceProductCodes": None,
            "imageId": "ami-0abcdef1234567890", "instanceId": instance_id,
            "instanceType": "t3.micro", "kernelId": None,
            "pendingTime": dt.datetime.fromtimestamp(pending, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"),
            "privateIp": private_ip, "ramdiskId": None, "region": region, "version": "2017-09-30",
        }
        # AWS pretty-prints with two spaces; the exact bytes matter for the signature.
        return json.dumps(doc, indent=2).encode()

    def aws_pkcs7(self, document: bytes, region: str = "us-east-1") -> str:
        der = sign_pkcs7(document, self.aws_certs[region], self.aws_keys[region], embed=False)
        return base64.encodebytes(der).decode("ascii").strip()

    # -- Azure -----------------------------------------------------------------
    @staticmethod
    def azure_content(nonce: str, *, vm_id: str = "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                      subscription_id: str = "8d10da13-8125-4ba9-a717-bf7490507b3d",
                      now: float | None = None) -> bytes:
        now = time.time() if now is None else now
        fmt = "%m/%d/%y %H:%M:%S -0000"
        stamp = {"createdOn": dt.datetime.fromtimestamp(now, dt.UTC).strftime(fmt),
                 "expiresOn": dt.datetime.fromtimestamp(now + 21600, dt.UTC).strftime(fmt)}
        return json.dumps({
            "licenseType": "", "nonce": nonce,
            "plan": {"name": "", "product": "", "publisher": ""},
            "sku": "22_04-lts-gen2", "subscriptionId": subscription_id,
            "timeStamp": stamp, "vmId": vm_id}).encode()

    def azure_signature(self, content: bytes) -> str:
        der = sign_pkcs7(content, self.azure_signer, self.azure_key, embed=True)
        return base64.b64encode(der).decode("ascii")
