"""Registrar bootstrap throughput: >= 200 concurrent agents, each attesting on a NEW
TLS connection with its own join token and pre-generated CSR.

    .venv/bin/python scripts/bench/registrar_bootstrap.py [--total 5000]
        [--concurrency 200] [--workers 2] [--client-procs 1]

Starts a real ``mesh-registrar serve`` (its own processes), pre-creates the tokens
directly through the registrar's store module, pre-generates CSRs, then runs the
clients in separate processes (so client and server do not share an event loop;
they do share this machine's cores). A 429 is retried after its Retry-After and
counted; any other failure is an error. Prints bootstraps/s and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import uvloop  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402


def make_csr(_: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def request_bytes(host: str, token: str, csr: str) -> bytes:
    body = json.dumps({"evidence": {"type": "join_token", "token": token}, "csr": csr,
                       "hostname": "bench"}).encode()
    head = (f"POST /v1/attest HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


async def one(host: str, port: int, ctx: ssl.SSLContext, payload: bytes,
              out: dict[str, list[float] | int]) -> None:
    """One agent bootstrap on a new connection; retries only 429s (after Retry-After)."""
    started = time.perf_counter()
    while True:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                       server_hostname=host)
        writer.write(payload)
        data = await reader.read()
        writer.close()
        status = int(data[9:12])
        if status == 429:
            out["rate_limited"] = int(out["rate_limited"]) + 1  # type: ignore[arg-type]
            headers = data.split(b"\r\n\r\n", 1)[0].decode().lower()
            wait = int(headers.split("retry-after:", 1)[1].split("\r\n", 1)[0])
            await asyncio.sleep(wait)
            continue
        if status != 200 or b'"spiffe_id"' not in data:
            out["errors"] = int(out["errors"]) + 1  # type: ignore[arg-type]
            return
        out["latencies"].append(time.perf_counter() - started)  # type: ignore[union-attr]
        return


def client_proc(host: str, port: int, ca: str, payloads: list[bytes], concurrency: int,
                start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> dict[str, list[float] | int]:
        ctx = ssl.create_default_context(cafile=ca)
        out: dict[str, list[float] | int] = {"latencies": [], "errors": 0, "rate_limited": 0,
                                             "conn_errors": 0}
        todo = iter(payloads)

        async def worker() -> None:
            for payload in todo:
                try:
                    await one(host, port, ctx, payload, out)
                except OSError:
                    out["conn_errors"] = int(out["conn_errors"]) + 1  # type: ignore[arg-type]

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu"] = usage.ru_utime + usage.ru_stime  # type: ignore[assignment]
        return out

    queue.put(uvloop.run(run()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="registrar worker processes")
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--attest-rate", type=float, default=5000.0,
                        help="server attest token bucket per worker (per second; burst = 1 s)")
    args = parser.parse_args()

    load_before = f"{os.getloadavg()[0]:.2f}"
    base = Path(tempfile.mkdtemp(prefix="registrar-bench-"))
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, workers=args.workers,
                           config={"log_level": "info", "limits": {"rate": {
                               "attest": {"per_second": args.attest_rate,
                                          "burst": max(1, int(args.attest_rate))}}}})
    reg.init()
    t0 = time.perf_counter()
    tokens = [t.reveal() for t in TokenStore(connect(reg.state_dir / "registrar.db"), SystemClock())
              .create_many("bench", 3600, args.total)]
    t_tokens = time.perf_counter() - t0
    t0 = time.perf_counter()
    with mp.Pool(os.cpu_count()) as pool:
        csrs = pool.map(make_csr, range(args.total), chunksize=250)
    t_csrs = time.perf_counter() - t0
    payloads = [request_bytes("127.0.0.1", t, c) for t, c in zip(tokens, csrs, strict=True)]
    reg.start()
    server = psutil.Process(reg.pid)

    def server_cpu() -> float:
        total = 0.0
        for proc in [server, *server.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total

    cpu_before = server_cpu()
    try:
        queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        start_at = time.time() + 1.0
        per = args.concurrency // args.client_procs
        procs = [mp.Process(target=client_proc, args=(
            "127.0.0.1", reg.port, str(reg.ca_file), payloads[i::args.client_procs], per,
            start_at, queue)) for i in range(args.client_procs)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.time() - start_at
        cpu_server = server_cpu() - cpu_before
    finally:
        reg.stop()
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = sum(r["errors"] for r in results)
    conn_errors = sum(r["conn_errors"] for r in results)
    limited = sum(r["rate_limited"] for r in results)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"registrar bootstrap: {len(latencies)}/{args.total} ok, {args.concurrency} concurrent "
          f"clients ({args.client_procs} proc), {args.workers} server worker(s), "
          f"{os.cpu_count()} cores")
    print(f"  tokens pre-created in {t_tokens:.2f}s, CSRs pre-generated in {t_csrs:.2f}s")
    print(f"  wall {wall:.2f}s  ->  {len(latencies) / wall:.0f} bootstraps/s")
    print(f"  latency p50 {q[49] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms  "
          f"max {latencies[-1] * 1000 if latencies else 0:.1f} ms")
    cpu_client = sum(float(r["cpu"]) for r in results)
    n = max(1, len(latencies))
    print(f"  CPU per bootstrap: server {cpu_server / n * 1000:.2f} ms, client "
          f"{cpu_client / n * 1000:.2f} ms  (server alone on {os.cpu_count()} cores: "
          f"~{(os.cpu_count() or 1) * n / cpu_server:.0f}/s ceiling)")
    print(f"  load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
    print(f"  429 retried: {limited}  errors: {errors}  connection errors: {conn_errors}")
    rows = reg.cli("workloads", "list", "--json").stdout
    print(f"  inventory: {len(json.loads(rows))} workloads recorded")
    return 0 if errors == 0 and conn_errors == 0 and len(latencies) == args.total else 1


if __name__ == "__main__":
    sys.exit(main())
