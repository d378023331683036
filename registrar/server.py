"""``mesh-registrar serve``: the TLS context, wiring, and the worker processes.

With ``workers: N > 1`` the parent forks N workers that each bind the listen
address with SO_REUSEPORT (the kernel spreads connections) and share the store
(SQLite WAL file or PostgreSQL, registrar/store/connection.py); the parent only
supervises. Several such registrars (replicas) may share one PostgreSQL. Each
worker exits if its parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from meshcore.clock import Clock, SystemClock
from registrar.api.app import METRICS, Api, peer_certificate
from registrar.api.connections import ConnectionGate, file_limit, usable_connections
from registrar.api.faults import FaultLog
from registrar.api.logbudget import LogBudget
from registrar.api.metrics import Metrics, make_shared
from registrar.api.protocol import listen, runner_options
from registrar.api.ratelimit import RateLimiter
from registrar.api.service import Service
from registrar.api.store_status import StoreStatus
from registrar.attestation.registry import VerifierDeps, build_verifiers
from registrar.ca.authority import load_pem_certs
from registrar.ca.keyids import strict_report
from registrar.ca.live import LiveCa
from registrar.catalog.agent_api import WorkloadApi
from registrar.catalog.store import StatusStore
from registrar.config import RegistrarConfig
from registrar.store.challenges import ChallengeStore
from registrar.store.connection import Connection, kind_of, open_store
from registrar.store.inventory import Inventory
from registrar.store.tokens import TokenStore
from registrar.xds.status import metrics_text

log = logging.getLogger("registrar.server")


def build_app(config: RegistrarConfig, clock: Clock,
              live: LiveCa | None = None) -> web.Application:
    """The application, with ``clock`` the one source of time for every part and
    ``live`` the CA it signs with (reloaded when ``ca rotate`` changes it)."""
    conn = open_store(config)
    tokens = TokenStore(conn, clock)
    authority = live if live is not None else LiveCa(config, clock)
    challenges = ChallengeStore(conn, config.challenge_ttl, clock)
    verifiers = build_verifiers(VerifierDeps(config=config, tokens=tokens, clock=clock,
                                             conn=conn))
    status = StatusStore(conn)
    service = Service(config=config, authority=authority, verifiers=verifiers,
                      challenges=challenges, inventory=Inventory(conn, clock), clock=clock.now,
                      on_attested=lambda wid, addrs: status.record_evidence_addresses(
                          wid, addrs, clock.now().timestamp()))
    api = Api(config=config, service=service, challenges=challenges,
              challenge_types=tuple(sorted(
                  name for name, v in verifiers.items() if v.needs_challenge)),
              limiter=RateLimiter(config.limits.rates, clock), faults=FaultLog(clock),
              log_budget=LogBudget(clock),
              metrics=Metrics(tokens.outstanding, _shared_metrics(config)),
              workloads=WorkloadApi(conn, config, clock),
              extra_metrics=lambda: metrics_text(conn),
              store=StoreStatus(kind_of(conn), getattr(conn, "ping", None)))
    app = api.build()
    if config.istio_ca is not None:
        from registrar.istio_ca.wiring import attach
        attach(app, config, service=service, authorities=authority,
               inventory=Inventory(conn, clock), clock=clock)
    if config.oidc is not None:
        from registrar.oidc.api import OidcApi
        OidcApi(config=config.oidc, service=service, clock=clock, peer=peer_certificate,
                max_body_bytes=config.limits.max_body_bytes).add_routes(app)
    return app


def describe(config: RegistrarConfig, conn: Connection) -> str:
    """What the start log says about the store (never the DSN: it may hold a password)."""
    if kind_of(conn) == "sqlite":
        return f"sqlite {config.database}"
    from registrar.store.postgres import SCHEMA_VERSION
    return f"postgres schema {SCHEMA_VERSION} (shared by every replica)"


# The workers' shared counters (several workers only): made by ``serve`` in the
# supervisor before it forks, so every worker inherits the same path.
_shared_counts: Path | None = None


def _shared_metrics(config: RegistrarConfig) -> Path | None:
    return _shared_counts if config.workers > 1 else None


async def _serve(config: RegistrarConfig, *, reuse_port: bool) -> None:
    clock = SystemClock()
    limits = config.limits
    live = LiveCa(config, clock)
    app = build_app(config, clock, live)
    runner = web.AppRunner(app, **runner_options(limits.max_header_bytes,
                                                 limits.request_timeout))
    await runner.setup()
    files = file_limit()
    total = usable_connections(limits.max_connections, files)
    if total < limits.max_connections:
        log.warning("limits.max_connections lowered from %d to %d: this process may open "
                    "%d files (raise LimitNOFILE)", limits.max_connections, total, files)
    gate = ConnectionGate(total=total, per_address=limits.max_connections_per_address,
                          clock=clock)
    log_budget = LogBudget(clock)
    listener = await listen(runner, host=config.host, port=config.port,
                            ssl_context=live.listening, reuse_port=reuse_port,
                            gate=gate, request_timeout=limits.request_timeout,
                            log_budget=log_budget)
    istio_ca = None
    if config.istio_ca is not None:
        from registrar.istio_ca.wiring import serve
        istio_ca = await serve(runner.app, config.istio_ca, live, reuse_port=reuse_port,
                               gate=gate, log_budget=log_budget)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    log.info("serving https://%s:%d pid=%d", config.host, config.port, os.getpid())
    try:
        while not stop.is_set():
            if reuse_port and os.getppid() != parent:
                break  # the supervisor died (kill -9): do not linger as an orphan
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            app[METRICS].flush()  # an idle worker's last counts reach the shared table
    finally:
        app[METRICS].flush()
        listener.close()
        if istio_ca is not None:
            istio_ca.close()
        await runner.cleanup()


def _run(config: RegistrarConfig, *, reuse_port: bool) -> None:
    # uvloop's loop and TCP transports; TLS on top is asyncio's SSLProtocol
    # (registrar/api/tls.py: uvloop's own TLS layer, ~10% cheaper per bootstrap in
    # scripts/bench/registrar_bootstrap.py, drops the alert of a refused handshake).
    uvloop.run(_serve(config, reuse_port=reuse_port))


def warn_if_not_strict(config: RegistrarConfig) -> list[str]:
    """Log what Python 3.13 / Debian 13 agents would refuse in our certificates (a state
    made by an older ``init``, or a CA imported with ``--allow-nonstrict-ca``)."""
    problems = strict_report(load_pem_certs(config.tls_cert)[0],
                             load_pem_certs(config.ca.cert)[0],
                             load_pem_certs(config.ca.chain), load_pem_certs(config.ca.roots))
    for problem in problems:
        log.warning("strict X.509 verifiers (Python 3.13, Debian 13) will refuse this "
                    "registrar: %s", problem)
    return problems


def serve(config: RegistrarConfig) -> int:
    # Create and migrate the database once, before workers race to do it, and build
    # the verifiers once so a bad evidence option exits 78 here, not in every worker.
    conn = open_store(config)
    clock = SystemClock()
    log.info("store: %s", describe(config, conn))
    try:
        build_verifiers(VerifierDeps(config=config, tokens=TokenStore(conn, clock), clock=clock))
        # Certificates expired for a day can never renew again: keep the table small.
        pruned = Inventory(conn, clock).prune_certs(clock.now().timestamp() - 86400)
        if pruned:
            log.info("forgot %d certificates that expired over a day ago", pruned)
    finally:
        conn.close()
    warn_if_not_strict(config)
    if config.oidc is not None:  # once, before workers race to make the first key
        from registrar.oidc.keyring import ensure
        if ensure(config.oidc.key_dir, clock.now().timestamp()):
            log.info("oidc: made the first signing key in %s", config.oidc.key_dir)
    xds = _fork_xds(config) if config.mesh.xds_host else None
    if config.workers == 1:
        try:
            _run(config, reuse_port=False)
        finally:
            if xds is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(xds, signal.SIGTERM)
                os.waitpid(xds, 0)
        return 0
    global _shared_counts  # noqa: PLW0603 - set once before fork, read by the workers
    _shared_counts = make_shared()
    try:
        children: list[int] = [] if xds is None else [xds]
        for _ in range(config.workers):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    _run(config, reuse_port=True)
                except BaseException:
                    log.exception("worker failed")
                    code = 1
                finally:
                    logging.shutdown()
                    os._exit(code)
            children.append(pid)
        return _supervise(children)
    finally:
        shutil.rmtree(_shared_counts.parent, ignore_errors=True)


def _fork_xds(config: RegistrarConfig) -> int:
    """The one xDS server process (registrar/xds/process.py says why one)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from registrar.xds.process import run_xds
            code = run_xds(config)
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _supervise(children: list[int]) -> int:
    """Forward SIGTERM/SIGINT to the workers; if one dies, stop all and fail."""
    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    remaining = set(children)
    while remaining:
        pid, status = os.wait()
        remaining.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0 and code == 0:
            code = 1
            forward(signal.SIGTERM, None)
    return code


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def state_paths(config: RegistrarConfig) -> list[Path]:
    return [config.ca.cert, config.ca.key, config.ca.chain, config.ca.roots, config.tls_cert,
            config.tls_key]
