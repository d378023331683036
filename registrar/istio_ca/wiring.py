"""Wiring: the CA API's parts, built with the HTTPS API's (one Service, one CA
source, one clock per worker), and its listener started beside the API's."""

from __future__ import annotations

from aiohttp import web
from grpclib.server import Server

from meshcore.clock import Clock
from registrar.api.connections import ConnectionGate
from registrar.api.logbudget import LogBudget
from registrar.api.service import Service
from registrar.ca.authority import AuthoritySource
from registrar.ca.live import LiveCa
from registrar.config import RegistrarConfig
from registrar.istio_ca.callers import Callers
from registrar.istio_ca.config import IstioCaConfig
from registrar.istio_ca.server import IstioCaService, start
from registrar.store.inventory import Inventory

SERVICE = web.AppKey("istio_ca", IstioCaService)


def attach(app: web.Application, config: RegistrarConfig, *, service: Service,
           authorities: AuthoritySource, inventory: Inventory, clock: Clock) -> None:
    ca = config.istio_ca
    assert ca is not None
    callers = Callers(groups=config.groups, oidc=config.oidc, audiences=ca.audiences,
                      service=service, inventory=inventory, clock=clock)
    app[SERVICE] = IstioCaService(config=ca, callers=callers, authorities=authorities,
                                  clock=clock)


async def serve(app: web.Application, config: IstioCaConfig, live: LiveCa, *,
                reuse_port: bool, gate: ConnectionGate, log_budget: LogBudget) -> Server:
    """Listen beside the API: the same worker's connection gate (its caps count
    both ports' connections) and log budget."""
    return await start(app[SERVICE], host=config.host, port=config.port,
                       ssl_context=live.listening_context(("h2",)), reuse_port=reuse_port,
                       gate=gate, log_budget=log_budget)
