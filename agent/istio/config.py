"""The agent's ``istio:`` section (used when ``mesh.type: istio``).

```yaml
mesh: {type: istio}
istio:
  dir: /etc/mesh-agent/istio   # istioctl's files, unchanged
  cert_ttl: 24h                # validity asked of istiod's CA (istiod may cap it)
  timeout: 10s                 # per CA call
  token_source: file           # file: istio-token in dir; registrar: a JWT from
                               # mesh-registrar (needs registrar: and attestation:)
  token_audience: istio-ca     # registrar only: the aud asked for (default: the
                               # registrar's first oidc.audiences entry)
```

The files in ``dir`` are read and checked here, at load time, so ``run``,
``check`` and a SIGHUP reload all reject a malformed file the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshcore.config.reader import Section

if TYPE_CHECKING:
    from agent.istio.vm import IstioVM

DEFAULT_DIR = "/etc/mesh-agent/istio"
MESH_TYPES = ("static", "istio")
FROM_FILE, FROM_REGISTRAR = "file", "registrar"  # istio.token_source values
TOKEN_SOURCES = (FROM_FILE, FROM_REGISTRAR)


@dataclass(frozen=True)
class IstioConfig:
    directory: Path
    cert_ttl: float
    timeout: float
    vm: IstioVM
    token_source: str = FROM_FILE
    token_audience: str | None = None

    @property
    def token_from_registrar(self) -> bool:
        return self.token_source == FROM_REGISTRAR


def parse_istio(s: Section) -> IstioConfig:
    directory = s.path("dir", DEFAULT_DIR)
    # istiod's certificates start about 2 minutes before issuance (observed), and
    # the half-life counts from NotBefore: below 3 minutes the renewal point
    # would already be past at issuance (docs/istio.md, Known limits).
    cert_ttl = s.duration("cert_ttl", 86400.0, minimum=180, maximum=90 * 86400)
    timeout = s.duration("timeout", 10.0, minimum=0.5, maximum=300)
    token_source = s.text("token_source", FROM_FILE, choices=TOKEN_SOURCES)
    audience = s.text("token_audience") if s.has("token_audience") else None
    if audience is not None and token_source != FROM_REGISTRAR:
        raise s.error("token_audience", "is set, but token_source is file",
                      "token_source: registrar, or no token_audience")
    if audience is not None and (not audience or any(c.isspace() for c in audience)):
        raise s.error("token_audience", f"{audience!r} is not an audience",
                      "a non-empty string without spaces, e.g. istio-ca")
    # Imported only for an istio: section (it parses the root certificates with
    # cryptography): a static-mode agent reads its config without it.
    from agent.istio.vm import load_vm

    return IstioConfig(directory=directory, cert_ttl=cert_ttl, timeout=timeout,
                       vm=load_vm(directory), token_source=token_source,
                       token_audience=audience)
