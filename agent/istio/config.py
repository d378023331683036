"""The agent's ``istio:`` section (used when ``mesh.type: istio``).

```yaml
mesh: {type: istio}
istio:
  dir: /etc/mesh-agent/istio   # istioctl's files, unchanged
  cert_ttl: 24h                # validity asked of istiod's CA (istiod may cap it)
  timeout: 10s                 # per CA call
```

The files in ``dir`` are read and checked here, at load time, so ``run``,
``check`` and a SIGHUP reload all reject a malformed file the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.istio.vm import IstioVM, load_vm
from meshcore.config.reader import Section

DEFAULT_DIR = "/etc/mesh-agent/istio"
MESH_TYPES = ("static", "istio")


@dataclass(frozen=True)
class IstioConfig:
    directory: Path
    cert_ttl: float
    timeout: float
    vm: IstioVM


def parse_istio(s: Section) -> IstioConfig:
    directory = s.path("dir", DEFAULT_DIR)
    # istiod's certificates start about 2 minutes before issuance (observed), and
    # the half-life counts from NotBefore: below 3 minutes the renewal point
    # would already be past at issuance (docs/istio.md, Known limits).
    cert_ttl = s.duration("cert_ttl", 86400.0, minimum=180, maximum=90 * 86400)
    timeout = s.duration("timeout", 10.0, minimum=0.5, maximum=300)
    return IstioConfig(directory=directory, cert_ttl=cert_ttl, timeout=timeout,
                       vm=load_vm(directory))
