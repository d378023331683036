"""Catalogs for snapshot tests: the issue's shop (frontend calls orders on b and c)."""

from __future__ import annotations

from registrar.catalog.model import (
    Catalog,
    Service,
    ServicePort,
    WorkloadEntry,
    WorkloadGroup,
)
from registrar.catalog.settings import Probe

TD = "example.org"


def _group(name: str, labels: dict[str, str], ports: dict[str, int] | None = None,
           probe: Probe | None = None) -> WorkloadGroup:
    return WorkloadGroup(name=name, spiffe_id=f"spiffe://{TD}/ns/shop/sa/{name}",
                         namespace="shop", service_account=name, labels=labels,
                         ports=ports or {}, probe=probe)


GROUPS = {
    "frontend": _group("frontend", {"app": "frontend"}),
    "orders": _group("orders", {"app": "orders", "version": "v1"}, {"http": 9090},
                     Probe("httpGet", port=9090, path="/healthz", period_seconds=2)),
    "intruder": _group("intruder", {"app": "intruder"}),
}


def entry(wid: int, group: str, address: str, health: str = "healthy") -> WorkloadEntry:
    g = GROUPS[group]
    return WorkloadEntry(id=wid, group=group, spiffe_id=g.spiffe_id, hostname=f"{group}-{wid}",
                         addresses=(address,), labels=g.labels, ports=g.ports, network="",
                         health=health, health_reason="reported", last_seen=1000.0)


ORDERS = Service(name="orders", hosts=("orders.shop.mesh",),
                 ports=(ServicePort("http", 9090, "HTTP"),), selector={"app": "orders"},
                 vip="240.240.0.1", allowed=("frontend",))
LEDGER = Service(name="ledger", hosts=("ledger.shop.mesh",),
                 ports=(ServicePort("pg", 5432, "TCP", target_port=15432),),
                 selector={"app": "orders"}, vip="240.240.0.2",
                 allowed=("spiffe://example.org/ns/ops/*", "frontend"))

SHOP = Catalog(
    trust_domain=TD, groups=GROUPS,
    workloads=(entry(1, "frontend", "10.0.0.1"), entry(2, "orders", "10.0.0.2"),
               entry(3, "orders", "10.0.0.3", health="unhealthy"),
               entry(4, "orders", "10.0.0.4", health="draining"),
               entry(5, "intruder", "10.0.0.5")),
    services=(ORDERS, LEDGER),
)
