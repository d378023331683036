"""The five files ``istioctl x workload entry configure`` writes for a VM, in
istioctl's exact formats (read from istioctl's source and golden files; this is
our own code): ``cluster.env``, ``mesh.yaml``, ``root-cert.pem``,
``istio-token`` and ``hosts``.

Formats:
* ``cluster.env``: ``K=V`` lines sorted as whole lines; V quoted the way
  istioctl's shell quoting does: single quotes (``'`` as ``'"'"'``) unless every
  character is one of ``\\ w @ % + = : , . / -`` (its pattern's class), so
  nearly every value is quoted, and an empty value is ``''``. Keys: the mesh's
  proxyMetadata, then CANONICAL_*, POD_NAMESPACE, SERVICE_ACCOUNT,
  TRUST_DOMAIN, ISTIO_META_* (CLUSTER_ID, MESH_ID, NETWORK, WORKLOAD_NAME,
  optional DNS_CAPTURE, POD_PORTS, AUTO_REGISTER_GROUP), ISTIO_METAJSON_LABELS,
  overridden by ISTIO_INBOUND_PORTS ('*' or the template's ports),
  ISTIO_NAMESPACE, ISTIO_SERVICE (group.namespace), ISTIO_SERVICE_CIDR '*',
  ISTIO_LOCAL_EXCLUDE_PORTS '22,15090,15021,15020', SERVICE_ACCOUNT, and
  CA_ADDR (revisioned istiod only) and ISTIO_SVC_IP (when given).
* ``mesh.yaml``: ``defaultConfig`` with discoveryAddress, proxyMetadata (the
  same metadata keys) and readinessProbe, keys sorted, YAML as Go's yaml
  library writes it (``"true"``, ``""`` double-quoted; JSON single-quoted).
* ``hosts``: ``<ip> istiod[-rev].<ns>.svc``; ``istio-token``: the JWT, no newline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_EXCLUDE_PORTS = "22,15090,15021,15020"
_SAFE = set("\\w@%+=:,./-")
_YAML_SPECIAL = re.compile(r"^(?:true|false|yes|no|on|off|y|n|null|~|[-+]?[0-9][0-9_.eE+-]*)$",
                           re.IGNORECASE)


def shell_quote(value: str) -> str:
    if value == "":
        return "''"
    if all(c in _SAFE for c in value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _yaml_scalar(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value == "" or _YAML_SPECIAL.match(value):
        return json.dumps(value)
    if (value[0] in "-?:,[]{}#&*!|>'\"%@`" or value != value.strip() or ": " in value
            or " #" in value):
        return "'" + value.replace("'", "''") + "'"
    return value


def _go_yaml_key(key: str) -> list[tuple[int, int, str]]:
    """Go's YAML library orders map keys "naturally": at the first differing
    character a non-letter sorts before a letter, and digit runs compare as
    numbers (so ``ISTIO_META_X`` precedes ``ISTIO_METAJSON_LABELS``)."""
    parts: list[tuple[int, int, str]] = []
    for run in re.findall(r"\d+|.", key):
        if run.isdigit():
            parts.append((0, int(run), ""))
        else:
            parts.append((1 if run.isalpha() else 0, 0, run))
    return parts


def yaml_text(data: Mapping[str, object], indent: int = 0) -> str:
    out = []
    for key in sorted(data, key=_go_yaml_key):
        value = data[key]
        if isinstance(value, Mapping):
            out.append(f"{' ' * indent}{key}:\n{yaml_text(value, indent + 2)}")
        else:
            assert isinstance(value, str | int)
            out.append(f"{' ' * indent}{key}: {_yaml_scalar(value)}\n")
    return "".join(out)


def _first(labels: Mapping[str, str], keys: tuple[str, ...], default: str) -> str:
    return next((labels[k] for k in keys if labels.get(k)), default)


@dataclass
class VmFiles:
    """What istioctl would be told (WorkloadGroup + flags) and what it would fetch."""

    group: str
    namespace: str
    service_account: str
    istiod_ip: str
    root_cert: bytes
    token: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # WorkloadGroup template ports
    cluster_id: str = "Kubernetes"
    trust_domain: str = "cluster.local"
    mesh_id: str = ""
    network: str = ""
    istio_namespace: str = "istio-system"
    revision: str = ""
    internal_ip: str = ""
    dns_capture: bool = True
    auto_register: bool = False
    probe_port: int | None = None
    mesh_proxy_metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def istiod_host(self) -> str:
        revisioned = self.revision not in ("", "default")
        name = f"istiod-{self.revision}" if revisioned else "istiod"
        return f"{name}.{self.istio_namespace}.svc"

    def proxy_metadata(self) -> dict[str, str]:
        md = dict(self.mesh_proxy_metadata)
        canonical = _first(self.labels, ("service.istio.io/canonical-name",
                                         "app.kubernetes.io/name", "app"), self.group)
        revision = _first(self.labels, ("service.istio.io/canonical-revision",
                                        "app.kubernetes.io/version", "version"), "latest")
        md.update({"CANONICAL_SERVICE": canonical, "CANONICAL_REVISION": revision,
                   "POD_NAMESPACE": self.namespace, "SERVICE_ACCOUNT": self.service_account,
                   "TRUST_DOMAIN": self.trust_domain, "ISTIO_META_CLUSTER_ID": self.cluster_id,
                   "ISTIO_META_MESH_ID": self.mesh_id, "ISTIO_META_NETWORK": self.network,
                   "ISTIO_META_WORKLOAD_NAME": self.group})
        if self.ports:
            pod_ports = [{"name": n, "containerPort": p} for n, p in sorted(self.ports.items())]
            md["ISTIO_META_POD_PORTS"] = json.dumps(pod_ports, separators=(",", ":"))
        labels = {**self.labels, "service.istio.io/canonical-name": canonical,
                  "service.istio.io/canonical-revision": revision}
        md["ISTIO_METAJSON_LABELS"] = json.dumps(dict(sorted(labels.items())),
                                                 separators=(",", ":"))
        if self.dns_capture:
            md["ISTIO_META_DNS_CAPTURE"] = "true"
        if self.auto_register:
            md["ISTIO_META_AUTO_REGISTER_GROUP"] = self.group
        return md

    def cluster_env(self) -> str:
        env = self.proxy_metadata()
        env.update({
            "ISTIO_INBOUND_PORTS": ",".join(str(p) for p in self.ports.values()) or "*",
            "ISTIO_NAMESPACE": self.namespace,
            "ISTIO_SERVICE": f"{self.group}.{self.namespace}",
            "ISTIO_SERVICE_CIDR": "*",
            "ISTIO_LOCAL_EXCLUDE_PORTS": DEFAULT_EXCLUDE_PORTS,
            "SERVICE_ACCOUNT": self.service_account,
        })
        if self.revision not in ("", "default"):
            env["CA_ADDR"] = f"{self.istiod_host}:15012"
        if self.internal_ip:
            env["ISTIO_SVC_IP"] = self.internal_ip
        return "".join(f"{line}\n" for line in sorted(f"{k}={shell_quote(v)}"
                                                      for k, v in env.items()))

    def mesh_yaml(self) -> str:
        config: dict[str, object] = {"discoveryAddress": f"{self.istiod_host}:15012",
                                     "proxyMetadata": self.proxy_metadata()}
        if self.probe_port is not None:
            config["readinessProbe"] = {"httpGet": {"port": self.probe_port}}
        return yaml_text({"defaultConfig": config})

    def hosts(self) -> str:
        return f"{self.istiod_ip} {self.istiod_host}\n"

    def write(self, directory: Path) -> dict[str, Path]:
        """Write all five files (0644, as istioctl does) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        contents = {"cluster.env": self.cluster_env().encode(),
                    "mesh.yaml": self.mesh_yaml().encode(), "root-cert.pem": self.root_cert,
                    "istio-token": self.token.encode(), "hosts": self.hosts().encode()}
        paths = {}
        for name, data in contents.items():
            path = directory / name
            path.write_bytes(data)
            path.chmod(0o644)
            paths[name] = path
        return paths
