"""``mesh-agent check`` in Istio mode: one line per istioctl file, then a
verified TLS handshake with istiod's CA. The files already parsed when the
config loaded (a malformed one never gets here); these lines say what was
found and what will not work."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from agent.istio.config import IstioConfig
from agent.istio.probe import tls_verify_error
from agent.istio.token import read_token
from agent.istio.vm import CLUSTER_ENV, HOSTS, MESH_YAML, ROOT_CERT
from meshcore.config.errors import ConfigError


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    # True for a problem that only matters without a certificate to renew with.
    first_only: bool = False


def _cluster_env(c: IstioConfig) -> Finding:
    vm = c.vm
    ports = "all" if vm.inbound_ports is None else ",".join(map(str, vm.inbound_ports)) or "none"
    return Finding(CLUSTER_ENV, True, (
        f"{vm.directory / CLUSTER_ENV}: namespace {vm.namespace}, service account "
        f"{vm.service_account}, cluster {vm.cluster_id}, inbound ports {ports}"))


def _mesh_yaml(c: IstioConfig) -> Finding:
    vm = c.vm
    return Finding(MESH_YAML, True, f"{vm.directory / MESH_YAML}: discovery {vm.discovery}, "
                   f"CA {vm.ca}, {len(vm.metadata)} node metadata entries")


def _root_cert(c: IstioConfig) -> Finding:
    now = dt.datetime.now(dt.UTC)
    path = c.vm.directory / ROOT_CERT
    expired = [r for r in c.vm.roots if r.not_valid_after_utc <= now]
    if expired:
        return Finding(ROOT_CERT, False, f"{path}: {len(expired)} root(s) expired "
                       f"({expired[0].not_valid_after_utc:%Y-%m-%d})")
    return Finding(ROOT_CERT, True, f"{path}: {len(c.vm.roots)} root(s), "
                   f"{c.vm.roots[0].subject.rfc4514_string()}")


def _token(c: IstioConfig) -> Finding:
    if c.token_from_registrar:
        # No file: each token is asked of mesh-registrar when istiod needs one
        # (the registrar and evidence checks of `check` cover that path).
        return Finding("istio-token", True, "from mesh-registrar (istio.token_source: "
                       "registrar); no istio-token file is read")
    path = c.vm.token_path
    try:
        token = read_token(path)
    except ConfigError as exc:
        return Finding("istio-token", False, str(exc))
    if token is None:
        return Finding("istio-token", False, f"{path}: absent (needed for a first "
                       "certificate; renewals use the current certificate)", first_only=True)
    now = dt.datetime.now(dt.UTC)
    if token.expired_at(now):
        return Finding("istio-token", False, f"{path}: expired {token.expires:%Y-%m-%dT%H:%M:%SZ}",
                       first_only=True)
    until = f"until {token.expires:%Y-%m-%dT%H:%M:%SZ}" if token.expires else "no expiry"
    aud = ",".join(token.audiences) or "none"
    return Finding("istio-token", True, f"{path}: subject {token.subject or '?'}, "
                   f"audience {aud}, valid {until}")


def _hosts(c: IstioConfig) -> Finding:
    vm = c.vm
    used = {a.host: vm.resolve(a) for a in (vm.discovery, vm.ca)}
    shown = ", ".join(f"{name} -> {ip}" for name, ip in used.items())
    return Finding(HOSTS, True, f"{vm.directory / HOSTS}: {len(vm.hosts)} name(s); {shown}")


def _ca(c: IstioConfig) -> Finding:
    vm = c.vm
    ip = vm.resolve(vm.ca)
    problem = asyncio.run(tls_verify_error(ip, vm.ca.port, vm.ca.host, vm.root_pem,
                                           timeout=min(c.timeout, 5.0)))
    if problem is not None:
        return Finding("istiod CA", False, f"{ip}:{vm.ca.port} as {vm.ca.host}: {problem}")
    reachable = asyncio.run(_connects(ip, vm.ca.port, min(c.timeout, 5.0)))
    if not reachable:
        return Finding("istiod CA", False, f"{ip}:{vm.ca.port}: no connection")
    return Finding("istiod CA", True, f"{ip}:{vm.ca.port} verified as {vm.ca.host} "
                   "against root-cert.pem")


async def _connects(ip: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


CHECKS: tuple[Callable[[IstioConfig], Finding], ...] = (
    _cluster_env, _mesh_yaml, _root_cert, _token, _hosts, _ca)


def run(config: IstioConfig) -> list[Finding]:
    return [check(config) for check in CHECKS]
