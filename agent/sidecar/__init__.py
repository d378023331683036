"""The Envoy sidecar: render its bootstrap, hand it certificates, run and supervise it.

The daemon uses ``Sidecar`` (see ``agent.sidecar.service`` for the order of calls).
"""

# agent.config's model imports agent.sidecar.config; loading the config package
# first makes `import agent.sidecar.config` work on its own (no import cycle).
import agent.config  # noqa: F401  (isort: skip)
from agent.sidecar.install import ConfigRejected
from agent.sidecar.process import EnvoyNotFound, ProxyUserMissing, SidecarError
from agent.sidecar.service import Sidecar
from agent.sidecar.settings import EnvoyPaths, MeshSettings, mesh_settings
from agent.sidecar.supervisor import EnvoyState, EnvoySupervisor, SidecarNotReady, SidecarStatus

__all__ = [
    "ConfigRejected",
    "EnvoyNotFound",
    "EnvoyPaths",
    "EnvoyState",
    "EnvoySupervisor",
    "MeshSettings",
    "ProxyUserMissing",
    "Sidecar",
    "SidecarError",
    "SidecarNotReady",
    "SidecarStatus",
    "mesh_settings",
]
