"""The ``proxy:`` section: one set of rules for the proxy's user and ports, the
deprecated places in ``capture:``/``sidecar:``, and the one user lookup."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.proxy.config import ProxyConfig, parse_proxy
from agent.proxy.user import ProxyUserMissing, resolve_proxy_user
from meshcore.config.errors import ConfigError
from meshcore.config.reader import Section
from meshcore.config.source import load_source


def sections(tmp_path: Path, main: dict[str, Any],
             dropin: dict[str, Any] | None = None) -> dict[str, Section]:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(main))
    if dropin is not None:
        (tmp_path / "agent.d").mkdir()
        (tmp_path / "agent.d" / "50-site.yaml").write_text(yaml.safe_dump(dropin))
    root = Section(load_source(path))
    return {name: root.section(name) for name in ("proxy", "sidecar", "capture")}


def parse(tmp_path: Path, main: dict[str, Any], dropin: dict[str, Any] | None = None
          ) -> tuple[ProxyConfig, list[str], dict[str, Section]]:
    s = sections(tmp_path, main, dropin)
    parsed = parse_proxy(s["proxy"], legacy=(s["sidecar"], s["capture"]))
    return parsed.config, [str(w) for w in parsed.warnings], s


def test_defaults_follow_istio_ports(tmp_path: Path) -> None:
    config, warnings, _ = parse(tmp_path, {})
    assert config == ProxyConfig("mesh-proxy", None, None, 15001, 15006)
    assert warnings == []


def test_new_section(tmp_path: Path) -> None:
    config, warnings, s = parse(tmp_path, {"proxy": {
        "user": "envoy", "uid": 1337, "gid": 1338, "outbound_port": 16001,
        "inbound_port": 16006}})
    assert config == ProxyConfig("envoy", 1337, 1338, 16001, 16006)
    assert warnings == []
    s["proxy"].finish()  # every key was read


def test_typo_in_the_section_lists_the_allowed_keys(tmp_path: Path) -> None:
    _, _, s = parse(tmp_path, {"proxy": {"usr": "envoy"}})
    with pytest.raises(ConfigError) as info:
        s["proxy"].finish()
    assert info.value.key == "proxy.usr"
    assert "user" in info.value.allowed and "inbound_port" in info.value.allowed


def test_deprecated_keys_still_work_and_name_file_and_key(tmp_path: Path) -> None:
    config, warnings, _ = parse(
        tmp_path, {"sidecar": {"enabled": True, "proxy_uid": 1337, "proxy_gid": 1337}},
        {"capture": {"enabled": True, "proxy_uid": 1337, "outbound_port": 16001}})
    assert (config.uid, config.gid, config.outbound_port) == (1337, 1337, 16001)
    main, dropin = tmp_path / "agent.yaml", tmp_path / "agent.d" / "50-site.yaml"
    assert warnings == [
        f"{main}: sidecar.proxy_uid: is deprecated (use: proxy.uid instead)",
        f"{dropin}: capture.proxy_uid: is deprecated (use: proxy.uid instead)",
        f"{main}: sidecar.proxy_gid: is deprecated (use: proxy.gid instead)",
        f"{dropin}: capture.outbound_port: is deprecated (use: proxy.outbound_port instead)",
    ]


@pytest.mark.parametrize(("main", "key", "problem", "allowed"), [
    ({"proxy": {"uid": 1337, "gid": 1337}, "capture": {"proxy_uid": 2000}},
     "capture.proxy_uid", "2000 differs from proxy.uid 1337", "only proxy.uid"),
    ({"sidecar": {"proxy_user": "envoy"}, "capture": {"proxy_user": "istio-proxy"}},
     "capture.proxy_user", "'istio-proxy' differs from sidecar.proxy_user 'envoy'",
     "the same value as sidecar.proxy_user"),
    ({"proxy": {"inbound_port": 16006}, "sidecar": {"inbound_port": 15006}},
     "sidecar.inbound_port", "15006 differs from proxy.inbound_port 16006",
     "only proxy.inbound_port"),
])
def test_disagreeing_places_are_an_error(tmp_path: Path, main: dict[str, Any], key: str,
                                        problem: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, main)
    assert (info.value.file, info.value.key) == (str(tmp_path / "agent.yaml"), key)
    assert info.value.problem == problem
    assert allowed in info.value.allowed


@pytest.mark.parametrize(("main", "key", "allowed"), [
    # The same rules wherever a key is set (they used to differ by section).
    ({"proxy": {"uid": 0, "gid": 0}}, "proxy.uid", "non-root"),
    ({"capture": {"proxy_gid": 0}}, "capture.proxy_gid", "non-root"),
    ({"sidecar": {"proxy_uid": 2**32 - 1}}, "sidecar.proxy_uid", "1..4294967294"),
    ({"proxy": {"uid": 1337}}, "proxy.uid", "both uid and gid"),
    ({"capture": {"proxy_gid": 1337}}, "capture.proxy_gid", "both uid and gid"),
    ({"proxy": {"outbound_port": 15006}}, "proxy.outbound_port", "two different TCP ports"),
    ({"proxy": {"inbound_port": 70000}}, "proxy.inbound_port", "an integer 1..65535"),
    ({"proxy": {"user": ""}}, "proxy.user", "a string"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, main: dict[str, Any], key: str,
                                          allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, main)
    assert info.value.file == str(tmp_path / "agent.yaml")
    assert info.value.key == key
    assert allowed in info.value.allowed, info.value


def _getpwnam(name: str) -> pwd.struct_passwd:
    if name != "mesh-proxy":
        raise KeyError(name)
    return pwd.struct_passwd(("mesh-proxy", "x", 998, 997, "", "/", "/usr/sbin/nologin"))


def test_proxy_user_numeric_or_looked_up() -> None:
    proxy = resolve_proxy_user(ProxyConfig(), getpwnam=_getpwnam)
    assert (proxy.uid, proxy.gid) == (998, 997)
    numeric = resolve_proxy_user(ProxyConfig(uid=1337, gid=1338), getpwnam=_getpwnam)
    assert (numeric.uid, numeric.gid) == (1337, 1338)
    with pytest.raises(ProxyUserMissing, match=r"proxy.user: no such user 'nobody-here'.*"
                                               r"proxy.uid and proxy.gid"):
        resolve_proxy_user(ProxyConfig(user="nobody-here"), getpwnam=_getpwnam)
