"""Istio's CA API on the registrar: CreateCertificate per second beside the
bootstrap figure, in one run.

    .venv/bin/python scripts/bench/istio_ca.py [--total 3000] [--concurrency 200]
        [--workers 2] [--bootstraps 2000]

Starts a real ``mesh-registrar serve`` with ``oidc:`` and ``istio_ca:`` sections and:

1. bootstraps (today's figure): ``--bootstraps`` join-token attestations over HTTPS,
   each on a NEW TLS connection, ``--concurrency`` clients
   (scripts/bench/registrar_bootstrap.py's client);
2. enrols ``--concurrency`` workloads and gets each a registrar JWT (as pilot-agent's
   istio-token), then ``--total`` CreateCertificate calls, each on a NEW gRPC channel
   (a new TCP + TLS connection, as a pilot-agent's first certificate), with the JWT
   and a CSR, ``--concurrency`` at a time (grpcio's C-core client).

Clients run in a separate process. Prints calls/s and p50/p99 of each, with the
server's CPU per call and the load average (the machine is shared).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet  # noqa: E402
import httpx  # noqa: E402

from meshcore.istio_wire import istio_ca_pb2 as pb  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def registrar_tokens(reg: RegistrarProcess, identities: list[tuple[str, str]]) -> list[str]:
    """One registrar JWT per enrolled workload (fetched over mTLS with its certificate)."""
    out = []
    for cert, key in identities:
        ctx = ssl.create_default_context(cafile=str(reg.ca_file))
        ctx.load_cert_chain(cert, key)
        with httpx.Client(base_url=reg.url, verify=ctx, timeout=60) as c:
            r = c.post("/v1/oidc/token", json={"ttl_seconds": 3600})
            r.raise_for_status()
            out.append(str(r.json()["token"]))
    return out


def ca_proc(target: str, roots: bytes, jwts: list[str], csrs: list[str], total: int,
            start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    import grpc
    import grpc.aio

    async def one(jwt: str, csr: str, out: dict[str, Any]) -> None:
        started = time.perf_counter()
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
        request = pb.IstioCertificateRequest(csr=csr, validity_duration=3600)
        try:
            async with grpc.aio.secure_channel(target, creds) as channel:
                call = channel.unary_unary(
                    METHOD, request_serializer=pb.IstioCertificateRequest.SerializeToString,
                    response_deserializer=pb.IstioCertificateResponse.FromString)
                response = await call(request, metadata=[("authorization", f"Bearer {jwt}")],
                                      timeout=120)
        except grpc.aio.AioRpcError as exc:
            fleet.count_error(out, f"{exc.code().name}: {exc.details()}")
            return
        if len(response.cert_chain) < 2:
            out["errors"] += 1
            return
        out["latencies"].append(time.perf_counter() - started)

    async def run() -> dict[str, Any]:
        out = fleet.tally()
        remaining = iter(range(total))

        async def client(jwt: str) -> None:
            for i in remaining:
                await one(jwt, csrs[i % len(csrs)], out)

        await fleet.start_together(start_at, (client(j) for j in jwts))
        return out

    queue.put(asyncio.run(run()))


def main() -> int:
    args = fleet.arguments(__doc__, total=3000)
    port, ca_port = free_port(), free_port()
    config = {**fleet.oidc_config(port),
              "istio_ca": {"listen": f"127.0.0.1:{ca_port}", "rate": dict(fleet.UNLIMITED)}}

    def create_certificate(f: fleet.Fleet, identities: list[tuple[str, str]]) -> fleet.Client:
        jwts = registrar_tokens(f.reg, identities)
        return ca_proc, (f"127.0.0.1:{ca_port}", f.reg.ca_file.read_bytes(), jwts, f.csrs,
                         args.total)

    run = fleet.beside_bootstrap(args, prefix="istio-ca-bench-", port=port, config=config,
                                 measured=create_certificate)
    return fleet.report(run, args, names=("bootstrap (HTTPS attest, token)",
                                          "CreateCertificate (gRPC, JWT)"),
                        key="create_certificate_per_s", per="call", cpu_per="call")


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
