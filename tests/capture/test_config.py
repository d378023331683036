"""The ``capture:`` section: defaults, ``*`` handling, and errors naming file, key, allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.proxy.config import ProxyConfig

# Capture needs a proxy to redirect to: our sidecar (or capture.external_proxy).
BASE = "registrar:\n  url: https://registrar.test:8443\nsidecar:\n  enabled: true\n"


def load(tmp_path: Path, capture: str) -> object:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + "capture:\n" + capture)
    return load_config(path).capture


def test_defaults(tmp_path: Path) -> None:
    c = load(tmp_path, "  enabled: true\n")
    assert c.__dict__ == {
        "enabled": True, "backend": "auto", "inbound_ports": None,
        "exclude_inbound_ports": (15090, 15021, 15020), "include_outbound_cidrs": None,
        "exclude_outbound_cidrs": (), "exclude_outbound_ports": (), "exclude_interfaces": (),
        "ipv6": True, "proxy": ProxyConfig(), "external_proxy": False,
        "envoy_down_policy": "fail-closed", "fail_open_after": 30.0, "probe": True}


def test_lists_and_star(tmp_path: Path) -> None:
    c = load(tmp_path, "  inbound_ports: '*'\n  include_outbound_cidrs: [10.0.0.0/8, fd00::/8]\n"
                       "  exclude_inbound_ports: '22,8080'\n"
                       "  envoy_down_policy: fail-open\n  fail_open_after: 2m\n"
                       "  exclude_interfaces: [docker0]\n")
    assert c.inbound_ports is None  # type: ignore[attr-defined]
    assert c.include_outbound_cidrs == ("10.0.0.0/8", "fd00::/8")  # type: ignore[attr-defined]
    assert c.exclude_inbound_ports == (22, 8080)  # type: ignore[attr-defined]
    assert c.fail_open_after == 120.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("yaml", "key", "allowed"), [
    ("  backend: firewalld\n", "capture.backend", "auto|iptables-nft|iptables-legacy|nftables"),
    ("  inbound_ports: [80, http]\n", "capture.inbound_ports", "TCP ports 1..65535"),
    ("  include_outbound_cidrs: [10.0.0.0/33]\n", "capture.include_outbound_cidrs",
     "IPv4/IPv6 networks"),
    ("  exclude_interfaces: ['eth0; rm']\n", "capture.exclude_interfaces",
     "Linux interface names"),
    ("  envoy_down_policy: open\n", "capture.envoy_down_policy", "fail-closed|fail-open"),
    # The deprecated proxy keys are checked by the proxy: section's rules (tests/proxy).
    ("  proxy_uid: 0\n", "capture.proxy_uid", "non-root"),
    ("  external_proxy: yes-please\n", "capture.external_proxy", "true|false"),
    ("  fail_open_after: soon\n", "capture.fail_open_after", "a duration"),
    ("  exclude_ports: [22]\n", "capture.exclude_ports", "exclude_inbound_ports"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, yaml: str, key: str,
                                          allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, yaml)
    err = info.value
    assert err.file == str(tmp_path / "agent.yaml")
    assert err.key == key
    assert allowed in err.allowed
