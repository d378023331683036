"""Pure: catalog + node -> the node's Envoy resources (go-control-plane's snapshot).

What a node (identified by its workload's SPIFFE ID) is told:

- LDS ``virtualInbound`` on 15006 (only when a service selects the node's
  group): per workload port a filter chain that terminates mTLS (any peer of
  the trust domain, certificate from local SDS), then network RBAC allowing
  the service's callers by URI SAN, then tcp_proxy to ``inbound|PORT``.
- LDS ``virtualOutbound`` on 15001: per service VIP:port a chain to the
  service's EDS cluster; anything else passes through to its original
  destination. Every service is visible to every node, as in Istio without a
  Sidecar resource: the destination's RBAC is the enforcement point, so a
  refused caller sees (and logs) an RBAC denial, not an unroutable VIP.
- CDS: ``PassthroughCluster``, ``inbound|PORT`` (static, to 127.0.0.1 from
  127.0.0.6), ``outbound|PORT||HOST`` (EDS over ADS, upstream mTLS checking
  the identities of the service's endpoints).
- EDS: per outbound cluster, the healthy endpoints only.
- RDS: none yet (HTTP ports are proxied at L4 as TCP).

A snapshot depends only on (catalog, group of the node, node's SDS dir): all
VMs of one group share it, which is what makes fan-out cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registrar.catalog.model import (
    Catalog,
    Service,
    ServicePort,
    WorkloadGroup,
    caller_ids,
    service_identities,
    target_port,
)
from registrar.xds import resources as r

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
WILDCARD_TYPES = (LISTENER, CLUSTER)  # answered with the full set; EDS and RDS by name
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
PASSTHROUGH = "PassthroughCluster"
_DEFAULT_FILES = r.NodeFiles()


@dataclass(frozen=True)
class Snapshot:
    """type URL -> resource name -> resource (proto3 JSON dict), and a version per type."""

    resources: Mapping[str, Mapping[str, dict[str, Any]]]
    versions: Mapping[str, str]


def outbound_cluster(service: Service, port: ServicePort) -> str:
    return f"outbound|{port.number}||{service.hosts[0]}"


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def _group_of(catalog: Catalog, spiffe_id: str) -> WorkloadGroup | None:
    return next((g for g in catalog.groups.values() if g.spiffe_id == spiffe_id), None)


def _selects_group(service: Service, group: WorkloadGroup) -> bool:
    return bool(service.selector) and all(group.labels.get(k) == v
                                          for k, v in service.selector.items())


def _inbound_ports(catalog: Catalog, group: WorkloadGroup) -> dict[int, list[str]]:
    """Workload port -> allowed caller patterns (the union over the services served there)."""
    ports: dict[int, list[str]] = {}
    for service in catalog.services:
        if not _selects_group(service, group):
            continue
        callers = caller_ids(service, catalog.groups)
        for port in service.ports:
            number = group.ports.get(port.name) or port.target_port or port.number
            ports.setdefault(number, [])
            ports[number] += [c for c in callers if c not in ports[number]]
    return dict(sorted(ports.items()))


def _inbound(catalog: Catalog, group: WorkloadGroup, files: r.NodeFiles,
             ports: Mapping[int, list[str]]) -> dict[str, Any]:
    peers = [f"spiffe://{catalog.trust_domain}/*"]
    chains = [{
        "name": f"inbound|{port}",
        "filter_chain_match": {"destination_port": port, "transport_protocol": "tls"},
        "transport_socket": r.downstream_tls(files, peers),
        "filters": [r.rbac(f"inbound_{port}.", callers, f"callers-of-{port}"),
                    r.tcp_proxy(f"inbound_{port}", inbound_cluster(port), None)],
    } for port, callers in ports.items()]
    return {"name": "virtualInbound", "address": r.address("0.0.0.0", INBOUND_PORT),  # noqa: S104
            "listener_filters": r.original_dst_filters(tls_inspector=True),
            # One line per connection at close, accepted or refused (no chain: NR;
            # RBAC: details=rbac_access_denied...), from the listener, not the tcp_proxy.
            "filter_chains": chains, "access_log": r.access_log(r.INBOUND_LOG)}


def _outbound(catalog: Catalog) -> dict[str, Any]:
    chains = []
    for service in catalog.services:
        for port in service.ports:
            cluster = outbound_cluster(service, port)
            chains.append({
                "name": cluster,
                "filter_chain_match": {"destination_port": port.number, "prefix_ranges": [
                    {"address_prefix": service.vip, "prefix_len": 32}]},
                "filters": [r.tcp_proxy(f"outbound_{port.number}_{service.name}", cluster,
                                        r.OUTBOUND_LOG)],
            })
    return {"name": "virtualOutbound", "address": r.address("0.0.0.0", OUTBOUND_PORT),  # noqa: S104
            "listener_filters": r.original_dst_filters(tls_inspector=False),
            "filter_chains": chains,
            "default_filter_chain": {"name": PASSTHROUGH, "filters": [
                r.tcp_proxy("outbound_passthrough", PASSTHROUGH, r.OUTBOUND_LOG)]}}


def _load_assignment(catalog: Catalog, service: Service, port: ServicePort) -> dict[str, Any]:
    lb_endpoints = [
        {"endpoint": {"address": r.address(w.address, target_port(port, w))},
         "health_status": "HEALTHY"}
        for w in catalog.workloads
        if w.health == "healthy" and w.address and service.selects(w)
    ]
    out: dict[str, Any] = {"cluster_name": outbound_cluster(service, port)}
    if lb_endpoints:
        out["endpoints"] = [{"lb_endpoints": lb_endpoints}]
    return out


def _version(items: Mapping[str, dict[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def build(catalog: Catalog, spiffe_id: str, files: r.NodeFiles = _DEFAULT_FILES) -> Snapshot:
    """The node's whole view. An unknown identity gets outbound only (and serves nothing)."""
    group = _group_of(catalog, spiffe_id)
    listeners: dict[str, dict[str, Any]] = {}
    clusters: dict[str, dict[str, Any]] = {PASSTHROUGH: {
        "name": PASSTHROUGH, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": r.CONNECT_TIMEOUT}}
    if group is not None:
        ports = _inbound_ports(catalog, group)
        if ports:  # Envoy rejects a listener without filter chains
            listeners["virtualInbound"] = _inbound(catalog, group, files, ports)
        for number in ports:
            name = inbound_cluster(number)
            clusters[name] = r.static_cluster(name, "127.0.0.1", number, upstream_bind_config={
                "source_address": {"address": r.INBOUND_SOURCE, "port_value": 0}})
    listeners["virtualOutbound"] = _outbound(catalog)
    endpoints: dict[str, dict[str, Any]] = {}
    for service in catalog.services:
        peers = service_identities(catalog, service)
        for port in service.ports:
            name = outbound_cluster(service, port)
            clusters[name] = r.eds_cluster(name, files, peers)
            endpoints[name] = _load_assignment(catalog, service, port)
    resources: dict[str, Mapping[str, dict[str, Any]]] = {
        CLUSTER: clusters, ENDPOINT: endpoints, LISTENER: listeners, ROUTE: {}}
    return Snapshot(resources=resources,
                    versions={t: _version(items) for t, items in resources.items()})


def bootstrap_static(snapshot: Snapshot, node_id: str, admin_port: int) -> dict[str, Any]:
    """The snapshot as a static bootstrap (EDS inlined as load_assignment), for
    ``envoy --mode validate`` and for reading what a node would get."""
    clusters = []
    for resource in snapshot.resources[CLUSTER].values():
        cluster = dict(resource)
        if cluster.get("type") == "EDS":
            del cluster["eds_cluster_config"]
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = snapshot.resources[ENDPOINT][cluster["name"]]
        clusters.append(cluster)
    return {"node": {"id": node_id, "cluster": "mesh"},
            "admin": {"address": r.address("127.0.0.1", admin_port)},
            "static_resources": {"listeners": list(snapshot.resources[LISTENER].values()),
                                 "clusters": clusters}}
