"""The mesh model, with Istio's names and meanings, as plain frozen data.

- ``WorkloadGroup``: the template for a class of VMs (a ``groups:`` entry):
  identity, labels, named ports, network, readiness probe.
- ``WorkloadEntry``: one attested VM: its group's labels and ports, the
  addresses its agent reported, its health and when it last reported.
- ``Service`` (Istio's ServiceEntry with ``resolution: STATIC`` and a
  ``workloadSelector``): hostnames, ports, a VIP, the labels that select its
  endpoints, and who may call it (Istio's AuthorizationPolicy, folded in).

Everything here is pure: health is a function of the last report and the
clock, so the same inputs always give the same catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from registrar.catalog.settings import Probe

HEALTH_STATES = ("healthy", "unhealthy", "draining")
PROTOCOLS = ("HTTP", "TCP")


@dataclass(frozen=True)
class WorkloadGroup:
    name: str
    spiffe_id: str
    namespace: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    network: str = ""
    probe: Probe | None = None


@dataclass(frozen=True)
class WorkloadEntry:
    id: int
    group: str
    spiffe_id: str
    hostname: str
    addresses: tuple[str, ...]
    labels: Mapping[str, str]
    ports: Mapping[str, int]
    network: str
    health: str  # healthy | unhealthy | draining, as of the catalog's clock
    health_reason: str  # reported | stale | never_reported | <state>
    last_seen: float  # the last status report (0: never)

    @property
    def address(self) -> str | None:
        """The endpoint address: the first reported one (the agent lists its primary first)."""
        return self.addresses[0] if self.addresses else None


@dataclass(frozen=True)
class ServicePort:
    name: str
    number: int
    protocol: str = "TCP"
    target_port: int = 0  # 0: the workload's port of the same name, else ``number``


@dataclass(frozen=True)
class Service:
    name: str
    hosts: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str]
    vip: str
    # SPIFFE IDs (exact, or ``spiffe://td/prefix/*``) or group names.
    allowed: tuple[str, ...] = ()

    def selects(self, workload: WorkloadEntry) -> bool:
        """Istio's workloadSelector: every selector label matches (an empty one selects none,
        so a typo never exposes a service on every VM)."""
        return bool(self.selector) and all(workload.labels.get(k) == v
                                           for k, v in self.selector.items())


@dataclass(frozen=True)
class Catalog:
    trust_domain: str
    groups: Mapping[str, WorkloadGroup]
    workloads: tuple[WorkloadEntry, ...]
    services: tuple[Service, ...]


def effective_health(reported: str | None, reported_at: float, now: float, grace: float,
                     state: str = "active") -> tuple[str, str]:
    """(health, reason). A revoked/evicted workload, one that never reported, or one
    silent for longer than ``grace`` is unhealthy; otherwise what it reported."""
    if state != "active":
        return "unhealthy", state
    if reported is None:
        return "unhealthy", "never_reported"
    if now - reported_at > grace:
        return "unhealthy", "stale"
    return reported, "reported"


def target_port(port: ServicePort, workload: WorkloadEntry) -> int:
    """Istio's ServiceEntry/WorkloadEntry port mapping: the workload's port of the
    same name wins, then the service's targetPort, then the service port itself."""
    return workload.ports.get(port.name) or port.target_port or port.number


def caller_ids(service: Service, groups: Mapping[str, WorkloadGroup]) -> tuple[str, ...]:
    """The service's allowed callers as SPIFFE ID patterns (group names resolved;
    a name that is no longer a group allows nothing)."""
    out: list[str] = []
    for entry in service.allowed:
        if entry.startswith("spiffe://"):
            out.append(entry)
        elif entry in groups:
            out.append(groups[entry].spiffe_id)
    return tuple(dict.fromkeys(out))


def id_matches(pattern: str, spiffe_id: str) -> bool:
    return spiffe_id.startswith(pattern[:-1]) if pattern.endswith("/*") else spiffe_id == pattern


def may_call(service: Service, groups: Mapping[str, WorkloadGroup], spiffe_id: str) -> bool:
    return any(id_matches(p, spiffe_id) for p in caller_ids(service, groups))


def endpoints(catalog: Catalog, service: Service) -> tuple[WorkloadEntry, ...]:
    """Every workload the service selects (healthy or not), in id order."""
    return tuple(w for w in catalog.workloads if service.selects(w))


def service_identities(catalog: Catalog, service: Service) -> tuple[str, ...]:
    """The SPIFFE IDs a caller must accept from this service's endpoints: the
    identities of the groups whose labels the selector matches (known before any
    VM of the group registers, so the upstream check never depends on health)."""
    ids = [g.spiffe_id for g in catalog.groups.values()
           if service.selector and all(g.labels.get(k) == v for k, v in service.selector.items())]
    ids += [w.spiffe_id for w in endpoints(catalog, service)]
    return tuple(sorted(set(ids)))
