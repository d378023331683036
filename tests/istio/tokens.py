"""istio-token-shaped JWTs and the JWKS that istiod's ``JWT_RULE`` fetches.

Kubernetes projects a service-account token (RS256, ``sub``
``system:serviceaccount:NS:SA``, ``aud`` a JSON *list* holding ``istio-ca``)
that ``istioctl x workload entry configure`` saves as ``istio-token``. Without
Kubernetes there is no TokenReview, so istiod verifies such tokens itself with
the OIDC verifier behind ``JWT_RULE`` ({issuer, jwks_uri, audiences}). Its claim
struct decodes ``aud`` as a list: a bare string would fail to parse, so tokens
here always carry a list, as Kubernetes' do.

The JWKS is served over plain HTTP on a loopback socket created *inside*
istiod's network namespace: istiod's OIDC client uses Go's default trust store,
and loopback never leaves that namespace.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.sidecar.netns import call_in

ISSUER = "https://kubernetes.mesh-agent.test"
AUDIENCE = "istio-ca"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenIssuer:
    """A Kubernetes-like service-account token signer with one RSA key."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.kid = uuid.uuid4().hex[:16]
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def mint(self, namespace: str, service_account: str, ttl: float = 3600, *,
             aud: str | Sequence[str] = (AUDIENCE,), issuer: str | None = None,
             now: float | None = None) -> str:
        """A token for ``system:serviceaccount:NS:SA``; ``ttl`` may be negative
        (already expired). ``aud`` is always encoded as a list."""
        issued = time.time() if now is None else now
        audiences = [aud] if isinstance(aud, str) else list(aud)
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": audiences,
            "iat": int(issued),
            "nbf": int(issued) - 5,
            "exp": int(issued + ttl),
            "kubernetes.io": {"namespace": namespace,
                              "serviceaccount": {"name": service_account,
                                                 "uid": str(uuid.uuid4())}},
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": _b64(numbers.n), "e": _b64(numbers.e)}]}


class JwksServer:
    """Serves ``/jwks`` (and an OIDC discovery document) on 127.0.0.1 inside ``netns``."""

    def __init__(self, issuer: TokenIssuer, netns: str) -> None:
        body = json.dumps(issuer.jwks()).encode()
        self.hits = 0
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                server_ref.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        # The listening socket is made on a thread inside the namespace, so it
        # lives there; serving it from any thread afterwards is fine.
        self._server = call_in(netns, lambda: ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
