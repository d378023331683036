"""OIDC token issuance throughput beside the bootstrap figure, in one run.

    .venv/bin/python scripts/bench/oidc_tokens.py [--total 5000] [--concurrency 200]
        [--workers 2] [--bootstraps 2000]

Starts a real ``mesh-registrar serve`` with an ``oidc:`` section and:

1. bootstraps (today's figure): ``--bootstraps`` join-token attestations, each on a
   NEW TLS connection, ``--concurrency`` clients (scripts/bench/registrar_bootstrap.py's
   client);
2. enrols ``--concurrency`` workloads (kept: key + certificate), then ``--total``
   ``POST /v1/oidc/token`` requests, each on a NEW TLS connection presenting one
   of those certificates (mTLS), ``--concurrency`` at a time.

Clients run in a separate process. Prints requests/s and p50/p99 of each, with
the server's CPU per request and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import ssl
import statistics
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
import uvloop  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from registrar_bootstrap import client_proc, make_csr, request_bytes  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402
from tests.registrar.csrs import csr_pem  # noqa: E402

TOKEN_REQUEST = b"{}"


def enrol(reg: RegistrarProcess, tokens: list[str], where: Path) -> list[tuple[str, str]]:
    """Attest once per token, keeping each key and chain (the clients' mTLS identities)."""
    pairs = []
    ctx = ssl.create_default_context(cafile=str(reg.ca_file))
    with httpx.Client(base_url=reg.url, verify=ctx, timeout=60) as c:
        for i, token in enumerate(tokens):
            key = ec.generate_private_key(ec.SECP256R1())
            r = c.post("/v1/attest", json={"evidence": {"type": "join_token", "token": token},
                                           "csr": csr_pem(key)})
            r.raise_for_status()
            cert, keyf = where / f"{i}.crt", where / f"{i}.key"
            cert.write_text(r.json()["cert_chain"])
            keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            pairs.append((str(cert), str(keyf)))
    return pairs


async def one_token(host: str, port: int, ctx: ssl.SSLContext, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    writer.write((f"POST /v1/oidc/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                  f"application/json\r\nContent-Length: {len(TOKEN_REQUEST)}\r\n"
                  "Connection: close\r\n\r\n").encode() + TOKEN_REQUEST)
    data = await reader.read()
    writer.close()
    if len(data) < 12:  # closed with no answer
        out["conn_errors"] += 1
        return
    if int(data[9:12]) != 200 or b'"token"' not in data:
        out["errors"] += 1
        if not out["first_error"]:
            out["first_error"] = data[:400].decode(errors="replace")
        return
    out["latencies"].append(time.perf_counter() - started)


def token_proc(host: str, port: int, ca: str, identities: list[tuple[str, str]], total: int,
               start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"latencies": [], "errors": 0, "conn_errors": 0,
                               "first_error": ""}
        remaining = iter(range(total))

        async def client(cert: str, key: str) -> None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(cert, key)
            for _ in remaining:
                try:
                    await one_token(host, port, ctx, out)
                except OSError:
                    out["conn_errors"] += 1

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(client(c, k) for c, k in identities))
        return out

    queue.put(uvloop.run(run()))


def _quantiles(latencies: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return q[49] * 1000, q[98] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--bootstraps", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = f"{os.getloadavg()[0]:.2f}"
    base = Path(tempfile.mkdtemp(prefix="oidc-bench-"))
    port = free_port()
    fast = {"per_second": 1e6, "burst": 1_000_000}
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, port=port,
                           workers=args.workers, config={
                               "limits": {"rate": {"attest": dict(fast)}},
                               "oidc": {"issuer": f"https://127.0.0.1:{port}",
                                        "rate": dict(fast), "per_workload": dict(fast)}})
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
        # 2. Tokens.
        identities = enrol(reg, tokens[args.bootstraps:], base)
        cpu0, start_at = server_cpu(), time.time() + 1.0
        proc = mp.Process(target=token_proc, args=("127.0.0.1", port, str(reg.ca_file),
                                                   identities, args.total, start_at, queue))
        proc.start()
        tok = queue.get()
        proc.join()
        tok_wall, tok_cpu = time.time() - start_at, server_cpu() - cpu0
    finally:
        reg.stop()
    print(f"mesh-registrar, {args.workers} worker(s), {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent clients, a new TLS connection per request")
    for name, res, wall, cpu, n_total in (
            ("bootstrap (attest, join token)", boot, boot_wall, boot_cpu, args.bootstraps),
            ("oidc token (mTLS)", tok, tok_wall, tok_cpu, args.total)):
        lat = sorted(res["latencies"])
        p50, p99 = _quantiles(lat)
        print(f"  {name:<31} {len(lat)}/{n_total} ok  {len(lat) / wall:7.0f}/s  "
              f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  server CPU "
              f"{cpu / max(1, len(lat)) * 1000:.2f} ms/req  errors {res['errors']}"
              f"+{res['conn_errors']}")
        if res.get("first_error"):
            print(f"    first error: {res['first_error']!r}")
    print(f"  load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
    log = reg.log_text()
    print(f"  a JWT in the registrar's log: {'YES (bug)' if 'eyJ' in log else 'no'}")
    print(json.dumps({"bootstrap_per_s": round(len(boot['latencies']) / boot_wall),
                      "token_per_s": round(len(tok['latencies']) / tok_wall)}))
    ok = (boot["errors"] == tok["errors"] == 0 and len(tok["latencies"]) == args.total)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
