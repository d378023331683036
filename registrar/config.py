"""The registrar's configuration: one frozen, typed object built once at start-up.

The file is YAML (``registrar.yaml``, written by ``mesh-registrar init``), read
with the same ``Section`` reader as the agent's config so every error names the
file, the dotted key and the allowed values; the CLI exits 78 on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshcore.config.errors import ConfigError
from meshcore.config.reader import Section
from meshcore.config.source import load_source
from registrar.catalog.settings import GroupMesh, MeshConfig, read_group_mesh, read_mesh
from registrar.istio_ca.config import IstioCaConfig, read_istio_ca
from registrar.oidc.config import OidcConfig, read_oidc
from registrar.store.settings import StoreConfig, read_store

# DNS-label-ish names: they end up inside SPIFFE IDs and metric labels.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")
EVIDENCE_TYPES = ("join_token", "gce", "aws", "azure")
RATE_FAMILIES = ("attest", "renew", "challenge", "read")
# A certificate lives cert_ttl + cert_backdate and is due for renewal halfway, i.e.
# (cert_ttl - cert_backdate) / 2 after issue: at least 6 x the backdate keeps that
# hint well ahead of now (2.5 x the backdate), never in the past (a renewal storm).
TTL_PER_BACKDATE = 6


@dataclass(frozen=True)
class Group:
    """A workload group: what verified evidence maps to, and the identity it gets."""

    name: str
    namespace: str
    service_account: str
    trust_domain: str
    cert_ttl: float
    labels: dict[str, str] = field(default_factory=dict)
    # WorkloadGroup fields (named ports, network, readiness probe): registrar/catalog.
    mesh: GroupMesh = field(default_factory=GroupMesh)

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True)
class CaFiles:
    """Istio's plug-in layout: the signing intermediate, its chain, the roots."""

    cert: Path
    key: Path
    chain: Path
    roots: Path


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: int


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_header_bytes: int
    rates: dict[str, Rate]
    request_timeout: float
    max_connections: int
    max_connections_per_address: int
    # /v1/challenge per client address (IPv6: per /64): each answer is a stored row.
    challenge_per_address: Rate = Rate(5.0, 50)


@dataclass(frozen=True)
class RegistrarConfig:
    source_file: str
    trust_domain: str
    host: str
    port: int
    workers: int
    state_dir: Path
    database: Path
    ca: CaFiles
    tls_cert: Path
    tls_key: Path
    challenge_ttl: float
    limits: Limits
    groups: dict[str, Group]
    evidence: dict[str, dict[str, Any]]
    log_level: str
    mesh: MeshConfig = field(default_factory=MeshConfig)
    oidc: OidcConfig | None = None  # the OIDC issuer for istiod (registrar/oidc/)
    istio_ca: IstioCaConfig | None = None  # Istio's CA API (registrar/istio_ca/)
    cert_backdate: float = 10.0
    store: StoreConfig = field(default_factory=StoreConfig)  # registrar/store/settings.py


_DEFAULT_RATES = {
    "attest": Rate(1000.0, 2000),
    "renew": Rate(1000.0, 2000),
    "challenge": Rate(1000.0, 2000),
    "read": Rate(200.0, 400),
}


def _name(s: Section, key: str, pattern: re.Pattern[str] = _NAME) -> str:
    value = s.text(key)
    if not pattern.match(value):
        raise s.error(key, f"{value!r} is not a valid name",
                      "lowercase letters, digits, '.', '-', '_' (DNS-label style)")
    return value


def _cert_ttl(s: Section, backdate: float) -> float:
    floor = max(1.0, TTL_PER_BACKDATE * backdate)
    ttl = s.duration("cert_ttl", 86400.0, minimum=1.0, maximum=90 * 86400.0)
    if ttl < floor:
        raise s.error("cert_ttl", f"{ttl:g}s is below the floor for cert_backdate "
                      f"{backdate:g}s: the renewal hint would come at once",
                      f"at least {TTL_PER_BACKDATE} x cert_backdate = {floor:g}s, at most 90d "
                      "(or a smaller cert_backdate)")
    return ttl


def _groups(root: Section, trust_domain: str, backdate: float) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for s in root.sections("groups", "a list of mappings with name, namespace, service_account"):
        group = Group(
            name=_name(s, "name"),
            namespace=_name(s, "namespace"),
            service_account=_name(s, "service_account"),
            trust_domain=_name(s, "trust_domain", _TRUST_DOMAIN) if s.has("trust_domain")
            else trust_domain,
            cert_ttl=_cert_ttl(s, backdate),
            labels=s.str_map("labels"),
            mesh=read_group_mesh(s),
        )
        s.finish()
        if group.name in groups:
            raise s.error("name", f"group {group.name!r} is defined twice", "unique group names")
        groups[group.name] = group
    return groups


def _limits(s: Section) -> Limits:
    rate_section = s.section("rate")
    rates: dict[str, Rate] = {}
    for family in RATE_FAMILIES:
        sub = rate_section.section(family)
        default = _DEFAULT_RATES[family]
        rates[family] = Rate(
            per_second=sub.number("per_second", default.per_second, minimum=0.001,
                                  maximum=1e6),
            burst=sub.integer("burst", default.burst, minimum=1, maximum=10_000_000),
        )
        sub.finish()
    rate_section.finish()
    per_address = s.section("challenge_per_address")
    challenge_per_address = Rate(
        per_second=per_address.number("per_second", 5.0, minimum=0.001, maximum=1e6),
        burst=per_address.integer("burst", 50, minimum=1, maximum=10_000_000))
    per_address.finish()
    limits = Limits(
        max_body_bytes=s.integer("max_body_bytes", 64 * 1024, minimum=1024,
                                 maximum=4 * 1024 * 1024),
        max_header_bytes=s.integer("max_header_bytes", 8190, minimum=1024, maximum=65536),
        rates=rates,
        request_timeout=s.duration("request_timeout", 75.0, minimum=1.0, maximum=3600.0),
        max_connections=s.integer("max_connections", 10_000, minimum=16,
                                  maximum=1_000_000),
        max_connections_per_address=s.integer("max_connections_per_address", 128,
                                              minimum=1, maximum=1_000_000),
        challenge_per_address=challenge_per_address,
    )
    s.finish()
    return limits


def _evidence(s: Section) -> dict[str, dict[str, Any]]:
    """Which verifiers are enabled, with each one's own options (parsed by its factory)."""
    enabled: dict[str, dict[str, Any]] = {}
    for name in EVIDENCE_TYPES:
        present = s.has(name)
        sub = s.raw(name)  # read every known name, so finish() lists them as allowed
        if not present:
            continue
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise s.error(name, f"is a {type(sub).__name__}", "a mapping (may be empty)")
        enabled[name] = dict(sub)
    s.finish()
    return enabled


def build_config(path: Path) -> RegistrarConfig:
    """Read and validate ``path`` (plus ``<stem>.d/*.yaml`` drop-ins); raises ConfigError."""
    source = load_source(path)
    root = Section(source)
    trust_domain = _name(root, "trust_domain", _TRUST_DOMAIN)
    host, port = root.host_port("listen", "127.0.0.1:8443")
    state_dir = root.path("state_dir")
    ca = root.section("ca")
    tls = root.section("tls")
    evidence = root.section("evidence") if root.has("evidence") else None
    backdate = root.duration("cert_backdate", 10.0, minimum=0.0, maximum=3600.0)
    config = RegistrarConfig(
        source_file=str(path),
        trust_domain=trust_domain,
        host=host,
        port=port,
        workers=root.integer("workers", 1, minimum=1, maximum=64),
        state_dir=state_dir,
        database=root.path("database", str(state_dir / "registrar.db")),
        ca=CaFiles(
            cert=ca.path("cert", str(state_dir / "ca-cert.pem")),
            key=ca.path("key", str(state_dir / "ca-key.pem")),
            chain=ca.path("chain", str(state_dir / "cert-chain.pem")),
            roots=ca.path("roots", str(state_dir / "root-cert.pem")),
        ),
        tls_cert=tls.path("cert", str(state_dir / "server-cert.pem")),
        tls_key=tls.path("key", str(state_dir / "server-key.pem")),
        challenge_ttl=root.duration("challenge_ttl", 300.0, minimum=1.0, maximum=3600.0),
        limits=_limits(root.section("limits")),
        groups=_groups(root, trust_domain, backdate),
        evidence={"join_token": {}} if evidence is None else _evidence(evidence),
        log_level=root.text("log_level", "info", choices=("debug", "info", "warning", "error")),
        mesh=read_mesh(root),
        oidc=read_oidc(root, state_dir),
        cert_backdate=backdate,
        store=read_store(root),
    )
    config = replace(config, istio_ca=read_istio_ca(root, config.oidc, port))
    ca.finish()
    tls.finish()
    root.finish()
    return config


__all__ = ["CaFiles", "ConfigError", "Group", "Limits", "Rate", "RegistrarConfig",
           "build_config"]
