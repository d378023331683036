"""Must-show 5: the planner's rule text, IPv6, and the exclusions no config can undo.

Golden files hold the exact transaction text (``UPDATE_GOLDEN=1`` rewrites
them, any other value compares; review the diff). Table tests pin each
semantic separately.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.capture.config import CaptureConfig
from agent.capture.iptables import NatState, parse_nat, render_apply, render_remove, render_rule
from agent.capture.nftables import render_apply as render_nft
from agent.capture.plan import (
    DNS as DNS_CHAIN,
)
from agent.capture.plan import (
    IN_REDIRECT,
    INBOUND,
    OUTPUT,
    REDIRECT,
    CaptureSettings,
    DnsCapture,
    Exempt,
    RuleSet,
    plan,
)
from agent.proxy.config import ProxyConfig

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
EMPTY = NatState(True, (), (), 0, 0, ())
# What the daemon passes for registrar.url https://registrar.example:8443 resolving
# to one IPv4 and one IPv6 address: every plan carries it.
REGISTRAR = (Exempt("10.0.0.5/32", 8443, "registrar"), Exempt("fd00::5/128", 8443, "registrar"))
CUSTOM = CaptureConfig(
    enabled=True, inbound_ports=(22, 8080, 15090), exclude_inbound_ports=(15090,),
    include_outbound_cidrs=("10.0.0.0/8", "fd00::/8"), exclude_outbound_cidrs=("10.1.0.0/16",),
    exclude_outbound_ports=(5432,), exclude_interfaces=("docker0",))


def planned(config: CaptureConfig, uid: int = 1337, gid: int = 1338,
            exempt: tuple[Exempt, ...] = REGISTRAR) -> RuleSet:
    return plan(CaptureSettings(config, uid, gid, exempt))


def lines(config: CaptureConfig, family: int) -> list[str]:
    fam = planned(config).family(family)
    assert fam is not None
    return [render_rule(r) for r in fam.rules]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize(("name", "config", "family"), [
    ("default-ipv4.rules", CaptureConfig(enabled=True), 4),
    ("default-ipv6.rules", CaptureConfig(enabled=True), 6),
    ("custom-ipv4.rules", CUSTOM, 4),
    ("custom-ipv6.rules", CUSTOM, 6),
])
def test_iptables_golden(name: str, config: CaptureConfig, family: int) -> None:
    fam = planned(config).family(family)
    assert fam is not None
    check_golden(name, render_apply(fam, EMPTY))


@pytest.mark.parametrize(("name", "config"), [
    ("default.nft", CaptureConfig(enabled=True)), ("custom.nft", CUSTOM)])
def test_nftables_golden(name: str, config: CaptureConfig) -> None:
    check_golden(name, render_nft(planned(config)))


# Configs that try hard to capture SSH and the metadata service.
HOSTILE = [
    CaptureConfig(enabled=True, exclude_inbound_ports=()),
    CaptureConfig(enabled=True, inbound_ports=(22, 80), exclude_inbound_ports=()),
    CaptureConfig(enabled=True, include_outbound_cidrs=("169.254.0.0/16", "fd00:ec2::/32")),
    CaptureConfig(enabled=True, include_outbound_cidrs=("169.254.169.254/32",)),
]


@pytest.mark.parametrize("config", HOSTILE)
@pytest.mark.parametrize("family", [4, 6])
def test_forced_exclusions_come_first(config: CaptureConfig, family: int) -> None:
    fam = planned(config).family(family)
    assert fam is not None
    inbound = [r for r in fam.rules if r.chain == INBOUND]
    assert (inbound[0].dport, inbound[0].target) == (22, "RETURN")
    assert not any(r.dport == 22 and r.target == IN_REDIRECT for r in fam.rules)
    output = [r for r in fam.rules if r.chain == OUTPUT]
    metadata = "169.254.169.254/32" if family == 4 else "fd00:ec2::254/128"
    assert (output[0].dst, output[0].target, output[0].dst_negated) == (metadata, "RETURN", False)
    registrar = ("10.0.0.5/32" if family == 4 else "fd00::5/128", 8443, "RETURN")
    assert (output[1].dst, output[1].dport, output[1].target) == registrar


def test_registrar_exemption_comes_before_every_configured_rule() -> None:
    """Even a config that includes the registrar's network cannot capture it."""
    config = CaptureConfig(enabled=True, include_outbound_cidrs=("10.0.0.0/8", "fd00::/8"))
    for family, want in ((4, "-A MESH_OUTPUT -d 10.0.0.5/32 -p tcp -m tcp --dport 8443 "
                             "-j RETURN"),
                         (6, "-A MESH_OUTPUT -d fd00::5/128 -p tcp -m tcp --dport 8443 "
                             "-j RETURN")):
        got = lines(config, family)
        assert got.index(want) < min(i for i, line in enumerate(got) if "MESH_REDIRECT" in line
                                     and "-A MESH_OUTPUT" in line)
        assert got.index(want) < next(i for i, line in enumerate(got) if "owner" in line)
    # A destination without a port (a future CA on its own address) is exempt whole.
    whole = planned(config, exempt=(Exempt("10.9.9.9", None, "ca"),)).family(4)
    assert whole is not None
    assert "-A MESH_OUTPUT -d 10.9.9.9/32 -j RETURN" in [render_rule(r) for r in whole.rules]


@pytest.mark.parametrize(("config", "family", "want"), [
    # Istio's loopback handling, in its order, for the proxy uid then gid.
    (CaptureConfig(enabled=True), 4, [
        "-A MESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A MESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 "
        "-j MESH_IN_REDIRECT",
        "-A MESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN"]),
    (CaptureConfig(enabled=True), 6, [
        "-A MESH_OUTPUT -s ::6/128 -o lo -j RETURN",
        "-A MESH_OUTPUT -m owner --gid-owner 1338 -j RETURN",
        "-A MESH_OUTPUT -d ::1/128 -j RETURN"]),
    # Exclusions and inclusions are split by address family.
    (CUSTOM, 4, ["-A MESH_OUTPUT -d 10.1.0.0/16 -j RETURN",
                 "-A MESH_OUTPUT -d 10.0.0.0/8 -j MESH_REDIRECT",
                 "-A MESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                 "-A MESH_INBOUND -i docker0 -j RETURN", "-A MESH_OUTPUT -o docker0 -j RETURN",
                 "-A MESH_INBOUND -p tcp -m tcp --dport 8080 -j MESH_IN_REDIRECT"]),
    (CUSTOM, 6, ["-A MESH_OUTPUT -d fd00::/8 -j MESH_REDIRECT"]),
])
def test_rule_text(config: CaptureConfig, family: int, want: list[str]) -> None:
    got = lines(config, family)
    for line in want:
        assert line in got
    if family == 6:
        assert not any("10." in line or "127.0.0" in line for line in got)
    else:
        assert not any("fd00" in line or "::" in line for line in got)


def test_inbound_list_never_redirects_excluded_or_ssh() -> None:
    got = lines(CUSTOM, 4)
    assert "-A MESH_INBOUND -p tcp -m tcp --dport 15090 -j MESH_IN_REDIRECT" not in got
    assert "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT" not in got  # no catch-all with a list


def test_proxy_self_call_rule_only_when_inbound_is_captured() -> None:
    nothing_in = CaptureConfig(enabled=True, inbound_ports=(22,))
    assert not any("MESH_IN_REDIRECT" in line and "owner" in line
                   for line in lines(nothing_in, 4))


def test_ipv6_off_plans_ipv4_only() -> None:
    rs = planned(CaptureConfig(enabled=True, ipv6=False))
    assert [f.family for f in rs.families] == [4]
    assert [p.family for p in rs.probes] == [4]


def test_ports_chains_and_jumps() -> None:
    fam = planned(CaptureConfig(enabled=True, proxy=ProxyConfig(
        outbound_port=16001, inbound_port=16006))).family(4)
    assert fam is not None
    assert fam.chains == (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT)
    got = [render_rule(r) for r in fam.rules]
    assert "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in got
    assert "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in got
    assert all(c.startswith("MESH_") for c in fam.chains)


def test_probe_avoids_excluded_and_metadata_addresses() -> None:
    rs = planned(CaptureConfig(enabled=True, include_outbound_cidrs=(
        "169.254.169.254/32", "10.0.0.0/30"), exclude_outbound_cidrs=("10.0.0.1/32",)))
    probe = next(p for p in rs.probes if p.family == 4)
    assert probe.addresses == ("10.0.0.2",)
    exempt_whole = (Exempt("10.0.0.2/32", None, "ca"),)
    rs = planned(CaptureConfig(enabled=True, include_outbound_cidrs=("10.0.0.0/30",)),
                 exempt=exempt_whole)
    assert next(p for p in rs.probes if p.family == 4).addresses == ("10.0.0.1",)
    assert not any(p.family == 6 for p in rs.probes)  # nothing IPv6 is captured


def test_apply_replaces_leftovers_in_one_transaction() -> None:
    """An older run's chains and jumps are torn down inside the new transaction."""
    live = parse_nat("\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":DOCKER - [0:0]",
        ":MESH_OUTPUT - [0:0]", ":MESH_OLD - [0:0]",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT -p tcp -j MESH_OUTPUT", "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "-A MESH_OUTPUT -j MESH_OLD", "-A MESH_OLD -j RETURN", "COMMIT"]))
    assert (live.chains, live.foreign_rules, live.foreign_chains) == (
        ("MESH_OUTPUT", "MESH_OLD"), 1, 1)
    fam = planned(CaptureConfig(enabled=True)).family(4)
    assert fam is not None
    text = render_apply(fam, live).splitlines()
    assert text.count("-D OUTPUT -p tcp -j MESH_OUTPUT") == 2
    assert text.index("-F MESH_OLD") < text.index("-X MESH_OLD")
    assert not any("DOCKER" in line for line in text)
    removal = render_remove(live)
    assert removal is not None
    assert "-X MESH_OUTPUT" in removal and "DOCKER" not in removal
    assert render_remove(EMPTY) is None


def test_cidrs_are_canonical_like_the_read_back() -> None:
    """Un-normalised CIDRs would make every read-back verification fail."""
    config = CaptureConfig(enabled=True, exclude_outbound_cidrs=("fd00:0::/32", "10.1.2.3/8"))
    got = lines(config, 6) + lines(config, 4)
    assert "-A MESH_OUTPUT -d fd00::/32 -j RETURN" in got
    assert "-A MESH_OUTPUT -d 10.0.0.0/8 -j RETURN" in got


# DNS capture (Istio's): the app's port 53 to each IPv4 nameserver -> the DNS proxy.
DNS = DnsCapture(("10.0.0.2", "fd00::53", "127.0.0.53"), to_port=15053, exempt_uids=(998,))


def planned_dns(config: CaptureConfig) -> RuleSet:
    return plan(CaptureSettings(config, 1337, 1338, REGISTRAR, dns=DNS))


@pytest.mark.parametrize(("name", "family"), [("dns-ipv4.rules", 4), ("dns-ipv6.rules", 6)])
def test_iptables_dns_golden(name: str, family: int) -> None:
    fam = planned_dns(CaptureConfig(enabled=True)).family(family)
    assert fam is not None
    check_golden(name, render_apply(fam, EMPTY))


def test_nftables_dns_golden() -> None:
    check_golden("dns.nft", render_nft(planned_dns(CaptureConfig(enabled=True))))


def test_dns_semantics() -> None:
    fam = planned_dns(CaptureConfig(enabled=True)).family(4)
    assert fam is not None
    dns = [render_rule(r) for r in fam.rules if r.chain == DNS_CHAIN]
    # Exemptions first: Envoy's uid and gid and the forwarder's uid, for both protocols.
    assert dns[:3] == ["-A MESH_DNS -m owner --uid-owner 1337 -j RETURN",
                       "-A MESH_DNS -m owner --gid-owner 1338 -j RETURN",
                       "-A MESH_DNS -m owner --uid-owner 998 -j RETURN"]
    # Then UDP and TCP 53, per IPv4 nameserver (the IPv6 one is not captured).
    assert dns[3:] == [
        f"-A MESH_DNS -d {ns}/32 -p {p} -m {p} --dport 53 -j REDIRECT --to-ports 15053"
        for ns in ("10.0.0.2", "127.0.0.53") for p in ("udp", "tcp")]
    # The DNS chain is consulted before MESH_OUTPUT's catch-all redirect.
    hooks = [(j.hook, j.chain, j.proto) for j in fam.jumps]
    assert hooks.index(("OUTPUT", DNS_CHAIN, "udp")) < hooks.index(("OUTPUT", OUTPUT, "tcp"))
    assert hooks.index(("OUTPUT", DNS_CHAIN, "tcp")) < hooks.index(("OUTPUT", OUTPUT, "tcp"))
    v6 = planned_dns(CaptureConfig(enabled=True)).family(6)
    assert v6 is not None and DNS_CHAIN not in v6.chains
    # No DNS settings: no DNS chain at all (the guard's "redirect off").
    off = planned(CaptureConfig(enabled=True)).family(4)
    assert off is not None and DNS_CHAIN not in off.chains
