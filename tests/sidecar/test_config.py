"""The ``sidecar:`` section: defaults, and errors that name file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import ConfigError, load_config
from agent.proxy.config import ProxyConfig
from agent.sidecar.config import OutboundService, SidecarConfig


def _load(tmp_path: Path, sidecar: dict[str, Any],
          proxy: dict[str, Any] | None = None) -> SidecarConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"registrar": {"url": "https://reg.example:8443"},
                                    "sidecar": sidecar, "proxy": proxy or {}}))
    return load_config(path).sidecar


def test_defaults_follow_istio_ports(tmp_path: Path) -> None:
    config = _load(tmp_path, {"enabled": True})
    assert config.admin_port == 15000
    assert config.proxy == ProxyConfig("mesh-proxy", None, None, 15001, 15006)
    assert config.allowed_peers == () and config.app_ports == ()
    assert config.envoy_path == Path("/usr/local/bin/envoy")
    assert config.drain_time == 5.0 and config.restart.failure_threshold == 5


def test_user_and_ports_come_from_the_proxy_section(tmp_path: Path) -> None:
    config = _load(tmp_path, {"enabled": True}, {"uid": 1337, "gid": 1337,
                                                  "outbound_port": 16001})
    assert config.proxy == ProxyConfig("mesh-proxy", 1337, 1337, 16001, 15006)


def test_full_section(tmp_path: Path) -> None:
    config = _load(tmp_path, {
        "enabled": True, "envoy_path": "/opt/envoy/bin/envoy", "app_ports": [8080, "9090"],
        "concurrency": 4,
        "allowed_peers": ["spiffe://example.org/ns/a/sa/b", "spiffe://example.org/ns/ops/*"],
        "outbound_services": {"payments": {"address": "10.0.0.7:8443",
                                           "spiffe_id": "spiffe://example.org/ns/pay/sa/api"}},
        "drain_time": "45s", "restart": {"min_backoff": "250ms", "max_backoff": "1m",
                                         "failure_threshold": 3},
    })
    assert config.app_ports == (8080, 9090)
    assert config.outbound_services == (
        OutboundService("payments", "10.0.0.7", 8443, "spiffe://example.org/ns/pay/sa/api"),)
    assert (config.drain_time, config.restart.min_backoff, config.restart.max_backoff) == (
        45.0, 0.25, 60.0)


@pytest.mark.parametrize(("sidecar", "key", "allowed"), [
    ({"app_ports": [15006]}, "sidecar.app_ports", "ports other than"),
    ({"app_ports": ["http"]}, "sidecar.app_ports", "TCP ports 1..65535"),
    ({"admin_port": 15001}, "sidecar.admin_port", "a port other than 15001 and 15006"),
    ({"allowed_peers": ["example.org/ns/a"]}, "sidecar.allowed_peers", "spiffe://"),
    ({"allowed_peers": ["spiffe://td/*/sa/x"]}, "sidecar.allowed_peers", "ending in /*"),
    ({"proxy_uid": 1337}, "sidecar.proxy_uid", "both uid and gid"),
    ({"envoy_path": "envoy"}, "sidecar.envoy_path", "an absolute path"),
    ({"envoy_log_level": "loud"}, "sidecar.envoy_log_level", "trace|debug"),
    ({"drain_time": "forever"}, "sidecar.drain_time", "a duration"),
    ({"restart": {"min_backoff": "50s", "max_backoff": "10s"}}, "sidecar.restart.min_backoff",
     "min_backoff <= max_backoff"),
    ({"restart": {"bogus": 1}}, "sidecar.restart.bogus", "failure_threshold"),
    ({"outbound_services": {"pay": {"address": "pay.svc:80",
                                    "spiffe_id": "spiffe://td/ns/a/sa/b"}}},
     "sidecar.outbound_services.pay.address", "an IP address and port"),
    ({"outbound_services": {"pay": {"address": "10.0.0.1:80"}}},
     "sidecar.outbound_services.pay.spiffe_id", "a string"),
    ({"outbound_services": {"pay": {"address": "10.0.0.1:80", "spiffe_id": "spiffe://td/a/*"}}},
     "sidecar.outbound_services.pay.spiffe_id", "spiffe://td/ns/N/sa/SA"),
    ({"outbound_services": {"pay": {"address": "10.0.0.1:80", "spiffe_id": "spiffe://td/a",
                                    "sni": "x"}}},
     "sidecar.outbound_services.pay.sni", "address, spiffe_id"),
    ({"typo": True}, "sidecar.typo", "app_ports"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, sidecar: dict[str, Any], key: str,
                                          allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, sidecar)
    assert info.value.file == str(tmp_path / "agent.yaml")
    assert info.value.key == key
    assert allowed in info.value.allowed, info.value
