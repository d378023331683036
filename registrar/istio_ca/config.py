"""The ``istio_ca:`` section of ``registrar.yaml``. Present: the registrar serves
Istio's CA API (gRPC over TLS) on its own port, beside the HTTPS API.

```yaml
istio_ca:
  listen: 0.0.0.0:15012        # its own port (pilot-agent's CA_ADDR names it)
  audiences: [istio-ca]        # a JWT must carry one of these in aud (oidc: needed)
  rate: {per_second: 500, burst: 1000}   # CreateCertificate calls, per server worker
```
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.config.reader import Section
from registrar.oidc.config import OidcConfig


@dataclass(frozen=True)
class IstioCaConfig:
    host: str
    port: int
    audiences: tuple[str, ...]
    per_second: float
    burst: int


def read_istio_ca(root: Section, oidc: OidcConfig | None,
                  api_port: int) -> IstioCaConfig | None:
    if not root.has("istio_ca"):
        return None
    s = root.section("istio_ca")
    host, port = s.host_port("listen", "127.0.0.1:15012")
    if port == api_port:
        raise s.error("listen", f"port {port} is the HTTPS API's (listen)",
                      "a port of its own: gRPC and the JSON API do not share one")
    audiences = s.str_list("audiences", ("istio-ca",))
    if not audiences:
        raise s.error("audiences", "is empty", "a non-empty list of JWT audiences")
    if oidc is not None:
        unknown = [a for a in audiences if a not in oidc.audiences]
        if unknown:
            raise s.error("audiences", f"{unknown!r} are not in oidc.audiences "
                          "(this registrar never issues such tokens)",
                          "audiences listed in oidc.audiences: " + ", ".join(oidc.audiences))
    rate = s.section("rate")
    config = IstioCaConfig(
        host=host, port=port, audiences=audiences,
        per_second=rate.number("per_second", 500.0, minimum=0.001, maximum=1e6),
        burst=rate.integer("burst", 1000, minimum=1, maximum=10_000_000))
    rate.finish()
    s.finish()
    return config
