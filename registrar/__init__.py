"""mesh-registrar: verifies attestation evidence and signs workload certificates."""

__version__ = "0.1.0"
