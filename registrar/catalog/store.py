"""The catalog in SQLite: services, workload status reports, and reading it all back.

Groups come from ``registrar.yaml``; workloads are the inventory's rows joined
with their agents' status reports; services are rows the CLI manages. Every
write bumps ``mesh_changes.counter`` by trigger (registrar/store/db.py), which
is what the xDS server polls.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

from registrar.catalog.model import (
    HEALTH_STATES,
    Catalog,
    Service,
    ServicePort,
    WorkloadEntry,
    WorkloadGroup,
    effective_health,
)
from registrar.catalog.validate import check_service
from registrar.config import Group, RegistrarConfig
from registrar.store.connection import Connection, transaction


class ServiceExists(Exception):
    pass


class VipExhausted(Exception):
    pass


def group_model(group: Group) -> WorkloadGroup:
    return WorkloadGroup(name=group.name, spiffe_id=group.spiffe_id, namespace=group.namespace,
                         service_account=group.service_account, labels=dict(group.labels),
                         ports=dict(group.mesh.ports), network=group.mesh.network,
                         probe=group.mesh.probe)


def _service(row: Sequence[object]) -> Service:
    name, hosts, ports, selector, vip, allowed = row
    return Service(name=str(name), hosts=tuple(json.loads(str(hosts))),
                   ports=tuple(ServicePort(**p) for p in json.loads(str(ports))),
                   selector=json.loads(str(selector)), vip=str(vip),
                   allowed=tuple(json.loads(str(allowed))))


class ServiceStore:
    def __init__(self, conn: Connection, vip_range: str) -> None:
        self._conn = conn
        self._range = ipaddress.IPv4Network(vip_range)

    def list(self) -> list[Service]:
        rows = self._conn.execute("SELECT name, hosts, ports, selector, vip, allowed"
                                  " FROM mesh_services ORDER BY name")
        return [_service(r) for r in rows]

    def get(self, name: str) -> Service | None:
        row = self._conn.execute("SELECT name, hosts, ports, selector, vip, allowed"
                                 " FROM mesh_services WHERE name = ?", (name,)).fetchone()
        return None if row is None else _service(row)

    def _free_vip(self, conn: Connection) -> str:
        used = {r[0] for r in conn.execute("SELECT vip FROM mesh_services")}
        for address in self._range.hosts():
            if str(address) not in used:
                return str(address)
        raise VipExhausted(f"no free VIP left in {self._range}")

    def put(self, service: Service, *, now: float, replace_existing: bool = False) -> Service:
        """Insert (or with ``replace_existing``, update) a service; allocates a VIP when
        ``service.vip`` is empty, keeping the old one on replace. Raises ValueError
        (invalid), ServiceExists, VipExhausted, or sqlite3.IntegrityError (VIP taken)."""
        check_service(service)
        with transaction(self._conn) as conn:
            old = conn.execute("SELECT vip FROM mesh_services WHERE name = ?",
                               (service.name,)).fetchone()
            if old is not None and not replace_existing:
                raise ServiceExists(f"service {service.name!r} exists (use --replace)")
            if not service.vip:
                service = replace(service, vip=old[0] if old else self._free_vip(conn))
            conn.execute(
                "INSERT INTO mesh_services (name, hosts, ports, selector, vip, allowed,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET hosts = excluded.hosts,"
                " ports = excluded.ports, selector = excluded.selector, vip = excluded.vip,"
                " allowed = excluded.allowed, updated_at = excluded.updated_at",
                (service.name, json.dumps(list(service.hosts)),
                 json.dumps([p.__dict__ for p in service.ports]),
                 json.dumps(dict(service.selector), sort_keys=True), service.vip,
                 json.dumps(list(service.allowed)), now, now))
        return service

    def remove(self, name: str) -> bool:
        return self._conn.execute("DELETE FROM mesh_services WHERE name = ?",
                                  (name,)).rowcount == 1


class StatusStore:
    """What agents report about their own VM (addresses, health), and the addresses
    the attestation evidence proved, against which reports are checked."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record_evidence_addresses(self, workload_id: int, addresses: Sequence[str],
                                  now: float) -> None:
        self._conn.execute(
            "INSERT INTO mesh_workload_status (workload_id, health, evidence_addresses,"
            " reported_at) VALUES (?, 'unhealthy', ?, 0) ON CONFLICT (workload_id)"
            " DO UPDATE SET evidence_addresses = excluded.evidence_addresses",
            (workload_id, json.dumps(list(addresses))))

    def evidence_addresses(self, workload_id: int) -> tuple[str, ...]:
        row = self._conn.execute("SELECT evidence_addresses FROM mesh_workload_status"
                                 " WHERE workload_id = ?", (workload_id,)).fetchone()
        return () if row is None else tuple(json.loads(row[0]))

    def report(self, workload_id: int, addresses: Sequence[str], health: str,
               now: float, grace: float | None = None) -> None:
        """Record a report. A report that revives an entry (never reported, or silent
        for longer than ``grace``) changes its effective health even when the health
        and addresses are the same, which the triggers cannot see: it bumps the
        change counter itself, so the xDS server re-reads at once."""
        if health not in HEALTH_STATES:
            raise ValueError(health)
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT reported_at FROM mesh_workload_status"
                               " WHERE workload_id = ?", (workload_id,)).fetchone()
            previous = float(row[0]) if row is not None and row[0] else 0.0
            conn.execute(
                "INSERT INTO mesh_workload_status (workload_id, addresses, health,"
                " reported_at) VALUES (?, ?, ?, ?) ON CONFLICT (workload_id) DO UPDATE SET"
                " addresses = excluded.addresses, health = excluded.health,"
                " reported_at = excluded.reported_at",
                (workload_id, json.dumps(list(addresses)), health, now))
            if grace is not None and (not previous or now - previous > grace):
                conn.execute("UPDATE mesh_changes SET counter = counter + 1")


def change_counter(conn: Connection) -> int:
    return int(conn.execute("SELECT counter FROM mesh_changes").fetchone()[0])


def load_catalog(conn: Connection, config: RegistrarConfig, now: float, *,
                 counted_from: float = 0.0) -> Catalog:
    """The whole catalog as of ``now`` (health evaluated against the grace period).

    ``counted_from``: silence is counted from this time at the earliest. The xDS
    server passes its own start: while no registrar ran, no VM could report, so a
    restart that took longer than the grace period must not turn every endpoint
    stale (and empty every cluster) until each VM's next report. Each VM that had
    reported gets one grace period from the start to report again."""
    groups: Mapping[str, WorkloadGroup] = {n: group_model(g) for n, g in config.groups.items()}
    rows = conn.execute(
        "SELECT w.id, w.spiffe_id, w.group_name, w.hostname, w.addresses, w.state,"
        " s.addresses, s.health, s.reported_at FROM workloads w"
        " LEFT JOIN mesh_workload_status s ON s.workload_id = w.id"
        " WHERE w.group_name != '' ORDER BY w.id").fetchall()
    workloads = []
    for wid, spiffe_id, group_name, hostname, attested, state, reported, health, at in rows:
        group = groups.get(group_name)
        if group is None or group.spiffe_id != spiffe_id:
            continue  # its group was removed or changed: it must attest again
        # reported_at 0 is the placeholder row attestation writes for evidence addresses.
        last = float(at) if at else 0.0
        status, reason = effective_health(health if last else None,
                                          max(last, counted_from) if last else 0.0, now,
                                          config.mesh.health_grace, state)
        addresses = tuple(json.loads(reported)) if last else ()
        workloads.append(WorkloadEntry(
            id=int(wid), group=group_name, spiffe_id=spiffe_id, hostname=hostname,
            addresses=addresses or tuple(json.loads(attested)), labels=group.labels,
            ports=group.ports, network=group.network, health=status, health_reason=reason,
            last_seen=last))
    services = ServiceStore(conn, config.mesh.vip_range).list()
    return Catalog(trust_domain=config.trust_domain, groups=groups, workloads=tuple(workloads),
                   services=tuple(services))
