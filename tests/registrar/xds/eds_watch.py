"""An ADS client that subscribes to one EDS cluster and stays subscribed, run as
its own process (grpc's threads stay out of the test process, which forks
registrars):

``python -m tests.registrar.xds.eds_watch --target IP:PORT --ca CA --cert CERT
--key KEY --node-id ID --cluster NAME``

prints one JSON line per EDS response, ``{"t": <time.time() on receipt>,
"version": ..., "endpoints": ["IP:PORT", ...]}`` (the healthy ones), ACKs it,
and waits for the next push; on a stream error it prints ``{"error": ...}`` and
exits 1. It ends when its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def healthy_endpoints(resources: list[endpoint_pb2.ClusterLoadAssignment]) -> list[str]:
    out = []
    for cla in resources:
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                if lb.health_status in (HealthStatus.HEALTHY, HealthStatus.UNKNOWN):
                    sock = lb.endpoint.address.socket_address
                    out.append(f"{sock.address}:{sock.port_value}")
    return sorted(out)


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("target", "ca", "cert", "key", "node-id", "cluster"):
        p.add_argument(f"--{name}", required=True)
    args = p.parse_args()
    creds = grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), Path(args.key).read_bytes(),
                                         Path(args.cert).read_bytes())
    requests: queue.Queue[DiscoveryRequest | None] = queue.Queue()
    requests.put(DiscoveryRequest(node=Node(id=args.node_id, cluster="test"),
                                  type_url=ENDPOINT, resource_names=[args.cluster]))

    def outgoing() -> Iterator[DiscoveryRequest]:
        while (request := requests.get()) is not None:
            yield request

    with grpc.secure_channel(args.target, creds) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            outgoing())

        def end_on_stdin_close() -> None:
            sys.stdin.read()
            requests.put(None)
            call.cancel()
        threading.Thread(target=end_on_stdin_close, daemon=True).start()
        try:
            for response in call:
                received = time.time()
                resources = []
                for resource in response.resources:
                    cla = endpoint_pb2.ClusterLoadAssignment()
                    resource.Unpack(cla)
                    resources.append(cla)
                print(json.dumps({"t": received, "version": response.version_info,
                                  "endpoints": healthy_endpoints(resources)}), flush=True)
                requests.put(DiscoveryRequest(type_url=ENDPOINT, resource_names=[args.cluster],
                                              version_info=response.version_info,
                                              response_nonce=response.nonce))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return 0
            print(json.dumps({"error": f"{exc.code().name}: {exc.details()}"}), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
