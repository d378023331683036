"""The catalog: WorkloadGroup config, health as a function of the clock, services
and VIPs in SQLite, the change counter the xDS server polls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshcore.clock import SystemClock
from meshcore.config.errors import ConfigError
from registrar.catalog.model import Service, ServicePort, effective_health
from registrar.catalog.store import (
    ServiceExists,
    ServiceStore,
    StatusStore,
    VipExhausted,
    change_counter,
    load_catalog,
)
from registrar.config import build_config
from registrar.store.connection import INTEGRITY_ERRORS, Connection
from registrar.store.inventory import Inventory
from registrar.xds.hub import next_stale

BASE = {"trust_domain": "example.org", "state_dir": "/tmp/x", "groups": [
    {"name": "orders", "namespace": "shop", "service_account": "orders",
     "labels": {"app": "orders"}, "ports": {"http": 9090}, "network": "vpc-1",
     "probe": {"httpGet": {"path": "/ready", "port": 9090}, "periodSeconds": 2,
               "failureThreshold": 2}}],
    "services": {"vip_range": "240.240.0.0/30"}, "xds": {"listen": "127.0.0.1:15010",
                                                         "health_grace": "10s"}}


def _config(tmp_path: Path, data: dict[str, object]):  # type: ignore[no-untyped-def]
    path = tmp_path / "registrar.yaml"
    path.write_text(yaml.safe_dump({**data, "state_dir": str(tmp_path)}))
    return build_config(path)


def test_groups_become_workload_groups(tmp_path: Path) -> None:
    config = _config(tmp_path, BASE)
    mesh = config.groups["orders"].mesh
    assert mesh.ports == {"http": 9090} and mesh.network == "vpc-1"
    assert mesh.probe is not None and mesh.probe.to_json() == {
        "httpGet": {"path": "/ready", "port": 9090}, "periodSeconds": 2, "timeoutSeconds": 1,
        "successThreshold": 1, "failureThreshold": 2}
    assert (config.mesh.xds_host, config.mesh.xds_port) == ("127.0.0.1", 15010)
    assert config.mesh.health_grace == 10.0


@pytest.mark.parametrize(("patch", "key"), [
    ({"probe": {"httpGet": {"port": 1}, "tcpSocket": {"port": 2}}}, "groups[0].probe.tcpSocket"),
    ({"probe": {"exec": {"command": []}}}, "groups[0].probe.exec.command"),
    ({"ports": {"http": 70000}}, "groups[0].ports.http"),
    ({"ports": {"Bad Name": 1}}, "groups[0].ports"),
])
def test_bad_group_fields_name_the_key(tmp_path: Path, patch: dict[str, object],
                                       key: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["groups"][0].update(patch)
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, data)
    assert key in str(err.value)


def test_bad_vip_range_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"services\.vip_range"):
        _config(tmp_path, {**BASE, "services": {"vip_range": "240.240.0.1/16"}})


def test_health_is_a_function_of_the_last_report_and_the_clock() -> None:
    assert effective_health("healthy", 100.0, 105.0, 10.0) == ("healthy", "reported")
    assert effective_health("healthy", 100.0, 110.5, 10.0) == ("unhealthy", "stale")
    assert effective_health("draining", 100.0, 101.0, 10.0) == ("draining", "reported")
    assert effective_health(None, 0.0, 1.0, 10.0) == ("unhealthy", "never_reported")
    assert effective_health("healthy", 100.0, 101.0, 10.0, "revoked") == ("unhealthy", "revoked")


def _svc(name: str, vip: str = "", allowed: tuple[str, ...] = ()) -> Service:
    return Service(name=name, hosts=(f"{name}.shop.mesh",), ports=(ServicePort("http", 80),),
                   selector={"app": name}, vip=vip, allowed=allowed)


def test_vips_are_allocated_kept_and_never_shared(store_db: Connection) -> None:
    store = ServiceStore(store_db, "240.240.0.0/30")
    assert store.put(_svc("a"), now=1).vip == "240.240.0.1"
    assert store.put(_svc("b"), now=1).vip == "240.240.0.2"
    with pytest.raises(VipExhausted):
        store.put(_svc("c"), now=1)
    with pytest.raises(ServiceExists):
        store.put(_svc("a"), now=1)
    assert store.put(_svc("a", allowed=("frontend",)), now=2, replace_existing=True).vip == \
        "240.240.0.1"  # a policy change keeps the address callers resolved
    with pytest.raises(INTEGRITY_ERRORS):
        store.put(_svc("d", vip="240.240.0.2"), now=1)
    with pytest.raises(ValueError, match="port 0"):
        store.put(Service(name="e", hosts=("e.mesh",), ports=(ServicePort("http", 0),),
                          selector={"a": "b"}, vip=""), now=1)
    assert store.remove("a") and not store.remove("a")


def test_catalog_changes_bump_the_counter_and_renewals_do_not(
        tmp_path: Path, store_db: Connection) -> None:
    """The triggers of both stores' schemas (SQLite's and PostgreSQL's plpgsql)."""
    config = _config(tmp_path, BASE)
    conn = store_db
    inventory = Inventory(conn, SystemClock())
    start = change_counter(conn)
    w = inventory.record_attestation(evidence_type="join_token", subject="t1",
                                     spiffe_id=config.groups["orders"].spiffe_id,
                                     group="orders", hostname="vm", addresses=["10.0.0.2"],
                                     serial="01", not_after=2e9)
    after_attest = change_counter(conn)
    assert after_attest > start
    assert inventory.record_renewal(w.id, presented="01", hostname=None, addresses=None,
                                    serial="02",
                                    spiffe_id=w.spiffe_id, not_after=2e9)
    assert change_counter(conn) == after_attest  # last_seen alone changes no endpoint
    status = StatusStore(conn)
    status.report(w.id, ["10.0.0.2"], "healthy", now=1000.0)
    assert change_counter(conn) > after_attest
    counted = change_counter(conn)
    status.report(w.id, ["10.0.0.2"], "healthy", now=1001.0)
    assert change_counter(conn) == counted  # a heartbeat is not a change
    entry = load_catalog(conn, config, now=1005.0).workloads[0]
    assert (entry.health, entry.addresses, entry.labels) == ("healthy", ("10.0.0.2",),
                                                             {"app": "orders"})
    assert load_catalog(conn, config, now=1012.0).workloads[0].health_reason == "stale"
    # A VM that leaves (evicted or revoked) stops being an endpoint at once.
    counted = change_counter(conn)
    assert inventory.set_state(w.id, "evicted")
    assert change_counter(conn) > counted
    entry = load_catalog(conn, config, now=1005.0).workloads[0]
    assert (entry.health, entry.health_reason) == ("unhealthy", "evicted")


def test_silence_is_counted_from_the_xds_servers_start(
        tmp_path: Path, store_db: Connection) -> None:
    """A registrar that was down longer than the grace period (10 s here) must not
    empty every cluster at its restart: VMs could not report to it meanwhile. Each
    VM that had reported gets one grace period from the start (``counted_from``)."""
    config = _config(tmp_path, BASE)
    inventory = Inventory(store_db, SystemClock())
    w = inventory.record_attestation(evidence_type="join_token", subject="t1",
                                     spiffe_id=config.groups["orders"].spiffe_id,
                                     group="orders", hostname="vm", addresses=["10.0.0.2"],
                                     serial="01", not_after=2e9)
    StatusStore(store_db).report(w.id, ["10.0.0.2"], "healthy", now=1000.0)
    # Down from 1001 to 1060; the xDS server starts at 1060.
    assert load_catalog(store_db, config, now=1061.0).workloads[0].health_reason == "stale"
    entry = load_catalog(store_db, config, now=1061.0, counted_from=1060.0).workloads[0]
    assert (entry.health, entry.health_reason, entry.last_seen) == (
        "healthy", "reported", 1000.0)
    # ...and the hub re-reads when that grace period ends, when the VM goes stale
    # if it still has not reported.
    catalog = load_catalog(store_db, config, now=1061.0, counted_from=1060.0)
    assert next_stale(catalog, 10.0, 1060.0) == 1070.0
    later = load_catalog(store_db, config, now=1070.5, counted_from=1060.0).workloads[0]
    assert (later.health, later.health_reason) == ("unhealthy", "stale")
    # A VM that never reported is not made healthy by a restart.
    w2 = inventory.record_attestation(evidence_type="join_token", subject="t2",
                                      spiffe_id=config.groups["orders"].spiffe_id,
                                      group="orders", hostname="vm2", addresses=["10.0.0.3"],
                                      serial="02", not_after=2e9)
    fresh = {e.id: e for e in load_catalog(store_db, config, now=1061.0,
                                           counted_from=1060.0).workloads}[w2.id]
    assert fresh.health_reason == "never_reported"
