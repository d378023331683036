"""Istio's CA API messages (``istio.v1.auth.IstioCertificateService``), shared by
the agent's client and the registrar's server: generated from the .proto beside
them by scripts/gen-protos and committed (docs/istio.md). Importing this package
loads nothing; ``istio_ca_pb2`` loads protobuf."""
