"""The registrar side of the request benchmarks (oidc_tokens.py, istio_ca.py,
registrar_renew.py, xds_push.py; side_by_side.py takes its join tokens): a real
``mesh-registrar`` with a ``bench`` group and join tokens, workload identities (key
and certificate files) enrolled through its API or issued straight from its CA, and
client phases timed in a separate process beside the server's CPU; for the
benchmarks that print a figure beside the bootstrap figure of the same run, that
whole run (``beside_bootstrap``).

Imported by those scripts, never run itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from registrar_bootstrap import client_proc, make_csr, request_bytes  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from registrar.ca.authority import load_authority  # noqa: E402
from registrar.config import build_config  # noqa: E402
from registrar.store.connection import open_store  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.inventory import Inventory  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402
from tests.registrar.csrs import csr_pem  # noqa: E402

# A rate bucket no benchmark reaches: every client is 127.0.0.1, where a fleet's VMs
# would each have an address (and a bucket) of their own.
UNLIMITED = {"per_second": 1e6, "burst": 1_000_000}


def oidc_config(port: int) -> dict[str, Any]:
    """Attestation and the ``oidc:`` section unlimited, the issuer on ``port``; the
    per-address connection cap (128 per worker, counting the HTTPS API's and the
    Istio CA port's) raised for the same reason as the rate buckets."""
    return {"limits": {"rate": {"attest": dict(UNLIMITED)},
                       "max_connections_per_address": 10_000},
            "oidc": {"issuer": f"https://127.0.0.1:{port}", "rate": dict(UNLIMITED),
                     "per_workload": dict(UNLIMITED)}}


@dataclass
class Fleet:
    """A started registrar, the bootstrap requests made ready for it and the join
    tokens left over for other clients."""

    reg: RegistrarProcess
    csrs: list[str]
    payloads: list[bytes]
    spare_tokens: list[str]


def join_tokens(reg: RegistrarProcess, count: int) -> list[str]:
    """``count`` join tokens for the ``bench`` group, valid 1 h, made in the store of
    an initialised registrar."""
    store = TokenStore(connect(reg.state_dir / "registrar.db"), SystemClock())
    return [t.reveal() for t in store.create_many("bench", 3600, count)]


def start_fleet(base: Path, *, port: int, workers: int, config: dict[str, Any],
                bootstraps: int, spare: int) -> Fleet:
    """Start ``mesh-registrar serve`` with a ``bench`` group after making
    ``bootstraps + spare`` join tokens, and one attest request (token + fresh P-256
    CSR) per bootstrap."""
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)}, port=port,
                           workers=workers, config=config)
    reg.init()
    tokens = join_tokens(reg, bootstraps + spare)
    with mp.Pool(os.cpu_count()) as pool:
        csrs = pool.map(make_csr, range(bootstraps), chunksize=250)
    payloads = [request_bytes("127.0.0.1", t, c) for t, c in zip(tokens, csrs, strict=False)]
    reg.start()
    return Fleet(reg, csrs, payloads, tokens[bootstraps:])


def write_identity(out: Path, name: str, key: ec.EllipticCurvePrivateKey,
                   chain_pem: str) -> tuple[Path, Path]:
    """``out/name.pem`` (the chain) and ``out/name.key`` (PKCS#8, mode 0600)."""
    chain, key_file = out / f"{name}.pem", out / f"{name}.key"
    chain.write_text(chain_pem)
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return chain, key_file


def enrol(reg: RegistrarProcess, tokens: list[str], where: Path) -> list[tuple[str, str]]:
    """Attest once per token over the API, keeping each key and chain (the clients'
    mTLS identities)."""
    pairs = []
    ctx = ssl.create_default_context(cafile=str(reg.ca_file))
    with httpx.Client(base_url=reg.url, verify=ctx, timeout=60) as c:
        for i, token in enumerate(tokens):
            key = ec.generate_private_key(ec.SECP256R1())
            r = c.post("/v1/attest", json={"evidence": {"type": "join_token", "token": token},
                                           "csr": csr_pem(key)})
            r.raise_for_status()
            chain, key_file = write_identity(where, str(i), key, r.json()["cert_chain"])
            pairs.append((str(chain), str(key_file)))
    return pairs


def issue(config_path: Path, count: int, out: Path, *,
          addresses: Callable[[int], list[str]] = lambda i: []) -> list[tuple[Path, Path]]:
    """``count`` identities of the ``bench`` group issued by the registrar's own CA
    code and recorded in its inventory as attestation would (the registrar need not
    run): for benchmarks of what comes after attestation."""
    config = build_config(config_path)
    authority = load_authority(config.ca)
    inventory = Inventory(open_store(config), SystemClock())  # the configured store
    group = config.groups["bench"]
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = authority.issue(key.public_key(), group.spiffe_id, group.cert_ttl)
        inventory.record_attestation(evidence_type="join_token", subject=f"bench-{i}",
                                     spiffe_id=group.spiffe_id, group=group.name,
                                     hostname=f"vm{i}", addresses=addresses(i),
                                     serial=issued.serial_hex,
                                     not_after=issued.not_after.timestamp())
        pairs.append(write_identity(out, str(i), key, issued.chain_pem))
    return pairs


class ServerCpu:
    """User + system CPU seconds of server processes and all their children."""

    def __init__(self, *pids: int | None) -> None:
        if not pids or None in pids:  # psutil.Process(None) would be this process
            raise RuntimeError("the server is not running")
        self._servers = [psutil.Process(pid) for pid in pids]

    def __call__(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for server in self._servers
                   for p in [server, *server.children(recursive=True)])


def tally() -> dict[str, Any]:
    """What a client process counts and puts on its queue (``print_phases`` reads it)."""
    return {"latencies": [], "errors": 0, "conn_errors": 0, "first_error": ""}


def count_error(out: dict[str, Any], what: str) -> None:
    """One refused or wrong answer; the first one is kept to be printed."""
    out["errors"] += 1
    out["first_error"] = out["first_error"] or what


async def start_together(start_at: float, clients: Iterable[Awaitable[None]]) -> None:
    """Wait for the agreed start (so each client process's set-up is not timed), then
    run the clients to their end."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*clients)


@dataclass
class Phase:
    """What one client process put on its queue, the wall time from the agreed start
    to its end, and the server's CPU seconds meanwhile."""

    result: dict[str, Any]
    wall: float
    server_cpu: float


def run_phase(client: Callable[..., None], args: tuple[Any, ...], server_cpu: ServerCpu,
              *, lead: float = 1.0) -> Phase:
    """Run ``client(*args, start_at, queue)`` in a new process; all its connections
    wait for ``start_at``, ``lead`` seconds from now, so its own set-up is not timed."""
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    cpu0, start_at = server_cpu(), time.time() + lead
    proc = mp.Process(target=client, args=(*args, start_at, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return Phase(result, time.time() - start_at, server_cpu() - cpu0)


def quantiles_ms(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (zeros below two samples)."""
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return q[49] * 1000, q[98] * 1000


def arguments(doc: str, *, total: int) -> argparse.Namespace:
    """The options of a benchmark run ``beside_bootstrap``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--total", type=int, default=total)
    parser.add_argument("--bootstraps", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


# A client process's function and its arguments (those before start_at and the queue).
Client = tuple[Callable[..., None], tuple[Any, ...]]
# The measured client, given the fleet and the identities enrolled from its spare tokens.
Measured = Callable[[Fleet, list[tuple[str, str]]], Client]


@dataclass
class Run:
    """A run ``beside_bootstrap``: its registrar (stopped, its log kept), both
    phases, and the load average (1 min) before it started."""

    reg: RegistrarProcess
    boot: Phase
    measured: Phase
    load_before: float


def beside_bootstrap(args: argparse.Namespace, *, prefix: str, port: int,
                     config: dict[str, Any], measured: Measured) -> Run:
    """``args.bootstraps`` attestations, each on a new TLS connection with
    ``args.concurrency`` clients (today's bootstrap figure), then ``args.concurrency``
    workloads enrolled and the ``measured`` client run, on one registrar listening
    on ``port``, its files in a new directory named from ``prefix``."""
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix=prefix))
    fleet = start_fleet(base, port=port, workers=args.workers, config=config,
                        bootstraps=args.bootstraps, spare=args.concurrency)
    reg = fleet.reg
    server_cpu = ServerCpu(reg.pid)
    try:
        boot = run_phase(client_proc, ("127.0.0.1", port, str(reg.ca_file), fleet.payloads,
                                       args.concurrency), server_cpu)
        client, client_args = measured(fleet, enrol(reg, fleet.spare_tokens, base))
        other = run_phase(client, client_args, server_cpu)
    finally:
        reg.stop()
    return Run(reg, boot, other, load_before)


def report(run: Run, args: argparse.Namespace, *, names: tuple[str, str], key: str,
           per: str, cpu_per: str) -> int:
    """A line per phase (ok/total, rate, p50/p99, server CPU per ``cpu_per``, errors),
    the load average, whether a JWT reached the registrar's log and a JSON line of
    both rates (the measured one's as ``key``); ``per`` names what each new TLS
    connection carries. Returns the exit code: 0 if neither phase had an error and
    the measured one completed ``args.total``."""
    boot, other = run.boot, run.measured
    print(f"mesh-registrar, {args.workers} worker(s), {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent clients, a new TLS connection per {per}")
    for name, phase, n_total in ((names[0], boot, args.bootstraps),
                                 (names[1], other, args.total)):
        res = phase.result
        lat = sorted(res["latencies"])
        p50, p99 = quantiles_ms(lat)
        print(f"  {name:<31} {len(lat)}/{n_total} ok  {len(lat) / phase.wall:7.0f}/s  "
              f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  server CPU "
              f"{phase.server_cpu / max(1, len(lat)) * 1000:.2f} ms/{cpu_per}  errors "
              f"{res['errors']}+{res['conn_errors']}")
        if res.get("first_error"):
            print(f"    first error: {res['first_error']!r}")
    print(f"  load average before/after: {run.load_before:.2f} / {os.getloadavg()[0]:.2f}")
    log = run.reg.log_text()
    # The run's directory holds private keys and the CA: gone once its log was read.
    shutil.rmtree(run.reg.base_dir, ignore_errors=True)
    print(f"  a JWT in the registrar's log: {'YES (bug)' if 'eyJ' in log else 'no'}")
    print(json.dumps({"bootstrap_per_s": round(len(boot.result["latencies"]) / boot.wall),
                      key: round(len(other.result["latencies"]) / other.wall)}))
    ok = (boot.result["errors"] == other.result["errors"] == 0
          and len(other.result["latencies"]) == args.total)
    return 0 if ok else 1
