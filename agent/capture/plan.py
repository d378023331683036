"""The pure capture planner: settings in, a backend-neutral rule set out.

Semantics follow Istio's istio-iptables in REDIRECT mode (its ISTIO_INBOUND,
ISTIO_REDIRECT, ISTIO_IN_REDIRECT and ISTIO_OUTPUT chains, with the same
ports and exemptions) so an Istio-configured Envoy works unchanged, under our
own ``MESH_`` chains:

* ``PREROUTING -p tcp -> MESH_INBOUND``: SSH and excluded ports RETURN,
  captured ports jump to ``MESH_IN_REDIRECT`` (-> inbound port, 15006).
* ``OUTPUT -p tcp -> MESH_OUTPUT``: the metadata address and the always-exempt
  destinations (the registrar) RETURN first, then 127.0.0.6 passthrough, the
  proxy's loopback self-calls, proxy UID/GID exemptions, loopback, excluded
  CIDRs/ports, and the rest jumps to ``MESH_REDIRECT`` (-> outbound port, 15001).

* DNS (when ``CaptureSettings.dns`` is set; Istio's DNS capture):
  ``OUTPUT -p udp`` and ``-p tcp -> MESH_DNS`` (before ``MESH_OUTPUT``): the
  proxy's UID/GID and the DNS forwarder's UID (the agent) RETURN, then UDP and
  TCP port 53 to each IPv4 nameserver of resolv.conf REDIRECT to the DNS
  proxy's port (15053). IPv6 nameservers are left alone: the proxy listens on
  127.0.0.1 only.

The forced exclusions come before anything the config can add, so no
configuration can capture SSH, the metadata service or the agent's own
certificate renewals.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from agent.capture.config import CaptureConfig

PREFIX = "MESH_"
INBOUND = "MESH_INBOUND"
IN_REDIRECT = "MESH_IN_REDIRECT"
OUTPUT = "MESH_OUTPUT"
REDIRECT = "MESH_REDIRECT"
DNS = "MESH_DNS"
DNS_PORT = 53
CHAINS = (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT)
RETURN = "RETURN"
TO_PORT = "REDIRECT"

SSH_PORT = 22
# Always direct: the cloud metadata service (and AWS's IPv6 IMDS endpoint),
# so a dead proxy can never cut the VM off from its own identity.
METADATA = {4: ("169.254.169.254/32",), 6: ("fd00:ec2::254/128",)}
LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}
# Envoy sends inbound-passthrough traffic to the app from this address.
PASSTHROUGH = {4: "127.0.0.6/32", 6: "::6/128"}
# Probe destinations: documentation ranges, never routed anywhere real.
PROBE_ADDRESS = {4: "192.0.2.1", 6: "2001:db8::1"}
PROBE_PORT = 15999


@dataclass(frozen=True)
class Rule:
    """One rule: all set matches must hold; ``target`` is RETURN, a chain, or REDIRECT."""

    chain: str
    target: str
    to_port: int | None = None
    src: str | None = None
    dst: str | None = None
    dst_negated: bool = False
    in_iface: str | None = None
    out_iface: str | None = None
    tcp: bool = False
    udp: bool = False
    dport: int | None = None
    uid: int | None = None
    gid: int | None = None
    owner_negated: bool = False


@dataclass(frozen=True)
class Jump:
    """A rule we add to a built-in chain (``PREROUTING``/``OUTPUT``) of the nat table."""

    hook: str
    chain: str
    proto: str = "tcp"


@dataclass(frozen=True)
class FamilyRules:
    family: int  # 4 or 6
    chains: tuple[str, ...]
    jumps: tuple[Jump, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Probe:
    """Where a verification connection goes to prove outbound redirection works."""

    family: int
    addresses: tuple[str, ...]  # candidates; the prober skips this host's own addresses
    port: int
    expect_port: int


@dataclass(frozen=True)
class Exempt:
    """A destination that always goes direct, whatever the config says.

    The agent's control plane: the registrar's addresses (and, the same way,
    istiod's or a CA's). If these went through the proxy, a proxy that is down
    would also cut off the renewals that keep the VM in the mesh.
    """

    network: str  # a CIDR; a host is /32 or /128
    port: int | None = None  # None: every TCP port of that network
    why: str = ""  # for people reading the plan, e.g. "registrar"


@dataclass(frozen=True)
class DnsCapture:
    """Redirect the app's port-53 traffic to the nameservers to the DNS proxy."""

    nameservers: tuple[str, ...]  # from /etc/resolv.conf
    to_port: int = 15053
    exempt_uids: tuple[int, ...] = ()  # the forwarder's user (the agent), besides the proxy's


@dataclass(frozen=True)
class CaptureSettings:
    """The config with the proxy identity resolved to numbers and the always-exempt
    destinations resolved to addresses (by the caller, at the edge)."""

    config: CaptureConfig
    proxy_uid: int
    proxy_gid: int
    always_exempt: tuple[Exempt, ...] = ()
    dns: DnsCapture | None = None


@dataclass(frozen=True)
class RuleSet:
    families: tuple[FamilyRules, ...]
    probes: tuple[Probe, ...] = field(default=())

    def family(self, family: int) -> FamilyRules | None:
        return next((f for f in self.families if f.family == family), None)


def _family_of(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).version


def _cidrs(cidrs: tuple[str, ...], family: int) -> list[str]:
    """Canonical text (what iptables-save/nft print back), this family only."""
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return [str(n) for n in nets if n.version == family]


def _inbound(c: CaptureConfig) -> list[Rule]:
    rules = [Rule(INBOUND, RETURN, tcp=True, dport=SSH_PORT)]
    rules += [Rule(INBOUND, RETURN, in_iface=i) for i in c.exclude_interfaces]
    excluded = sorted(set(c.exclude_inbound_ports) - {SSH_PORT})
    if c.inbound_ports is None:
        rules += [Rule(INBOUND, RETURN, tcp=True, dport=p) for p in excluded]
        rules.append(Rule(INBOUND, IN_REDIRECT, tcp=True))
    else:
        skip = set(excluded) | {SSH_PORT}
        rules += [Rule(INBOUND, IN_REDIRECT, tcp=True, dport=p)
                  for p in sorted(set(c.inbound_ports)) if p not in skip]
    return rules


def _outbound(s: CaptureSettings, family: int) -> list[Rule]:
    c = s.config
    capture_inbound = c.inbound_ports is None or bool(
        set(c.inbound_ports) - set(c.exclude_inbound_ports) - {SSH_PORT})
    rules = [Rule(OUTPUT, RETURN, dst=m) for m in METADATA[family]]
    rules += [Rule(OUTPUT, RETURN, dst=d, tcp=e.port is not None, dport=e.port)
              for e in s.always_exempt for d in _cidrs((e.network,), family)]
    rules += [Rule(OUTPUT, RETURN, out_iface=i) for i in c.exclude_interfaces]
    rules.append(Rule(OUTPUT, RETURN, src=PASSTHROUGH[family], out_iface="lo"))
    for uid, gid in ((s.proxy_uid, None), (None, s.proxy_gid)):
        if capture_inbound:
            # The proxy calling a local service by a non-loopback address: treat as inbound.
            rules.append(Rule(OUTPUT, IN_REDIRECT, dst=LOOPBACK[family], dst_negated=True,
                              out_iface="lo", tcp=True, uid=uid, gid=gid))
        rules.append(Rule(OUTPUT, RETURN, out_iface="lo", owner_negated=True, uid=uid, gid=gid))
        rules.append(Rule(OUTPUT, RETURN, uid=uid, gid=gid))
    rules.append(Rule(OUTPUT, RETURN, dst=LOOPBACK[family]))
    rules += [Rule(OUTPUT, RETURN, tcp=True, dport=p) for p in sorted(set(
        c.exclude_outbound_ports))]
    rules += [Rule(OUTPUT, RETURN, dst=d) for d in _cidrs(c.exclude_outbound_cidrs, family)]
    if c.include_outbound_cidrs is None:
        rules.append(Rule(OUTPUT, REDIRECT))
    else:
        rules += [Rule(OUTPUT, REDIRECT, dst=d)
                  for d in _cidrs(c.include_outbound_cidrs, family)]
    return rules


def _probe(s: CaptureSettings, family: int) -> Probe | None:
    """A destination this plan captures, or None when the config captures nothing probe-able."""
    c = s.config
    if PROBE_PORT in c.exclude_outbound_ports:
        return None
    exempt = [e.network for e in s.always_exempt if e.port in (None, PROBE_PORT)]
    never = [ipaddress.ip_network(d, strict=False) for d in (
        *c.exclude_outbound_cidrs, *METADATA[family], LOOPBACK[family], *exempt)]
    if c.include_outbound_cidrs is None:
        candidates = [ipaddress.ip_address(PROBE_ADDRESS[family])]
    else:
        nets = [ipaddress.ip_network(d) for d in _cidrs(c.include_outbound_cidrs, family)]
        candidates = []
        for n in nets:
            if n.num_addresses <= 2:
                candidates.append(n.network_address)
            else:  # first, last and middle host: one of them is not this VM's own address
                candidates += [n.network_address + 1, n.broadcast_address - 1,
                               n.network_address + n.num_addresses // 2]
    usable = tuple(dict.fromkeys(
        str(a) for a in candidates if not any(a in net for net in never)))[:6]
    return Probe(family, usable, PROBE_PORT, c.proxy.outbound_port) if usable else None


def _dns(s: CaptureSettings, family: int) -> list[Rule]:
    """MESH_DNS, or nothing when DNS is not captured for this family."""
    servers = [] if s.dns is None else _cidrs(s.dns.nameservers, family)
    if s.dns is None or family != 4 or not servers:
        return []
    exempt = [Rule(DNS, RETURN, uid=s.proxy_uid), Rule(DNS, RETURN, gid=s.proxy_gid)]
    exempt += [Rule(DNS, RETURN, uid=u) for u in sorted(set(s.dns.exempt_uids) - {s.proxy_uid})]
    return exempt + [Rule(DNS, TO_PORT, dst=d, to_port=s.dns.to_port, dport=DNS_PORT,
                          udp=udp, tcp=not udp)
                     for d in servers for udp in (True, False)]


def _family(s: CaptureSettings, family: int) -> FamilyRules:
    c = s.config
    redirects = [Rule(REDIRECT, TO_PORT, tcp=True, to_port=c.proxy.outbound_port),
                 Rule(IN_REDIRECT, TO_PORT, tcp=True, to_port=c.proxy.inbound_port)]
    dns = _dns(s, family)
    # DNS first: a redirected query never reaches MESH_OUTPUT's catch-all.
    dns_jumps = (Jump("OUTPUT", DNS, "udp"), Jump("OUTPUT", DNS, "tcp")) if dns else ()
    return FamilyRules(
        family=family,
        chains=CHAINS + ((DNS,) if dns else ()),
        jumps=(Jump("PREROUTING", INBOUND), *dns_jumps, Jump("OUTPUT", OUTPUT)),
        rules=tuple(redirects + _inbound(c) + _outbound(s, family) + dns),
    )


def plan(settings: CaptureSettings) -> RuleSet:
    """The complete rule set for ``settings``: IPv4 always, IPv6 unless disabled."""
    families = (4, 6) if settings.config.ipv6 else (4,)
    probes = tuple(p for p in (_probe(settings, f) for f in families) if p)
    return RuleSet(tuple(_family(settings, f) for f in families), probes)
