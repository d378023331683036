"""The agent-facing catalog calls, independent of HTTP (mTLS with the workload cert):

- ``report``: ``POST /v1/workload/status {addresses, health}``: the VM's
  addresses (primary first: it becomes the endpoint address) and its
  readiness (``healthy``, ``unhealthy``, or ``draining`` before it stops).
  Where the attestation evidence proved an address (EC2's privateIp), a
  primary address that differs is refused (``address_mismatch``).
- ``settings``: ``GET /v1/workload/settings``: the group's probe and ports,
  how often to report, and the name table for the DNS proxy (hostname -> VIP).

A VM that stops reporting for ``xds.health_grace`` is unhealthy (a pure
function of the last report and the clock: registrar/catalog/model.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509

from meshcore.clock import Clock
from registrar.api.wire import only_keys
from registrar.catalog.model import HEALTH_STATES, effective_health
from registrar.catalog.store import ServiceStore, StatusStore
from registrar.config import Group, RegistrarConfig
from registrar.rejections import Rejected
from registrar.store.connection import Connection
from registrar.store.inventory import Inventory

MAX_ADDRESSES = 16


class WorkloadApi:
    def __init__(self, conn: Connection, config: RegistrarConfig, clock: Clock) -> None:
        self._config = config
        self._inventory = Inventory(conn, clock)
        self._status = StatusStore(conn)
        self._services = ServiceStore(conn, config.mesh.vip_range)
        self._clock: Callable[[], float] = lambda: clock.now().timestamp()

    def _owner(self, peer: x509.Certificate | None) -> tuple[int, Group]:
        """The active workload this client certificate was issued to, and its group."""
        if peer is None:
            raise Rejected("client_cert_required", "use the workload certificate as the TLS "
                           "client certificate")
        owner = self._inventory.owner(format(peer.serial_number, "x"))
        if owner is None or peer.not_valid_after_utc.timestamp() <= self._clock():
            raise Rejected("identity_unknown", "client certificate is expired or was not "
                           "issued by this registrar's inventory")
        if owner.workload.state == "revoked":
            raise Rejected("identity_revoked", f"workload {owner.workload.id} is revoked")
        if owner.workload.state == "evicted":
            raise Rejected("identity_evicted", f"workload {owner.workload.id} is evicted")
        group = self._config.groups.get(owner.workload.group)
        if group is None or group.spiffe_id != owner.spiffe_id:
            raise Rejected("identity_unknown", "the workload's group no longer gives "
                           f"{owner.spiffe_id}; attest again")
        return owner.workload.id, group

    def report(self, body: Mapping[str, Any], peer: x509.Certificate | None) -> dict[str, Any]:
        workload_id, _ = self._owner(peer)
        only_keys(body, {"addresses", "health"}, {"addresses", "health"})
        addresses, health = body["addresses"], body["health"]
        if health not in HEALTH_STATES:
            raise Rejected("bad_request", f"'health' must be one of {', '.join(HEALTH_STATES)}")
        if not isinstance(addresses, list) or not 1 <= len(addresses) <= MAX_ADDRESSES:
            raise Rejected("bad_request", f"'addresses' must list 1..{MAX_ADDRESSES} IPs, "
                           "primary first")
        try:
            parsed = [str(ipaddress.ip_address(a)) for a in addresses]
        except (TypeError, ValueError):
            raise Rejected("bad_request", "'addresses' must be IP address strings") from None
        proven = self._status.evidence_addresses(workload_id)
        if proven and parsed[0] not in proven:
            raise Rejected("address_mismatch", f"primary address {parsed[0]} is not the "
                           f"address the attestation evidence proved ({', '.join(proven)})")
        now = self._clock()
        grace = self._config.mesh.health_grace
        self._status.report(workload_id, parsed, health, now, grace)
        status, _ = effective_health(health, now, now, grace)
        return {"workload_id": workload_id, "health": status, "addresses": parsed,
                "report_interval_seconds": max(1.0, grace / 3), "grace_seconds": grace}

    def settings(self, peer: x509.Certificate | None) -> dict[str, Any]:
        _, group = self._owner(peer)
        mesh = self._config.mesh
        names = [{"hostname": host, "vip": s.vip,
                  "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol}
                            for p in s.ports]}
                 for s in self._services.list() for host in s.hosts]
        return {
            "spiffe_id": group.spiffe_id, "group": group.name, "labels": dict(group.labels),
            "ports": dict(group.mesh.ports), "network": group.mesh.network,
            "probe": group.mesh.probe.to_json() if group.mesh.probe else None,
            "report_interval_seconds": max(1.0, mesh.health_grace / 3),
            "grace_seconds": mesh.health_grace,
            "names": sorted(names, key=lambda n: str(n["hostname"])),
            "xds": {"port": mesh.xds_port} if mesh.xds_host else None,
        }
