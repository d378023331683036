"""Envoy's node identity in Istio mode, as pilot-agent builds it.

``id`` is ``sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN``: istiod reads
the proxy type, the IP (matched against WorkloadEntry addresses), the
instance name and the DNS domain from it. The metadata is what pilot-agent
sends (istio/istio pkg/model/proxy.go ``NodeMetadata``; JSON names and
types must match, e.g. ports are numbers and ``INSTANCE_IPS`` a
comma-separated string): every ``ISTIO_META_*``/``ISTIO_METAJSON_*`` from
the VM's environment, plus the fields pilot-agent derives itself.
``PROXY_CONFIG`` is not sent: istiod then applies the mesh's defaultConfig,
as it does for a pod without a proxy.istio.io/config annotation.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.istio.vm import IstioVM

STATUS_PORT = 15021      # Envoy's health listener (Istio's ENVOY_STATUS_PORT)
PROMETHEUS_PORT = 15090  # Envoy's merged stats listener


@dataclass(frozen=True)
class IstioNode:
    id: str
    cluster: str
    metadata: Mapping[str, Any]


def local_ip_toward(address: str) -> str:
    """The source address the kernel picks to reach ``address`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))
        return str(probe.getsockname()[0])


def build_node(vm: IstioVM, *, ip: str, hostname: str, domain: str = "cluster.local") -> IstioNode:
    """Pure: the node for a VM at ``ip`` named ``hostname``."""
    name = hostname.split(".", 1)[0] or "vm"
    ns = vm.namespace
    meta: dict[str, Any] = dict(vm.metadata)
    labels = meta.get("LABELS")
    meta["LABELS"] = {str(k): str(v) for k, v in labels.items()} \
        if isinstance(labels, Mapping) else {}
    meta.setdefault("WORKLOAD_NAME", name)
    meta.update({
        "NAME": name,
        "NAMESPACE": ns,
        "SERVICE_ACCOUNT": vm.service_account,
        "CLUSTER_ID": vm.cluster_id,
        "INTERCEPTION_MODE": "REDIRECT",
        "INSTANCE_IPS": ip,
        "ENVOY_STATUS_PORT": STATUS_PORT,
        "ENVOY_PROMETHEUS_PORT": PROMETHEUS_PORT,
    })
    service = vm.env.get("CANONICAL_SERVICE") or str(meta["WORKLOAD_NAME"])
    return IstioNode(
        id=f"sidecar~{ip}~{name}.{ns}~{ns}.svc.{domain}",
        cluster=f"{service}.{ns}",
        metadata=dict(sorted(meta.items())),
    )
