"""The issue-11 keys: sidecar.mode, workload:, dns:, and the settings decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, load_config
from agent.registrar_client.wire import WireError
from agent.registrar_client.workload import decode_settings
from tests.agent.test_config import BASE, write


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.sidecar.mode == "auto"
    assert config.workload.report and config.workload.drain_wait == 2.0
    assert not config.dns.enabled and config.dns.listen_port == 15053
    assert config.dns.resolv_conf == Path("/etc/resolv.conf")


@pytest.mark.parametrize(("extra", "key", "allowed"), [
    ("sidecar: {mode: dynamic}\n", "sidecar.mode", "auto|xds|static"),
    ("dns: {enabled: true}\n", "capture.enabled", "dns.capture: false"),
    ("dns: {listen_port: 0}\n", "dns.listen_port", "1..65535"),
    ("workload: {drain_wait: forever}\n", "workload.drain_wait", "a duration"),
    ("dns: {refres: 1s}\n", "dns.refres", "refresh"),
])
def test_errors_name_the_key(tmp_path: Path, extra: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE + extra))
    assert info.value.key == key
    assert allowed in str(info.value), info.value


def test_dns_without_capture_when_not_redirecting(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "dns: {enabled: true, capture: false}\n"))
    assert config.dns.enabled and not config.dns.capture


SETTINGS: dict[str, Any] = {
    "spiffe_id": "spiffe://example.org/ns/shop/sa/orders", "group": "orders", "labels": {},
    "ports": {"http": 9090}, "network": "", "probe": {"tcpSocket": {"port": 9090}},
    "report_interval_seconds": 10, "grace_seconds": 30, "xds": {"port": 15010},
    "names": [{"hostname": "Orders.Shop.Mesh.", "vip": "240.240.0.1", "ports": []}],
}


def test_settings_decoded() -> None:
    settings = decode_settings(SETTINGS)
    assert settings.xds_port == 15010 and settings.report_interval == 10.0
    assert dict(settings.names) == {"orders.shop.mesh": "240.240.0.1"}
    assert decode_settings({**SETTINGS, "xds": None}).xds_port is None


@pytest.mark.parametrize("change", [
    {"names": [{"hostname": "bad name", "vip": "240.240.0.1"}]},
    {"names": [{"hostname": "a.mesh", "vip": "not-an-ip"}]},
    {"names": "orders"},
    {"xds": {"port": 0}},
    {"report_interval_seconds": -1},
    {"probe": "tcp"},
])
def test_bad_settings_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        decode_settings({**SETTINGS, **change})
