"""xDS tests reuse the sidecar fixtures: the real Envoy, a throwaway mesh CA, root."""

from tests.sidecar.conftest import envoy_path, mesh_ca, root, state_dirs

__all__ = ["envoy_path", "mesh_ca", "root", "state_dirs"]
