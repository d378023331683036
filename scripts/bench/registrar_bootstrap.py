"""Registrar bootstrap throughput: 200 concurrent agents, each attesting on a NEW
TLS connection with its own join token and pre-generated P-256 CSR, beside a
reference measured in the same run on the same cores.

    .venv/bin/python scripts/bench/registrar_bootstrap.py [--store sqlite|postgres]
        [--replicas 1] [--workers N] [--total 3000] [--concurrency 200]
        [--client go|python] [--reference sqlite,tls,spire | none]

Only the registrar's start-up depends on ``--store`` and ``--replicas``
(``start_registrars``); tokens, clients, CPU accounting and the table are the same
for every deployment. With several replicas the clients spread over their
addresses round-robin, as a TCP load balancer would.

``--store postgres`` starts a PostgreSQL from Debian's package (the test
fixture's server, tests/fixtures/postgres.py: initdb in a temporary directory,
Unix socket only, fsync off), runs ``mesh-registrar migrate`` on a fresh
database, and starts ``--replicas`` ``serve`` processes on it, each on its own
port, sharing one state directory (the CA) as replicas share a read-only copy.
Its server CPU counts the PostgreSQL processes too (printed apart as well). The
reference ``sqlite`` (the default beside any other deployment) is one SQLite
replica with as many workers as all the replicas together (so is ``tls``),
measured in the same run: the issue's target is PostgreSQL within 25 % of it.

``--workers`` is per replica; by default the machine's cores divided among the
replicas (at least 1 each), as the sizing rule in docs/registrar.md says for
replicas sharing one host: one worker process per core in all. So two replicas
on 2 cores run one worker each, beside one SQLite registrar with two; more
worker processes than cores only add context switches on the shared cores.

Clients: ``go`` is scripts/bench/attest_load (built and cached by
scripts/bench/peers.py), the same client for the registrar, the TLS floor and
SPIRE, so no server is measured through a slower client than another; ``python``
is an asyncio client in separate processes (no Go toolchain needed; it costs
more CPU per bootstrap on the shared cores). A 429 is retried after its
Retry-After; any other failure is an error and fails the run.

References (comma-separated):
* ``tls``: scripts/bench/tls_floor.py, a Python server with the registrar's own TLS
  context and worker count that answers a fixed body: the cost of the new TLS
  connection and one HTTP exchange alone;
* ``spire``: spire-server v1.13.3 (scripts/bootstrap-spire; quickstart config, see
  peers.py) and its join-token AgentAttest RPC, through the same Go client.

Prints bootstraps/s, p50/p99 latency, server CPU per bootstrap (user+sys of every
server process) and the client's, with the load average, and the verdict against
the targets (>= 1,000/s and >= SPIRE's rate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import uvloop  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from meshcore.clock import SystemClock  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from scripts.bench import peers  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402

TARGET_PER_SECOND = 1000.0
STORE_RATIO = 0.75  # PostgreSQL replicas within 25 % of one SQLite registrar
SQLITE_NAME = "reference: mesh-registrar sqlite"


class NotAvailable(Exception):
    """A deployment this tree cannot start yet (said, not faked)."""


@dataclass
class Target:
    """Something the load clients attest against."""

    name: str
    urls: list[str]
    ca_file: Path
    tokens_file: Path
    server_pids: list[int]
    stop: Callable[[], object]
    # Parts of the server CPU printed apart (name -> pids, each also in server_pids).
    parts: dict[str, list[int]] = field(default_factory=dict)
    after: Callable[[], str] = lambda: ""
    spire: peers.Spire | None = None


@dataclass
class Result:
    name: str
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_user: float = 0.0
    server_sys: float = 0.0
    client_cpu: float = 0.0
    rate_limited: int = 0
    load: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def server_ms(self) -> float:
        return (self.server_user + self.server_sys) / max(1, self.ok) * 1000


# -- deployments: the only part that depends on --store and --replicas ----------
def registrar_config() -> dict[str, object]:
    # As packaged, plus only what one client address needs: every benchmark client
    # is 127.0.0.1, so the attest bucket and the per-address connection cap are
    # raised (a fleet's VMs each have an address of their own).
    return {"log_level": "info", "limits": {
        "rate": {"attest": {"per_second": 5000.0, "burst": 5000}},
        "max_connections_per_address": 1000}}


def start_registrars(base: Path, *, store: str, replicas: int, workers: int,
                     total: int) -> Target:
    """``replicas`` ``mesh-registrar serve`` groups on one store, with ``total`` join
    tokens made in it."""
    if replicas < 1 or (store == "sqlite" and replicas != 1):
        raise NotAvailable(
            f"--store {store} --replicas {replicas}: SQLite is one host's file, served by "
            "one `serve` (its workers share it); replicas need --store postgres")
    base.mkdir(parents=True)
    database: PostgresServer | None = None
    store_section = None
    if store == "postgres":
        # Its own directory under /tmp: initdb runs as the postgres user, which cannot
        # enter this benchmark's private temporary directory.
        database = PostgresServer(Path(tempfile.mkdtemp(prefix="mesh-pg-bench-")))
        database.init()
        database.start()
        store_section = {"type": "postgres", "dsn": database.new_database(migrated=False)}
    group: list[RegistrarProcess] = []

    def stop() -> None:
        for reg in group:
            reg.stop()
        if database is not None:
            database.stop()
            shutil.rmtree(database.base, ignore_errors=True)

    try:
        first = RegistrarProcess(base / "replica-0", groups={"bench": ("bench", "vm", 3600)},
                                 workers=workers, config=registrar_config(),
                                 store=store_section)
        first.init()
        group.append(first)
        if database is not None:
            first.cli("migrate")
        group += [first.replica(base / f"replica-{i}") for i in range(1, replicas)]
        conn = first.db()
        try:
            tokens = TokenStore(conn, SystemClock()).create_many("bench", 3600, total)
        finally:
            conn.close()
        tokens_file = base / "tokens.txt"
        tokens_file.write_text("\n".join(t.reveal() for t in tokens))
        for reg in group:
            reg.start()
    except BaseException:
        stop()
        raise
    pids = [reg.pid for reg in group if reg.pid is not None]
    parts = {"registrar": list(pids)}
    if database is not None:
        postmaster = int((database.data / "postmaster.pid").read_text().split()[0])
        pids.append(postmaster)
        parts["postgres"] = [postmaster]

    def inventory() -> str:
        rows = json.loads(first.cli("workloads", "list", "--json").stdout)
        return f"inventory: {len(rows)} workloads recorded"

    each = f"{workers} worker{'s' if workers != 1 else ''}" + (" each" if replicas > 1 else "")
    return Target(name=f"mesh-registrar {store} x{replicas} ({each})",
                  urls=[reg.url for reg in group], ca_file=first.ca_file,
                  tokens_file=tokens_file, server_pids=pids, stop=stop, after=inventory,
                  parts=parts if database is not None else {})


def start_tls_floor(base: Path, *, workers: int, total: int) -> Target:
    reg = RegistrarProcess(base, groups={"bench": ("bench", "vm", 3600)})
    reg.init()  # only for its certificates and config: the registrar never runs
    tokens_file = base / "tokens.txt"
    tokens_file.write_text("\n".join(f"floor-{i}" for i in range(total)))
    port = free_port()
    # Its own process group, so that stopping it (or giving up on it) ends the workers too.
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "bench" / "tls_floor.py"),
                             "--config", str(reg.config_path), "--port", str(port),
                             "--workers", str(workers)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(workers)]
    if [line.strip() for line in lines] != ["serving"] * workers:
        stop()
        raise SystemExit(f"tls_floor.py did not start: {lines!r}")

    return Target(name=f"reference: TLS floor, Python ({workers} workers)",
                  urls=[f"https://127.0.0.1:{port}"], ca_file=reg.ca_file,
                  tokens_file=tokens_file, server_pids=[proc.pid], stop=stop)


def start_spire(base: Path) -> Target:
    spire = peers.Spire(base)
    spire.start()
    assert spire.proc is not None
    return Target(name=f"reference: spire-server {peers.SPIRE_VERSION}",
                  urls=[f"127.0.0.1:{spire.port}"], ca_file=spire.bundle,
                  tokens_file=base / "unused", server_pids=[spire.proc.pid], stop=spire.stop,
                  spire=spire)


# -- CPU accounting ----------------------------------------------------------------
def server_times(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += times.user
            system += times.system
    return user, system


def part_times(target: Target) -> dict[str, float]:
    return {name: sum(server_times(pids)) for name, pids in target.parts.items()}


def part_notes(target: Target, before: dict[str, float], ok: int) -> list[str]:
    after = part_times(target)
    return [f"server CPU of which {name}: {(after[name] - before[name]) / max(1, ok) * 1000:.2f}"
            " ms/bootstrap" for name in target.parts]


# -- the Go client -------------------------------------------------------------------
def run_go(target: Target, total: int, concurrency: int) -> Result:
    """One attest_load per address (the concurrency split between them); the server
    CPU is read between "prepared" and the end, so it counts the bootstraps only."""
    client = peers.attest_load_binary()
    out = Result(target.name)
    procs = []
    share = [total // len(target.urls) + (i < total % len(target.urls))
             for i in range(len(target.urls))]
    for i, url in enumerate(target.urls):
        if target.spire is not None:
            args = ["-target", "spire", "-addr", url, "-socket", str(target.spire.socket),
                    "-bundle", str(target.spire.bundle), "-trust-domain", peers.TD]
        else:
            args = ["-target", "registrar", "-addr", url, "-bundle", str(target.ca_file),
                    "-tokens", str(_token_slice(target.tokens_file, i, len(target.urls)))]
        procs.append(subprocess.Popen(
            [str(client), *args, "-total", str(share[i]), "-concurrency",
             str(max(1, concurrency // len(target.urls)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if line.strip() != "prepared":
            for p in procs:
                p.kill()
            raise SystemExit(f"attest-load ({target.name}): {line}{proc.stderr.read()[-2000:]}")
    before = server_times(target.server_pids)
    parts_before = part_times(target)
    load_before = os.getloadavg()[0]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    latencies_p50, latencies_p99 = [], []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"attest-load ({target.name}) failed: {stderr[-2000:]}")
        res = json.loads(stdout.strip().splitlines()[-1])
        out.ok += res["ok"]
        out.errors += res["errors"]
        out.first_error = out.first_error or res["first_error"]
        out.wall = max(out.wall, res["wall_s"])
        out.client_cpu += res["client_cpu_s"]
        latencies_p50.append(res["p50_ms"])
        latencies_p99.append(res["p99_ms"])
    after = server_times(target.server_pids)
    out.server_user, out.server_sys = after[0] - before[0], after[1] - before[1]
    out.p50_ms, out.p99_ms = max(latencies_p50), max(latencies_p99)
    out.notes += part_notes(target, parts_before, out.ok)
    out.load = max(load_before, os.getloadavg()[0])
    return out


def _token_slice(tokens_file: Path, index: int, count: int) -> Path:
    if count == 1:
        return tokens_file
    part = tokens_file.with_suffix(f".{index}.txt")
    part.write_text("\n".join(tokens_file.read_text().split()[index::count]))
    return part


# -- the Python client -----------------------------------------------------------------
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
              out: dict[str, list[float] | int | str]) -> None:
    """One agent bootstrap on a new connection; retries only 429s (after Retry-After)."""
    started = time.perf_counter()
    while True:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                       server_hostname=host)
        writer.write(payload)
        data = await reader.read()
        writer.close()
        status = int(data[9:12]) if data[9:12].isdigit() else 0
        if status == 429:
            out["rate_limited"] = int(out["rate_limited"]) + 1  # type: ignore[arg-type]
            headers = data.split(b"\r\n\r\n", 1)[0].decode().lower()
            wait = int(headers.split("retry-after:", 1)[1].split("\r\n", 1)[0])
            await asyncio.sleep(wait)
            continue
        if status != 200 or b'"spiffe_id"' not in data:
            out["errors"] = int(out["errors"]) + 1  # type: ignore[arg-type]
            out["first_error"] = out["first_error"] or f"status {status}: {data[:200]!r}"
            return
        out["latencies"].append(time.perf_counter() - started)  # type: ignore[union-attr]
        return


def client_proc(host: str, port: int, ca: str, payloads: list[bytes], concurrency: int,
                start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """One client process (also scripts/bench/oidc_tokens.py's): puts a dict with
    latencies, errors, conn_errors, rate_limited, first_error and its CPU seconds."""
    async def run() -> dict[str, list[float] | int | str]:
        ctx = ssl.create_default_context(cafile=ca)
        out: dict[str, list[float] | int | str] = {"latencies": [], "errors": 0,
                                                   "conn_errors": 0, "rate_limited": 0,
                                                   "first_error": ""}
        todo = iter(payloads)

        async def worker() -> None:
            for payload in todo:
                try:
                    await one(host, port, ctx, payload, out)
                except OSError as exc:
                    out["conn_errors"] = int(out["conn_errors"]) + 1  # type: ignore[arg-type]
                    out["first_error"] = out["first_error"] or repr(exc)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu"] = usage.ru_utime + usage.ru_stime  # type: ignore[assignment]
        return out

    queue.put(uvloop.run(run()))


def run_python(target: Target, total: int, concurrency: int, procs: int) -> Result:
    if target.spire is not None:
        raise SystemExit("--client python speaks the registrar's API only; SPIRE needs "
                         "--client go")
    tokens = target.tokens_file.read_text().split()[:total]
    procs = max(procs, len(target.urls))  # every replica gets clients (round-robin)
    with mp.Pool(os.cpu_count()) as pool:
        csrs = pool.map(make_csr, range(total), chunksize=250)
    payloads = [request_bytes("127.0.0.1", t, c) for t, c in zip(tokens, csrs, strict=True)]
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start_at = time.time() + 1.0
    addresses = [url.removeprefix("https://").rsplit(":", 1) for url in target.urls]
    workers = [mp.Process(target=client_proc, args=(
        addresses[i % len(addresses)][0], int(addresses[i % len(addresses)][1]),
        str(target.ca_file), payloads[i::procs],
        max(1, concurrency // procs), start_at, queue)) for i in range(procs)]
    for p in workers:
        p.start()
    time.sleep(max(0.0, start_at - time.time() - 0.2))
    before = server_times(target.server_pids)
    parts_before = part_times(target)
    load_before = os.getloadavg()[0]
    results = [queue.get() for _ in workers]
    for p in workers:
        p.join()
    wall = time.time() - start_at
    after = server_times(target.server_pids)
    latencies = sorted(x for r in results for x in r["latencies"])
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    notes = part_notes(target, parts_before, len(latencies))
    return Result(target.name, ok=len(latencies), notes=notes,
                  errors=sum(int(r["errors"]) + int(r["conn_errors"]) for r in results),
                  first_error=next((str(r["first_error"]) for r in results
                                    if r["first_error"]), ""),
                  wall=wall, p50_ms=q[49] * 1000, p99_ms=q[98] * 1000,
                  server_user=after[0] - before[0], server_sys=after[1] - before[1],
                  client_cpu=sum(float(r["cpu"]) for r in results),
                  rate_limited=sum(int(r["rate_limited"]) for r in results),
                  load=max(load_before, os.getloadavg()[0]))


# -- the table -------------------------------------------------------------------------
def print_table(results: list[Result], total: int, concurrency: int, client: str) -> None:
    cores = os.cpu_count() or 1
    print(f"join-token bootstraps, {total} per server, {concurrency} concurrent clients "
          f"({client} client), a new TLS connection each, {cores} cores shared by clients "
          "and server")
    head = ["server", "bootstraps/s", "p50 ms", "p99 ms", "server CPU ms/bootstrap",
            "(user/sys)", "client CPU ms", "ceiling/s", "load"]
    rows = [head]
    for r in results:
        n = max(1, r.ok)
        rows.append([r.name, f"{r.per_second:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                     f"{r.server_ms():.2f}",
                     f"{r.server_user / n * 1000:.2f}/{r.server_sys / n * 1000:.2f}",
                     f"{r.client_cpu / n * 1000:.2f}",
                     f"{cores * 1000 / r.server_ms():.0f}" if r.server_ms() else "-",
                     f"{r.load:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("ceiling/s = cores / server CPU per bootstrap: the rate with the cores to the "
          "server alone")


def _target_line(r: Result) -> str:
    rate = r.per_second
    return (f"target >= {TARGET_PER_SECOND:.0f}/s ({r.name}): {rate:.0f}/s "
            + ("met" if rate >= TARGET_PER_SECOND
               else f"MISSED by {TARGET_PER_SECOND - rate:.0f}/s "
                    f"({rate / TARGET_PER_SECOND:.2f}x)"))


def verdicts(ours: Result, references: list[Result]) -> list[str]:
    rate = ours.per_second
    lines = [_target_line(r) for r in [ours, *references] if r.name.startswith(SQLITE_NAME)]
    if not lines:
        lines.append(_target_line(ours))
    for ref in references:
        ratio = rate / ref.per_second if ref.per_second else 0.0
        cpu = ours.server_ms() / ref.server_ms() if ref.server_ms() else 0.0
        verdict = ""
        if "spire" in ref.name:
            verdict = "  -> target >= SPIRE: " + ("met" if ratio >= 1.0 else "MISSED")
        elif ref.name.startswith(SQLITE_NAME):
            verdict = (f"  -> target within {1 - STORE_RATIO:.0%} of SQLite: "
                       + ("met" if ratio >= STORE_RATIO else "MISSED"))
        lines.append(f"vs {ref.name}: {ratio:.2f}x the rate, {cpu:.2f}x the server CPU per "
                     "bootstrap" + verdict)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes per replica (default: cores / replicas, "
                             "at least 1)")
    parser.add_argument("--total", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--client", choices=("go", "python"), default="go")
    parser.add_argument("--client-procs", type=int, default=1, help="--client python only")
    parser.add_argument("--reference", default=None,
                        help="comma-separated: sqlite, tls, spire; or none (default: sqlite "
                             "beside any other deployment than SQLite x1, else tls)")
    args = parser.parse_args()
    single = args.store == "sqlite" and args.replicas == 1
    reference = args.reference or ("tls" if single else "sqlite")
    references = [] if reference == "none" else reference.split(",")
    if set(references) - {"sqlite", "tls", "spire"}:
        parser.error("--reference: sqlite, tls, spire or none")
    if single and "sqlite" in references:
        parser.error("--reference sqlite is the SQLite x1 deployment itself")

    base = Path(tempfile.mkdtemp(prefix="registrar-bench-"))
    try:
        return run_all(args, references, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the CAs' private keys and join tokens


def run_all(args: argparse.Namespace, references: list[str], base: Path) -> int:
    """Measure the deployment, then each reference, in ``base``; print the table."""

    def measure(target: Target) -> Result:
        try:
            if args.client == "go":
                result = run_go(target, args.total, args.concurrency)
            else:
                result = run_python(target, args.total, args.concurrency, args.client_procs)
            note = target.after()
            if note:
                result.notes.append(note)
            return result
        finally:
            target.stop()

    if args.workers is None:
        args.workers = max(1, (os.cpu_count() or 1) // args.replicas)
    try:
        ours = measure(start_registrars(base / "registrar", store=args.store,
                                        replicas=args.replicas, workers=args.workers,
                                        total=args.total))
    except NotAvailable as exc:
        print(f"registrar_bootstrap: {exc}")
        return 2
    results = [ours]
    same_workers = args.workers * args.replicas  # references: as many processes in all
    if "sqlite" in references:
        target = start_registrars(base / "sqlite", store="sqlite", replicas=1,
                                  workers=same_workers, total=args.total)
        target.name = f"{SQLITE_NAME} x1 ({same_workers} workers)"
        results.append(measure(target))
    if "tls" in references:
        results.append(measure(start_tls_floor(base / "floor", workers=same_workers,
                                               total=args.total)))
    if "spire" in references:
        results.append(measure(start_spire(base / "spire")))
    print_table(results, args.total, args.concurrency, args.client)
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
        if r.errors or r.rate_limited:
            print(f"  {r.name}: {r.errors} errors, {r.rate_limited} answered 429"
                  + (f"; first error: {r.first_error}" if r.first_error else ""))
    for line in verdicts(ours, results[1:]):
        print(line)
    return 1 if any(r.errors or r.ok < args.total for r in results) else 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
