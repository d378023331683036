"""The xDS control plane: a pure snapshot builder and a thin gRPC ADS server."""
