"""The VM's Istio settings, assembled from istioctl's files in one directory.

``cluster.env`` and mesh.yaml's ``proxyMetadata`` are the environment
pilot-agent would run with; a name in both takes cluster.env's value (an
operator's edit there is the later, more specific one). From that
environment come the namespace, service account, CA address, capture ports
and CIDRs, and the node metadata (``ISTIO_META_X`` -> ``X`` as a string,
``ISTIO_METAJSON_X`` -> ``X`` as parsed JSON), which is what pilot-agent
puts in Envoy's node metadata.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.istio.address import Address, parse_address
from agent.istio.envfile import read_env
from agent.istio.errors import file_error
from agent.istio.hosts import read_hosts
from agent.istio.meshfile import MeshFile, read_mesh
from agent.istio.roots import read_roots

CLUSTER_ENV = "cluster.env"
MESH_YAML = "mesh.yaml"
ROOT_CERT = "root-cert.pem"
TOKEN = "istio-token"  # noqa: S105 (a file name)
HOSTS = "hosts"
FILES = (CLUSTER_ENV, MESH_YAML, ROOT_CERT, TOKEN, HOSTS)
ALL = "*"


@dataclass(frozen=True)
class Var:
    value: str
    path: Path
    line: int


@dataclass(frozen=True)
class IstioVM:
    directory: Path
    namespace: str
    service_account: str
    cluster_id: str
    trust_domain: str
    discovery: Address
    ca: Address
    inbound_ports: tuple[int, ...] | None      # None: every port ("*")
    service_cidrs: tuple[str, ...] | None      # None: every destination ("*")
    exclude_inbound_ports: tuple[int, ...]
    exclude_outbound_ports: tuple[int, ...]
    instance_ip: str | None
    env: Mapping[str, str]
    metadata: Mapping[str, Any]
    hosts: Mapping[str, str]
    root_pem: bytes
    roots: tuple[x509.Certificate, ...]

    @property
    def token_path(self) -> Path:
        return self.directory / TOKEN

    def resolve(self, address: Address) -> str:
        """The IP to dial for ``address``: the hosts file's entry, else the host as given."""
        return self.hosts.get(address.host.lower(), address.host)


def _environment(directory: Path, mesh: MeshFile) -> dict[str, Var]:
    env: dict[str, Var] = {
        name: Var(value, directory / MESH_YAML, mesh.lines.get(name, 1))
        for name, value in mesh.proxy_metadata.items()}
    for name, item in read_env(directory / CLUSTER_ENV).items():
        env[name] = Var(item.value, directory / CLUSTER_ENV, item.line)
    return env


def _ports(var: Var | None, name: str, *, star: bool) -> tuple[int, ...] | None:
    if var is None or not var.value.strip():
        return ()
    if star and var.value.strip() == ALL:
        return None
    ports = []
    for item in var.value.split(","):
        text = item.strip()
        if not text:
            continue
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise file_error(var.path, var.line, name, f"{text!r} is not a port",
                             ("'*' or " if star else "") + "comma-separated ports 1..65535")
        ports.append(int(text))
    return tuple(ports)


def _cidrs(var: Var | None, name: str) -> tuple[str, ...] | None:
    if var is None or not var.value.strip():
        return ()
    if var.value.strip() == ALL:
        return None
    out = []
    for item in var.value.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise file_error(var.path, var.line, name, f"{text!r} is not a CIDR",
                             "'*' or comma-separated networks like 10.0.0.0/8") from None
    return tuple(out)


def _metadata(env: Mapping[str, Var]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name, var in sorted(env.items()):
        if name.startswith("ISTIO_METAJSON_"):
            try:
                meta[name[len("ISTIO_METAJSON_"):]] = json.loads(var.value)
            except ValueError:
                raise file_error(var.path, var.line, name, "is not JSON",
                                 'a JSON value, e.g. \'{"app":"web"}\'') from None
        elif name.startswith("ISTIO_META_"):
            meta[name[len("ISTIO_META_"):]] = var.value
    return meta


def load_vm(directory: Path) -> IstioVM:
    """Read and check every file; raises ConfigError naming file and line."""
    mesh = read_mesh(directory / MESH_YAML)
    env = _environment(directory, mesh)
    namespace = env.get("ISTIO_NAMESPACE") or env.get("POD_NAMESPACE")
    if namespace is None or not namespace.value:
        raise file_error(directory / CLUSTER_ENV, 1, "ISTIO_NAMESPACE", "is not set",
                         "the workload's namespace, as istioctl writes it")
    ca_var = env.get("CA_ADDR")
    ca = parse_address(ca_var.value, ca_var.path, ca_var.line, "CA_ADDR") \
        if ca_var is not None and ca_var.value else mesh.discovery
    svc_ip = env.get("ISTIO_SVC_IP")
    instance_ip = None
    if svc_ip is not None and svc_ip.value:
        try:
            instance_ip = str(ipaddress.ip_address(svc_ip.value))
        except ValueError:
            raise file_error(svc_ip.path, svc_ip.line, "ISTIO_SVC_IP",
                             f"{svc_ip.value!r} is not an IP address", "the VM's IP") from None
    root_pem, roots = read_roots(directory / ROOT_CERT)
    metadata = _metadata(env)

    def value(name: str, default: str) -> str:
        var = env.get(name)
        return var.value if var is not None and var.value else default

    inbound = _ports(env.get("ISTIO_INBOUND_PORTS"), "ISTIO_INBOUND_PORTS", star=True)
    return IstioVM(
        directory=directory,
        namespace=namespace.value,
        service_account=value("SERVICE_ACCOUNT", "default"),
        cluster_id=str(metadata.get("CLUSTER_ID") or "Kubernetes"),
        trust_domain=value("TRUST_DOMAIN", "cluster.local"),
        discovery=mesh.discovery,
        ca=ca,
        inbound_ports=inbound,
        service_cidrs=_cidrs(env.get("ISTIO_SERVICE_CIDR"), "ISTIO_SERVICE_CIDR"),
        exclude_inbound_ports=_ports(env.get("ISTIO_LOCAL_EXCLUDE_PORTS"),
                                     "ISTIO_LOCAL_EXCLUDE_PORTS", star=False) or (),
        exclude_outbound_ports=_ports(env.get("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"),
                                      "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", star=False) or (),
        instance_ip=instance_ip,
        env={name: var.value for name, var in env.items()},
        metadata=metadata,
        hosts=read_hosts(directory / HOSTS),
        root_pem=root_pem,
        roots=tuple(roots),
    )
