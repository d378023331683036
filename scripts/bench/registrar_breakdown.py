"""Where a bootstrap's server CPU goes: each step of ``POST /v1/attest`` timed alone
(thread CPU time, in this process, on the registrar's own code and state), beside
the whole request measured end to end by scripts/bench/registrar_bootstrap.py.

    .venv/bin/python scripts/bench/registrar_breakdown.py [--n 500]

Steps: the server side of a TLS 1.3 handshake (the registrar's listening context,
client and server over memory BIOs, only the server's calls timed), JSON parsing,
the attest body and CSR checks (parse, self-signature, key policy), the join
token lookup, the issuance (build and sign the leaf), the spend + record
transaction in SQLite (WAL, synchronous=NORMAL), the JSON answer and the decision
log line. What the table does not hold (the event loop, asyncio's TLS record
layer, aiohttp's request and response objects, socket system calls) is the
difference to the end-to-end figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from aiohttp import web  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from meshcore.secret import Secret  # noqa: E402
from registrar.api.wire import parse_attest, parse_json  # noqa: E402
from registrar.ca.csr import check_csr  # noqa: E402
from registrar.ca.live import LiveCa  # noqa: E402
from registrar.config import build_config  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.inventory import Inventory  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from scripts.bench.registrar_bootstrap import make_csr, request_bytes  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402

SPIFFE_ID = "spiffe://example.org/ns/bench/sa/vm"


def cpu_ms(n: int, step: Callable[[int], object]) -> float:
    started = time.thread_time()
    for i in range(n):
        step(i)
    return (time.thread_time() - started) / n * 1000


def handshake_ms(n: int, server: ssl.SSLContext, client: ssl.SSLContext) -> float:
    spent = 0.0
    for _ in range(n):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        tls_client = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
        started = time.thread_time()
        tls_server = server.wrap_bio(s_in, s_out, server_side=True)
        spent += time.thread_time() - started
        client_done = server_done = False
        while not (client_done and server_done):
            try:
                tls_client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            s_in.write(c_out.read())
            started = time.thread_time()
            try:
                tls_server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.thread_time() - started
            c_in.write(s_out.read())
    return spent / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    n = args.n
    reg = RegistrarProcess(Path(tempfile.mkdtemp(prefix="registrar-breakdown-")),
                           groups={"bench": ("bench", "vm", 3600)})
    reg.init()
    config = build_config(reg.config_path)
    clock = SystemClock()
    live = LiveCa(config, clock)
    conn = connect(config.database)
    tokens_store, inventory = TokenStore(conn, clock), Inventory(conn, clock)
    tokens = [t.reveal() for t in tokens_store.create_many("bench", 3600, n)]
    bodies = [request_bytes("127.0.0.1", t, make_csr(i)).split(b"\r\n\r\n", 1)[1]
              for i, t in enumerate(tokens)]
    objects = [parse_json(b) for b in bodies]
    requests = [parse_attest(o) for o in objects]
    authority = live.authority()
    rows = [tokens_store.check(Secret(t)) for t in tokens]
    issued = authority.issue(requests[0].csr.public_key, SPIFFE_ID, 3600)
    answer = {"spiffe_id": SPIFFE_ID, "cert_chain": issued.chain_pem,
              "trust_bundle": authority.bundle_pem, "not_after": "2026-01-01T00:00:00Z",
              "renew_after": "2026-01-01T00:00:00Z", "mesh": {"trust_domain": "example.org"}}
    logging.basicConfig(stream=open(os.devnull, "w"), level="INFO",  # noqa: SIM115
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    decisions = logging.getLogger("registrar.decisions")

    def spend_and_record(i: int) -> None:  # as api/service.py pays with a join token
        inventory.record_attestation(
            evidence_type="join_token", subject=rows[i].id, spiffe_id=SPIFFE_ID,
            group="bench", hostname="bench", addresses=[], serial=f"{i:x}0b", not_after=0.0,
            ca_version="", bundle_version=1, spend=tokens_store.spend_statement(rows[i].id))

    client = ssl.create_default_context(cafile=str(reg.ca_file))
    handshake_ms(20, live.listening, client)  # warm up
    steps = [
        ("TLS 1.3 handshake, server side", handshake_ms(n, live.listening, client)),
        ("JSON body parse", cpu_ms(n, lambda i: parse_json(bodies[i]))),
        ("attest body + CSR checks", cpu_ms(n, lambda i: parse_attest(objects[i]))),
        ("  of which the CSR (parse, signature)", cpu_ms(n, lambda i: check_csr(
            str(objects[i]["csr"])))),
        ("join token lookup", cpu_ms(n, lambda i: tokens_store.check(Secret(tokens[i])))),
        ("issue: build + sign the leaf", cpu_ms(n, lambda i: authority.issue(
            requests[i].csr.public_key, SPIFFE_ID, 3600))),
        ("spend + record (one SQLite transaction)", cpu_ms(n, spend_and_record)),
        ("JSON answer", cpu_ms(n, lambda _: web.json_response(answer))),
        ("decision log line", cpu_ms(n, lambda _: decisions.info(
            "%s ok spiffe_id=%s subject=%s remote=%s", "attest", SPIFFE_ID, "0f", "127.0.0.1"))),
    ]
    print(f"registrar attest steps, thread CPU per call ({n} calls each, load average "
          f"{os.getloadavg()[0]:.1f}):")
    for name, ms in steps:
        print(f"  {name:<42} {ms:6.3f} ms")
    total = sum(ms for name, ms in steps if not name.startswith("  "))
    print(f"  {'sum of the steps':<42} {total:6.3f} ms")
    print("  the rest of a bootstrap's server CPU (scripts/bench/registrar_bootstrap.py) is "
          "the event loop, asyncio's TLS records, aiohttp and socket calls")
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
