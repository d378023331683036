"""Registrar renewal throughput (a fleet renewing in a herd after a restart): each
agent opens a NEW mutual-TLS connection with its own certificate and renews.

    .venv/bin/python scripts/bench/registrar_renew.py [--total 1000] [--concurrency 200]
        [--workers 2]

Workloads are enrolled directly through the registrar's CA and inventory modules
(the bootstrap benchmark measures attestation); per-agent TLS contexts are built
before the clock starts. Prints renewals/s, p50/p99 latency and CPU per renewal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import secrets
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
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from registrar.ca.authority import load_authority  # noqa: E402
from registrar.config import build_config  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.inventory import Inventory  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from registrar_bootstrap import make_csr  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402


def enrol(reg: RegistrarProcess, count: int, out: Path) -> list[tuple[Path, Path]]:
    config = build_config(reg.config_path)
    authority = load_authority(config.ca)
    inventory = Inventory(connect(config.database), SystemClock())
    group = config.groups["bench"]
    files = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = authority.issue(key.public_key(), group.spiffe_id, group.cert_ttl)
        inventory.record_attestation(
            evidence_type="join_token", subject=secrets.token_hex(8), spiffe_id=group.spiffe_id,
            group=group.name, hostname=f"vm-{i}", addresses=[], serial=issued.serial_hex,
            not_after=issued.not_after.timestamp())
        chain, key_file = out / f"{i}.pem", out / f"{i}.key"
        chain.write_text(issued.chain_pem)
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        files.append((chain, key_file))
    return files


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
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="registrar-renew-bench-"))
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, workers=args.workers,
                           config={"limits": {"rate": {"renew": {"per_second": 5000,
                                                                 "burst": 5000}}}})
    reg.init()
    files = enrol(reg, args.total, base)
    jobs = [(str(c), str(k), make_csr(i)) for i, (c, k) in enumerate(files)]
    reg.start()
    server = psutil.Process(reg.pid)

    def server_cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in [server, *server.children(recursive=True)])

    before = server_cpu()
    try:
        queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        start_at = time.time() + 5.0  # per-agent TLS contexts are built before this
        proc = mp.Process(target=client_proc, args=(reg.port, str(reg.ca_file), jobs,
                                                    args.concurrency, start_at, queue))
        proc.start()
        result = queue.get()
        proc.join()
        wall = float(result["wall"])  # type: ignore[arg-type]
        cpu_server = server_cpu() - before
    finally:
        reg.stop()
    latencies = sorted(result["latencies"])  # type: ignore[arg-type]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    n = max(1, len(latencies))
    print(f"registrar renew: {len(latencies)}/{args.total} ok over new mTLS connections, "
          f"{args.concurrency} concurrent, {args.workers} worker(s), {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"  wall {wall:.2f}s  ->  {len(latencies) / wall:.0f} renewals/s")
    print(f"  latency p50 {q[49] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms")
    print(f"  server CPU per renewal {cpu_server / n * 1000:.2f} ms; errors {result['errors']}")
    return 0 if len(latencies) == args.total else 1


if __name__ == "__main__":
    sys.exit(main())
