"""What the renderer needs beyond local config: the registrar's mesh settings and
where the agent keeps the files Envoy reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Istio's names for the two SDS secrets, kept so operators recognise them in
# `config_dump` and so an istiod-fed deployment could reuse the same names.
CERT_SECRET = "default"  # noqa: S105 (a name, not a secret)
BUNDLE_SECRET = "ROOTCA"  # noqa: S105


@dataclass(frozen=True)
class MeshSettings:
    """The workload's place in the mesh, as the registrar decided it."""

    spiffe_id: str
    trust_domain: str
    namespace: str
    service_account: str
    group: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvoyPaths:
    """The files under ``<state_dir>/envoy`` that Envoy reads.

    ``sds/current`` is a symlink to the live mirrored generation
    (``sds/gen-<name>/{key.pem,cert-chain.pem,bundle.pem}``), swapped by rename;
    Envoy watches ``sds/`` for that rename and re-reads both secrets.
    """

    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> EnvoyPaths:
        return cls(state_dir / "envoy")

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.yaml"

    @property
    def sds_dir(self) -> Path:
        return self.root / "sds"

    @property
    def current(self) -> Path:
        return self.sds_dir / "current"

    @property
    def cert_secret_file(self) -> Path:
        return self.sds_dir / "cert.yaml"

    @property
    def bundle_secret_file(self) -> Path:
        return self.sds_dir / "bundle.yaml"

    @property
    def key(self) -> Path:
        return self.current / "key.pem"

    @property
    def cert_chain(self) -> Path:
        return self.current / "cert-chain.pem"

    @property
    def bundle(self) -> Path:
        return self.current / "bundle.pem"


def mesh_settings(spiffe_id: str, mesh: Mapping[str, object]) -> MeshSettings:
    """From the registrar's answer (``Issued.spiffe_id``, ``Issued.mesh``; openapi
    ``MeshSettings``). Missing fields fall back to what the SPIFFE ID says."""
    def text(key: str, default: str = "") -> str:
        value = mesh.get(key)
        return value if isinstance(value, str) else default

    labels = mesh.get("labels")
    path = spiffe_id.removeprefix("spiffe://").split("/")
    trust_domain = path[0]
    by_id = dict(zip(path[1::2], path[2::2], strict=False))
    return MeshSettings(
        spiffe_id=spiffe_id,
        trust_domain=text("trust_domain", trust_domain),
        namespace=text("namespace", by_id.get("ns", "default")),
        service_account=text("service_account", by_id.get("sa", "default")),
        group=text("group"),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
    )
