"""xDS across replicas: how long a change made through replica A takes to reach
an ADS client of replica B, beside A's own client measured in the same run.

    .venv/bin/python scripts/bench/xds_replicas.py [--rounds 30]

Two ``mesh-registrar serve`` replicas on one PostgreSQL (Debian's package,
started as the tests start it), each with its own API and xDS port on loopback.
One EDS subscriber (tests/registrar/xds/eds_watch.py, its own process) is held
open on each replica's xDS. Each round, a VM reports a health flip
(healthy <-> unhealthy) to replica A's API; the delay is from the moment A
answered the report (the row committed) to the push received by each
subscriber. Every replica's xDS server learns of changes by polling the shared
change counter (``xds.poll_interval``, 50 ms) and debounces bursts
(``debounce_quiet``, 100 ms), so ~0.1-0.2 s is the expected floor for both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fixtures.postgres import PostgresServer  # noqa: E402
from tests.registrar.xds.replicas import (  # noqa: E402
    ORDERS_PORT,
    ORDERS_SERVICE,
    EdsWatch,
    Vm,
    start_pair,
)

ADDRESS = "127.0.0.2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a push may take before the run fails")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="xds-replicas-"))
    database = PostgresServer(Path(tempfile.mkdtemp(prefix="mesh-pg-bench-")))
    database.init()
    database.start()
    pair = watches = None
    try:
        database.make_template()
        pair = start_pair(base, database.new_database())
        a, b = pair
        a.cli("service", "add", *ORDERS_SERVICE)
        frontend, orders = Vm(base, "frontend"), Vm(base, "orders")
        frontend.attest(b)
        orders.attest(a)
        watches = {"B (other replica)": EdsWatch("B", b, frontend),
                   "A (same replica, reference)": EdsWatch("A", a, frontend)}
        for watch in watches.values():
            watch.wait([], since=0, timeout=args.timeout)
        delays: dict[str, list[float]] = {name: [] for name in watches}
        loads = []
        for i in range(args.rounds):
            healthy = i % 2 == 0
            before = time.time()
            orders.report(a, ADDRESS, "healthy" if healthy else "unhealthy")
            answered = time.time()
            expected = [f"{ADDRESS}:{ORDERS_PORT}"] if healthy else []
            for name, watch in watches.items():
                # Waited for from before the call (a push may beat the answer home),
                # measured from the answer; a push before it counts as 0.
                pushed = before + watch.wait(expected, since=before, timeout=args.timeout)
                delays[name].append(max(0.0, pushed - answered))
            loads.append(os.getloadavg()[0])
        print(f"health change reported to replica A -> EDS push received, {args.rounds} "
              f"rounds, PostgreSQL, poll 50 ms + debounce 100 ms; load "
              f"{min(loads):.1f}-{max(loads):.1f}")
        print("| subscriber on | median ms | p90 ms | max ms |")
        print("|---|---|---|---|")
        for name, values in delays.items():
            ms = sorted(v * 1000 for v in values)
            p90 = statistics.quantiles(ms, n=10)[8] if len(ms) > 1 else ms[0]
            print(f"| {name} | {statistics.median(ms):.0f} | {p90:.0f} | {ms[-1]:.0f} |")
        return 0
    finally:
        for watch in (watches or {}).values():
            watch.close()
        for reg in pair or ():
            reg.kill()
        database.stop()
        shutil.rmtree(database.base, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
