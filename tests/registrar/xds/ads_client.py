"""A minimal ADS client over mTLS, run as its own process (inside a namespace with
``ip netns exec``): grpc's threads must start in the namespace they talk from.

``python -m tests.registrar.xds.ads_client --target IP:PORT --ca CA --cert CERT --key KEY
--node-id ID`` prints one JSON line: ``{"code": "OK"|grpc status, "types": [...],
"listeners": [...], "detail": "..."}`` after the first LDS answer or the error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("target", "ca", "cert", "key", "node-id", "server-name"):
        p.add_argument(f"--{name}", required=name != "server-name")
    args = p.parse_args()
    creds = grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), Path(args.key).read_bytes(),
                                         Path(args.cert).read_bytes())
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    out: dict[str, object] = {"code": "OK"}
    with grpc.secure_channel(args.target, creds, options=options) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        request = DiscoveryRequest(node=Node(id=args.node_id, cluster="test"),
                                   type_url=LISTENER)
        try:
            for response in stub.StreamAggregatedResources(iter([request]), timeout=10):
                names = []
                for resource in response.resources:
                    listener = listener_pb2.Listener()
                    resource.Unpack(listener)
                    names.append(listener.name)
                out.update(types=[response.type_url], listeners=names,
                           version=response.version_info)
                break
        except grpc.RpcError as exc:
            out.update(code=exc.code().name, detail=exc.details())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
