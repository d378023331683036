"""Pure: the JWT a workload gets, and the OIDC discovery document.

The token is what a Kubernetes projected service-account token carries for
istiod's JWT authenticator: ``sub`` ``system:serviceaccount:NS:SA`` (istiod
signs ``spiffe://<its trust domain>/ns/NS/sa/SA`` from it), ``aud`` a JSON
*list* (istiod decodes ``aud`` into a list and refuses a bare string), ``iss``
the registrar's issuer URL.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from registrar.oidc.config import OidcConfig
from registrar.oidc.keyring import SigningKey


@dataclass(frozen=True)
class IssuedToken:
    token: str          # the caller's only copy; never logged
    subject: str
    audience: str
    issued_at: int
    expires_at: int
    kid: str


def subject_of(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def sign(key: SigningKey, *, issuer: str, subject: str, audience: str, now: float,
         expires_at: float) -> IssuedToken:
    iat, exp = int(now), int(expires_at)
    claims: dict[str, Any] = {"iss": issuer, "sub": subject, "aud": [audience], "iat": iat,
                              "nbf": iat, "exp": exp, "jti": secrets.token_urlsafe(12)}
    token = jwt.encode(claims, key.private, algorithm="RS256",
                       headers={"kid": key.kid, "typ": "JWT"})
    return IssuedToken(token, subject, audience, iat, exp, key.kid)


def discovery(config: OidcConfig) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 metadata: enough for istiod's ``JWT_RULE`` without
    a ``jwks_uri`` (go-oidc discovery) and for any other OIDC verifier."""
    return {
        "issuer": config.issuer,
        "jwks_uri": config.jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"],
    }
