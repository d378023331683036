"""Protobuf messages for Istio's CA and Envoy's SDS, generated from the .proto
files beside them by scripts/gen-protos (committed: see docs/istio.md)."""
