"""xDS fan-out: N concurrent ADS clients, each with its own mTLS workload
certificate, receive one catalog change. Targets: 1,000 nodes within 2 s on
this machine, < 100 KiB registrar RSS per idle ADS connection.

    .venv/bin/python scripts/bench/xds_push.py [--nodes 1000] [--client-procs 4]

Starts a real ``mesh-registrar serve`` with ``xds.listen`` on loopback. The
certificates are issued by the registrar's own CA code and recorded in its
inventory (as attestation would; attesting 1,000 VMs is another benchmark).
Clients run in separate processes: each stream subscribes to CDS, EDS and LDS
and ACKs every response like Envoy. One service is then added through the
catalog store (what ``mesh-registrar service add`` does); the time to the last
client's new LDS version is reported beside the same push to a single node,
and the RSS per connection beside the xDS process's idle RSS, both measured in
this run. (Push latency to 10 real Envoys is not measured by this script yet.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from fleet import issue  # noqa: E402

from registrar.catalog.model import Service, ServicePort  # noqa: E402
from registrar.catalog.store import ServiceStore  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from tests.fixtures.registrar import Group, RegistrarProcess, free_port  # noqa: E402

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def client_proc(target: str, ca: str, node_id: str, pairs: list[tuple[Path, Path]],
                ready: mp.Queue, results: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    import grpc
    from envoy.config.core.v3.base_pb2 import Node
    from envoy.service.discovery.v3 import ads_pb2_grpc
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

    root = Path(ca).read_bytes()

    async def stream(cert: Path, key: Path, changed: list[float], synced: asyncio.Event) -> None:
        creds = grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())
        async with grpc.aio.secure_channel(target, creds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            outbox: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
            node = Node(id=node_id, cluster="bench")
            outbox.put_nowait(DiscoveryRequest(node=node, type_url=CDS))
            outbox.put_nowait(DiscoveryRequest(type_url=LDS))

            async def requests():  # type: ignore[no-untyped-def]
                while True:
                    yield await outbox.get()

            first_lds = None
            async for response in stub.StreamAggregatedResources(requests()):
                names: list[str] = []
                if response.type_url == CDS:
                    names = []  # EDS subscription follows, as Envoy does after CDS
                    outbox.put_nowait(DiscoveryRequest(type_url=EDS, resource_names=[
                        "outbound|80||seed.bench.mesh"]))
                outbox.put_nowait(DiscoveryRequest(
                    type_url=response.type_url, version_info=response.version_info,
                    response_nonce=response.nonce, resource_names=names))
                if response.type_url == LDS:
                    if first_lds is None:
                        first_lds = response.version_info
                        synced.set()
                    elif response.version_info != first_lds and not changed:
                        changed.append(time.monotonic())

    async def run() -> None:
        changed: list[list[float]] = [[] for _ in pairs]
        synced = [asyncio.Event() for _ in pairs]
        tasks = [asyncio.ensure_future(stream(c, k, changed[i], synced[i]))
                 for i, (c, k) in enumerate(pairs)]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in synced)), 120)
        ready.put(len(pairs))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        results.put([c[0] if c else None for c in changed])
        for task in tasks:
            task.cancel()

    asyncio.run(run())


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def fan_out(reg: RegistrarProcess, node_id: str, pairs: list[tuple[Path, Path]], procs: int,
            xds: psutil.Process, port: int, service: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # grpc must not be initialised before a fork
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    chunks = [pairs[i::procs] for i in range(procs) if pairs[i::procs]]
    rss_before = rss(xds)
    workers = [ctx.Process(target=client_proc, args=(
        f"127.0.0.1:{port}", str(reg.ca_file), node_id, chunk, ready, results, stop))
        for chunk in chunks]
    for w in workers:
        w.start()
    connected = sum(ready.get(timeout=300) for _ in workers)
    time.sleep(2.0)  # let the server settle (status flushes, allocator)
    rss_idle = rss(xds)
    cpu0 = sum(xds.cpu_times()[:2])
    store = ServiceStore(connect(reg.state_dir / "registrar.db"), "240.240.0.0/16")
    t0 = time.monotonic()
    store.put(Service(name=service, hosts=(f"{service}.bench.mesh",),
                      ports=(ServicePort("http", 80),), selector={"app": "bench"}, vip=""),
              now=time.time())
    time.sleep(3.0 + len(pairs) / 500)
    cpu = sum(xds.cpu_times()[:2]) - cpu0
    load = os.getloadavg()[0]
    stop.set()
    times = [t for _ in workers for t in results.get(timeout=60)]
    for w in workers:
        w.join(30)
    got = [t - t0 for t in times if t is not None]
    return {"connected": connected, "received": len(got),
            "last": max(got) if got else float("nan"),
            "median": statistics.median(got) if got else float("nan"),
            "rss_per_conn": (rss_idle - rss_before) / max(1, connected),
            "rss_before": rss_before, "cpu": cpu, "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--client-procs", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average at start "
          f"{os.getloadavg()[0]:.2f} (1 min)", flush=True)
    base = Path(tempfile.mkdtemp(prefix="xds-bench-"))
    port = free_port()
    reg = RegistrarProcess(base, groups={"bench": Group("bench", "vm", 3600, {"app": "bench"})},
                           config={"xds": {"listen": f"127.0.0.1:{port}"}})
    reg.init()
    certs = base / "certs"
    certs.mkdir()
    t0 = time.perf_counter()
    pairs = issue(reg.config_path, args.nodes + 1, certs,
                  addresses=lambda i: [f"10.1.{i // 250}.{i % 250}"])
    print(f"issued {len(pairs)} workload certificates in {time.perf_counter() - t0:.1f} s")
    ServiceStore(connect(reg.state_dir / "registrar.db"), "240.240.0.0/16").put(
        Service(name="seed", hosts=("seed.bench.mesh",), ports=(ServicePort("http", 80),),
                selector={"app": "bench"}, vip=""), now=time.time())
    reg.start()
    try:
        deadline = time.monotonic() + 20
        while "xds serving" not in reg.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        xds = psutil.Process(reg.pid).children()[0]
        node_id = "spiffe://example.org/ns/bench/sa/vm"
        one = fan_out(reg, node_id, pairs[:1], 1, xds, port, "one")
        many = fan_out(reg, node_id, pairs[1:], args.client_procs, xds, port, "many")
    finally:
        reg.kill()
        shutil.rmtree(base, ignore_errors=True)  # 1,001 private keys: never left behind
    print(f"machine: {os.cpu_count()} cores; {args.client_procs} client processes share them "
          f"with the registrar; load average (1 min) at the 1-node push {one['load']:.2f}, "
          f"at the {many['connected']:.0f}-node push {many['load']:.2f}")
    print(f"push to 1 node (reference):      {one['last'] * 1000:7.0f} ms")
    print(f"push to {many['received']}/{many['connected']:.0f} nodes, last ACKed: "
          f"{many['last'] * 1000:7.0f} ms (median {many['median'] * 1000:.0f} ms; "
          f"target 2000 ms)")
    print(f"registrar xDS CPU for that push: {many['cpu'] * 1000:7.0f} ms "
          f"(1-node push: {one['cpu'] * 1000:.0f} ms, includes the sampling window)")
    print(f"RSS per idle ADS connection:     {many['rss_per_conn'] / 1024:7.1f} KiB "
          f"(target < 100 KiB; xDS process idle RSS {one['rss_before'] / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
