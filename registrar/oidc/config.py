"""The ``oidc:`` section of ``registrar.yaml``. Present: the registrar issues JWTs.

```yaml
oidc:
  issuer: https://registrar.example.com:8443  # iss, and where discovery is served
  audiences: [istio-ca]      # the first is the default; a caller may ask for another listed
  token_ttl: 10m             # default lifetime; at most max_token_ttl
  max_token_ttl: 1h          # the longest a caller may ask for (at most 1h)
  key_dir: STATE_DIR/oidc    # signing keys (0600), never the CA key
  rate: {per_second: 50, burst: 100}   # token requests, per server worker
  per_workload: {per_second: 0.2, burst: 10}   # and per workload (one VM cannot starve others)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from meshcore.config.reader import Section

MAX_TTL = 3600.0
_AUDIENCE = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audiences: tuple[str, ...]
    token_ttl: float
    max_token_ttl: float
    key_dir: Path
    per_second: float
    burst: int
    workload_per_second: float = 0.2
    workload_burst: int = 10

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"


def read_oidc(root: Section, state_dir: Path) -> OidcConfig | None:
    if not root.has("oidc"):
        return None
    s = root.section("oidc")
    if not s.has("issuer"):
        raise s.error("issuer", "is required when oidc is set",
                      "the https URL istiod reaches this registrar at (JWT_RULE's issuer)")
    issuer = s.url("issuer", schemes=("https",)).rstrip("/")
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise s.error("issuer", f"{issuer!r} has a query or fragment",
                      "an https URL with no query or fragment (OIDC Discovery 1.0)")
    audiences = s.str_list("audiences", ("istio-ca",))
    if not audiences or not all(_AUDIENCE.match(a) for a in audiences):
        raise s.error("audiences", f"{list(audiences)!r} is not a list of audiences",
                      "a non-empty list of printable strings without spaces")
    max_ttl = s.duration("max_token_ttl", MAX_TTL, minimum=60.0, maximum=MAX_TTL)
    ttl = s.duration("token_ttl", min(600.0, max_ttl), minimum=10.0, maximum=MAX_TTL)
    if ttl > max_ttl:
        raise s.error("token_ttl", f"is longer than max_token_ttl ({max_ttl:g}s)",
                      "token_ttl <= max_token_ttl")
    rate = s.section("rate")
    config = OidcConfig(
        issuer=issuer, audiences=audiences, token_ttl=ttl, max_token_ttl=max_ttl,
        key_dir=s.path("key_dir", str(state_dir / "oidc")),
        per_second=rate.number("per_second", 50.0, minimum=0.001, maximum=1e6),
        burst=rate.integer("burst", 100, minimum=1, maximum=10_000_000))
    rate.finish()
    mine = s.section("per_workload")
    config = replace(config,
                     workload_per_second=mine.number("per_second", 0.2, minimum=0.0001,
                                                     maximum=1e6),
                     workload_burst=mine.integer("burst", 10, minimum=1, maximum=1_000_000))
    mine.finish()
    s.finish()
    return config
