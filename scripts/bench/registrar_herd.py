"""A herd of VMs bootstrapping at once: every VM attests with its own join token and
renews once, all against one registrar, loopback only.

    .venv/bin/python scripts/bench/registrar_herd.py [--vms 10000] [--concurrency 200]
        [--procs 2] [--workers 2] [--attest-rate 200]

The registrar runs as packaged (``--workers``) with its attest limiter at
``--attest-rate`` per second per worker (burst: one second's worth), so a herd
larger than that meets 429 + Retry-After as a real fleet would; ``--attest-rate
0`` raises it out of the way. The VMs are tests/fixtures/herd.py's client, in
``--procs`` separate processes with ``--concurrency`` VMs at once, each on new TLS
connections. Prints the time until every VM holds an identity (attested and
renewed), the 429/503 answers it met, and the inventory's count of active
workloads; exits 1 on any other answer, any VM without an identity, or an
inventory that does not hold exactly one active workload per VM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from meshcore.clock import SystemClock  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.herd import HerdSpec, run_herd, summarise  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="registrar workers")
    parser.add_argument("--attest-rate", type=float, default=200.0,
                        help="attest requests/s per worker before 429 (0: no limit)")
    args = parser.parse_args()

    rate = args.attest_rate or 1e6
    base = Path(tempfile.mkdtemp(prefix="registrar-herd-"))
    reg = RegistrarProcess(base, groups={"herd": ("herd", "vm", 3600)}, workers=args.workers,
                           config={"log_level": "warning", "limits": {
                               "rate": {"attest": {"per_second": rate,
                                                   "burst": max(1, int(rate))},
                                        "renew": {"per_second": 1e6, "burst": 1_000_000}},
                               # every VM here is 127.0.0.1; a fleet's VMs have an address each
                               "max_connections_per_address": 10_000}})
    reg.init()
    conn = connect(reg.state_dir / "registrar.db")
    tokens = [t.reveal() for t in TokenStore(conn, SystemClock()).create_many(
        "herd", 3600, args.vms)]
    reg.start()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        outcomes = run_herd(HerdSpec(addresses=[(reg.host, reg.port)], ca_file=str(reg.ca_file)),
                            tokens, concurrency=args.concurrency, procs=args.procs)
        wall = time.monotonic() - started
        active = len([w for w in json.loads(reg.cli("workloads", "list", "--json").stdout)
                      if w.get("state") == "active"])
    finally:
        reg.stop()
    summary = summarise(outcomes)
    last = max((o.seconds for o in outcomes), default=0.0)
    print(f"registrar herd: {args.vms} VMs (attest + one renewal each), {args.concurrency} at "
          f"once in {args.procs} client processes; registrar {args.workers} workers, attest "
          f"limit {args.attest_rate:g}/s per worker; {os.cpu_count()} cores")
    print(f"  all VMs hold an identity after {wall:.1f} s ({args.vms / wall:.0f} VMs/s, "
          f"{2 * args.vms / wall:.0f} certificates/s); slowest VM {last:.1f} s")
    print(f"  {summary.line()}")
    print(f"  inventory: {active} active workloads (expected {args.vms})")
    print(f"  load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    if summary.errors or active != args.vms:
        print("registrar_herd: FAILED (see above)")
        return 1
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
