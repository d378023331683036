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
import uvloop  # noqa: E402

from tests.fixtures.registrar import free_port  # noqa: E402

TOKEN_REQUEST = b"{}"


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
        fleet.count_error(out, data[:400].decode(errors="replace"))
        return
    out["latencies"].append(time.perf_counter() - started)


def token_proc(host: str, port: int, ca: str, identities: list[tuple[str, str]], total: int,
               start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> dict[str, Any]:
        out = fleet.tally()
        remaining = iter(range(total))

        async def client(cert: str, key: str) -> None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(cert, key)
            for _ in remaining:
                try:
                    await one_token(host, port, ctx, out)
                except OSError:
                    out["conn_errors"] += 1

        await fleet.start_together(start_at, (client(c, k) for c, k in identities))
        return out

    queue.put(uvloop.run(run()))


def main() -> int:
    args = fleet.arguments(__doc__, total=5000)
    port = free_port()

    def tokens(f: fleet.Fleet, identities: list[tuple[str, str]]) -> fleet.Client:
        return token_proc, ("127.0.0.1", port, str(f.reg.ca_file), identities, args.total)

    run = fleet.beside_bootstrap(args, prefix="oidc-bench-", port=port,
                                 config=fleet.oidc_config(port), measured=tokens)
    return fleet.report(run, args, names=("bootstrap (attest, join token)", "oidc token (mTLS)"),
                        key="token_per_s", per="request", cpu_per="req")


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
