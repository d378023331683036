"""Registrar renewal throughput (a fleet renewing in a herd after a restart): each
agent opens a NEW mutual-TLS connection with its own certificate and renews.

    .venv/bin/python scripts/bench/registrar_renew.py [--total 1000] [--concurrency 200]
        [--workers 2] [--store sqlite|postgres]

Workloads are enrolled directly through the registrar's CA and inventory modules
(the bootstrap benchmark measures attestation); per-agent TLS contexts are built
before the clock starts. Prints renewals/s, p50/p99 latency and CPU per renewal.
``--store postgres`` runs the registrar on a PostgreSQL started as
registrar_bootstrap.py starts it (the test fixture's server: Debian's binaries,
a temporary data directory, Unix socket, fsync off); its CPU is counted in the
server's and printed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from fleet import ServerCpu, issue, quantiles_ms, run_phase  # noqa: E402
from registrar_bootstrap import make_csr  # noqa: E402

from tests.fixtures.postgres import PostgresServer  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402


def client_proc(port: int, ca: str, jobs: list[tuple[str, str, str]], concurrency: int,
                start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    contexts = []
    for chain, key, csr in jobs:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(chain, key)
        body = json.dumps({"csr": csr}).encode()
        contexts.append((ctx, b"POST /v1/renew HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nConnection: close\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body))

    async def run() -> dict[str, object]:
        latencies: list[float] = []
        errors = 0
        todo = iter(contexts)

        async def worker() -> None:
            nonlocal errors
            for ctx, payload in todo:
                started = time.perf_counter()
                while True:
                    try:
                        reader, writer = await asyncio.open_connection(
                            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
                        writer.write(payload)
                        data = await reader.read()
                        writer.close()
                    except OSError:
                        errors += 1
                        break
                    if data[9:12] == b"429":
                        await asyncio.sleep(1)
                        continue
                    if data[9:12] == b"200":
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
                    break

        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"latencies": latencies, "errors": errors, "cpu": usage.ru_utime + usage.ru_stime,
                "wall": time.perf_counter() - began}

    queue.put(uvloop.run(run()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="registrar-renew-bench-"))
    database: PostgresServer | None = None
    store = None
    if args.store == "postgres":
        # Its own directory: initdb runs as the postgres user, which cannot enter
        # this benchmark's private temporary directory.
        database = PostgresServer(Path(tempfile.mkdtemp(prefix="mesh-pg-bench-")))
        database.init()
        database.start()
        store = {"type": "postgres", "dsn": database.new_database(migrated=False)}
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, workers=args.workers,
                           # Every client is 127.0.0.1: its bucket and its connection
                           # cap are raised (a fleet's VMs have addresses of their own;
                           # at 128 per worker, 200 connections spread unevenly over 2
                           # workers were refused now and then).
                           config={"limits": {"rate": {"renew": {"per_second": 5000,
                                                                 "burst": 5000}},
                                              "max_connections_per_address": 1000}},
                           store=store)
    try:
        reg.init()
        if database is not None:
            reg.cli("migrate")
        files = issue(reg.config_path, args.total, base)
        jobs = [(str(c), str(k), make_csr(i)) for i, (c, k) in enumerate(files)]
        reg.start()
        postmaster = [] if database is None else [
            int((database.data / "postmaster.pid").read_text().split()[0])]
        server_cpu = ServerCpu(reg.pid, *postmaster)
        pg_cpu = ServerCpu(*postmaster) if postmaster else None
        pg0 = pg_cpu() if pg_cpu is not None else 0.0
        # Per-agent TLS contexts are built in the lead time, before the clock starts.
        phase = run_phase(client_proc, (reg.port, str(reg.ca_file), jobs, args.concurrency),
                          server_cpu, lead=5.0)
        pg_spent = pg_cpu() - pg0 if pg_cpu is not None else 0.0
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)  # private keys and the CA
        if database is not None:
            database.stop()
            shutil.rmtree(database.base, ignore_errors=True)
    result = phase.result
    wall = float(result["wall"])
    latencies = sorted(result["latencies"])
    p50, p99 = quantiles_ms(latencies)
    n = max(1, len(latencies))
    print(f"registrar renew ({args.store}): {len(latencies)}/{args.total} ok over new mTLS "
          f"connections, {args.concurrency} concurrent, {args.workers} worker(s), "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"  wall {wall:.2f}s  ->  {len(latencies) / wall:.0f} renewals/s")
    print(f"  latency p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    print(f"  server CPU per renewal {phase.server_cpu / n * 1000:.2f} ms; "
          f"errors {result['errors']}")
    if database is not None:
        print(f"  of which PostgreSQL {pg_spent / n * 1000:.2f} ms per renewal")
    return 0 if len(latencies) == args.total else 1


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
