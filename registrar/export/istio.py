"""Pure: the catalog as Istio resources (``networking.istio.io/v1``) that
``kubectl apply -f`` and istiod's ``--configDir`` take.

- one WorkloadGroup per group: labels, serviceAccount, network, ports, probe;
- one WorkloadEntry per active, healthy workload (``<group>-<id>``): address,
  labels, serviceAccount, network, ports (unhealthy, draining, evicted or
  revoked workloads are left out, so istiod stops sending traffic to them);
- one ServiceEntry per service and namespace of the groups it selects
  (``resolution: STATIC``, ``location: MESH_INTERNAL``, the VIP as its address,
  the selector as ``workloadSelector``): Istio matches a ServiceEntry's
  workloadSelector only against WorkloadEntries of its own namespace.

Returns file name -> YAML text, one resource per file, names stable across
runs, so a directory can be kept current by writing and deleting files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from registrar.catalog.model import Catalog, Service, WorkloadEntry, WorkloadGroup

API = "networking.istio.io/v1"
_DNS = re.compile(r"[^a-z0-9-]+")


def _name(text: str) -> str:
    """A Kubernetes object name (DNS-1123 label) from a group or service name."""
    name = _DNS.sub("-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "x"


def _doc(kind: str, name: str, namespace: str, spec: Mapping[str, Any]) -> str:
    body = {"apiVersion": API, "kind": kind,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "mesh-registrar"}},
            "spec": dict(spec)}
    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def workload_group(group: WorkloadGroup) -> str:
    template: dict[str, Any] = {"serviceAccount": group.service_account}
    if group.network:
        template["network"] = group.network
    if group.ports:
        template["ports"] = dict(group.ports)
    spec: dict[str, Any] = {"metadata": {"labels": dict(group.labels)}, "template": template}
    if group.probe is not None:
        spec["probe"] = group.probe.to_json()
    return _doc("WorkloadGroup", _name(group.name), group.namespace, spec)


def workload_entry(group: WorkloadGroup, workload: WorkloadEntry) -> str | None:
    if workload.health != "healthy" or workload.address is None:
        return None
    spec: dict[str, Any] = {"address": workload.address, "labels": dict(workload.labels),
                            "serviceAccount": group.service_account}
    if workload.network:
        spec["network"] = workload.network
    if workload.ports:
        spec["ports"] = dict(workload.ports)
    return _doc("WorkloadEntry", entry_name(workload), group.namespace, spec)


def entry_name(workload: WorkloadEntry) -> str:
    return _name(f"{workload.group}-{workload.id}")


def service_entry(service: Service, namespace: str, groups: list[WorkloadGroup]) -> str:
    ports = []
    for port in service.ports:
        item: dict[str, Any] = {"number": port.number, "name": port.name,
                                "protocol": port.protocol}
        # A target port fixed for every selected group is stated; else each
        # WorkloadEntry's own named port applies (Istio's port-name matching).
        targets = {g.ports.get(port.name) or port.target_port or port.number for g in groups}
        if len(targets) == 1 and (only := targets.pop()) != port.number:
            item["targetPort"] = only
        ports.append(item)
    spec: dict[str, Any] = {"hosts": list(service.hosts), "ports": ports,
                            "location": "MESH_INTERNAL", "resolution": "STATIC",
                            "workloadSelector": {"labels": dict(service.selector)}}
    if service.vip:
        spec["addresses"] = [service.vip]
    return _doc("ServiceEntry", _name(service.name), namespace, spec)


def export(catalog: Catalog, namespace: str | None = None) -> dict[str, str]:
    """File name -> YAML; ``namespace`` limits the export to groups in it."""
    groups = {n: g for n, g in catalog.groups.items()
              if namespace is None or g.namespace == namespace}
    files: dict[str, str] = {}
    for group in groups.values():
        files[f"workloadgroup-{group.namespace}-{_name(group.name)}.yaml"] = \
            workload_group(group)
    for workload in catalog.workloads:
        owner = groups.get(workload.group)
        doc = workload_entry(owner, workload) if owner is not None else None
        if doc is not None and owner is not None:
            files[f"workloadentry-{owner.namespace}-{entry_name(workload)}.yaml"] = doc
    for service in catalog.services:
        by_ns: dict[str, list[WorkloadGroup]] = {}
        for group in groups.values():
            if service.selector and all(group.labels.get(k) == v
                                        for k, v in service.selector.items()):
                by_ns.setdefault(group.namespace, []).append(group)
        for ns, selected in sorted(by_ns.items()):
            files[f"serviceentry-{ns}-{_name(service.name)}.yaml"] = service_entry(
                service, ns, selected)
    return files

