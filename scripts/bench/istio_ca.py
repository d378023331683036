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

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
from oidc_tokens import _quantiles, enrol  # noqa: E402
from registrar_bootstrap import client_proc, make_csr, request_bytes  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from meshcore.istio_wire import istio_ca_pb2 as pb  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def registrar_tokens(reg: RegistrarProcess, identities: list[tuple[str, str]]) -> list[str]:
    """One registrar JWT per enrolled workload (fetched over mTLS with its certificate)."""
    out = []
    for cert, key in identities:
        import ssl
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
            out["errors"] += 1
            if not out["first_error"]:
                out["first_error"] = f"{exc.code().name}: {exc.details()}"
            return
        if len(response.cert_chain) < 2:
            out["errors"] += 1
            return
        out["latencies"].append(time.perf_counter() - started)

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"latencies": [], "errors": 0, "conn_errors": 0,
                               "first_error": ""}
        remaining = iter(range(total))

        async def client(jwt: str) -> None:
            for i in remaining:
                await one(jwt, csrs[i % len(csrs)], out)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(client(j) for j in jwts))
        return out

    queue.put(asyncio.run(run()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=3000)
    parser.add_argument("--bootstraps", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = f"{os.getloadavg()[0]:.2f}"
    base = Path(tempfile.mkdtemp(prefix="istio-ca-bench-"))
    port, ca_port = free_port(), free_port()
    fast = {"per_second": 1e6, "burst": 1_000_000}
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, port=port,
                           workers=args.workers, config={
                               "limits": {"rate": {"attest": dict(fast)}},
                               "oidc": {"issuer": f"https://127.0.0.1:{port}",
                                        "rate": dict(fast), "per_workload": dict(fast)},
                               "istio_ca": {"listen": f"127.0.0.1:{ca_port}",
                                            "rate": dict(fast)}})
    reg.init()
    store = TokenStore(connect(reg.state_dir / "registrar.db"), SystemClock())
    tokens = [t.reveal() for t in store.create_many("bench", 3600,
                                                    args.bootstraps + args.concurrency)]
    with mp.Pool(os.cpu_count()) as pool:
        csrs = pool.map(make_csr, range(args.bootstraps), chunksize=250)
    payloads = [request_bytes("127.0.0.1", t, c) for t, c in zip(tokens, csrs, strict=False)]
    reg.start()
    server = psutil.Process(reg.pid)

    def server_cpu() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system
                   for p in [server, *server.children(recursive=True)])

    try:
        queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        # 1. Bootstraps.
        cpu0, start_at = server_cpu(), time.time() + 1.0
        proc = mp.Process(target=client_proc, args=("127.0.0.1", port, str(reg.ca_file),
                                                    payloads, args.concurrency, start_at, queue))
        proc.start()
        boot = queue.get()
        proc.join()
        boot_wall, boot_cpu = time.time() - start_at, server_cpu() - cpu0
        # 2. CreateCertificate with registrar JWTs.
        jwts = registrar_tokens(reg, enrol(reg, tokens[args.bootstraps:], base))
        cpu0, start_at = server_cpu(), time.time() + 1.0
        proc = mp.Process(target=ca_proc, args=(
            f"127.0.0.1:{ca_port}", reg.ca_file.read_bytes(), jwts, csrs, args.total,
            start_at, queue))
        proc.start()
        ca = queue.get()
        proc.join()
        ca_wall, ca_cpu = time.time() - start_at, server_cpu() - cpu0
    finally:
        reg.stop()
    print(f"mesh-registrar, {args.workers} worker(s), {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent clients, a new TLS connection per call")
    for name, res, wall, cpu, n_total in (
            ("bootstrap (HTTPS attest, token)", boot, boot_wall, boot_cpu, args.bootstraps),
            ("CreateCertificate (gRPC, JWT)", ca, ca_wall, ca_cpu, args.total)):
        lat = sorted(res["latencies"])
        p50, p99 = _quantiles(lat)
        print(f"  {name:<31} {len(lat)}/{n_total} ok  {len(lat) / wall:7.0f}/s  "
              f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  server CPU "
              f"{cpu / max(1, len(lat)) * 1000:.2f} ms/call  errors {res['errors']}"
              f"+{res['conn_errors']}")
        if res.get("first_error"):
            print(f"    first error: {res['first_error']!r}")
    print(f"  load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
    log = reg.log_text()
    print(f"  a JWT in the registrar's log: {'YES (bug)' if 'eyJ' in log else 'no'}")
    print(json.dumps({"bootstrap_per_s": round(len(boot['latencies']) / boot_wall),
                      "create_certificate_per_s": round(len(ca['latencies']) / ca_wall)}))
    ok = boot["errors"] == ca["errors"] == 0 and len(ca["latencies"]) == args.total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
