"""Protobuf messages for Envoy's SDS, generated from the .proto file beside them by
scripts/gen-protos (committed: see docs/istio.md). Istio's CA messages, which the
registrar serves too, are in meshcore/istio_wire."""
