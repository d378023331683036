"""Who is asking: a JWT this registrar issued, or a current mesh client certificate.

Tried in istiod's order: the client certificate first (so a workload renews with
the certificate it holds, long after its token expired), then the bearer token.

* Token: RS256 only, signed by a key the registrar's own JWKS publishes now
  (registrar/oidc/keyring.py), ``iss`` our issuer, ``aud`` one of
  ``istio_ca.audiences``, ``exp``/``nbf``/``iat`` with 60 s leeway. Its ``sub``
  ``system:serviceaccount:NS:SA`` names the identity the groups with that
  namespace and service account give (``spiffe://<group trust domain>/ns/NS/sa/SA``):
  exactly as istiod maps the same token, with the group's trust domain.
* Certificate: OpenSSL verified its chain to the registrar's roots (the TLS
  context). One this registrar's inventory issued is checked exactly as a renewal
  is (newest of its workload, not revoked or evicted, group still gives it); any
  other (a certificate this API issued, or one from another CA under the same
  root, as istiod accepts) must carry one SPIFFE ID that a group still gives.

The longest lifetime a caller may get is the largest ``cert_ttl`` of the groups
giving its identity.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from meshcore.clock import Clock
from registrar.api.service import Service
from registrar.config import Group
from registrar.istio_ca.refusals import Refused
from registrar.oidc.config import OidcConfig
from registrar.oidc.keyring import KeyRing
from registrar.rejections import Rejected
from registrar.store.inventory import Inventory

LEEWAY = 60
MAX_TOKEN_CHARS = 8192
_NAME = r"[a-z0-9][a-z0-9._-]{0,252}"
_SUB = re.compile(rf"^system:serviceaccount:({_NAME}):({_NAME})$")


@dataclass(frozen=True)
class Caller:
    spiffe_id: str
    max_ttl: float
    how: str      # "jwt" or "cert"
    logged: str   # our own facts for the log line (kid, workload id), never the token


def ttl_by_identity(groups: Mapping[str, Group]) -> dict[str, float]:
    out: dict[str, float] = {}
    for group in groups.values():
        out[group.spiffe_id] = max(out.get(group.spiffe_id, 0.0), group.cert_ttl)
    return out


def _kid(token: str) -> object:
    """The unverified header's ``kid``, only to pick the key; PyJWT then checks the
    whole token once (its own header read costs as much as the check itself)."""
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise Refused("token_invalid", "not a JWT") from None
    return header.get("kid") if isinstance(header, dict) else None


class Callers:
    def __init__(self, *, groups: Mapping[str, Group], oidc: OidcConfig | None,
                 audiences: Sequence[str], service: Service, inventory: Inventory,
                 clock: Clock) -> None:
        self._groups = groups
        self._ttls = ttl_by_identity(groups)
        self._oidc = oidc
        self._audiences = list(audiences)
        self._ring = KeyRing(oidc.key_dir, oidc.max_token_ttl) if oidc is not None else None
        self._service = service
        self._inventory = inventory
        self._clock = clock

    def identify(self, peer: dict[str, Any] | None, authorization: str | None) -> Caller:
        """``peer``: ``getpeercert()`` of the verified client certificate (None or
        empty: none); ``authorization``: the header's value."""
        cert_problem: Refused | None = None
        if peer:
            try:
                return self._by_certificate(peer)
            except Refused as exc:
                cert_problem = exc
        if authorization is not None:
            return self._by_token(authorization)
        if cert_problem is not None:
            raise cert_problem
        raise Refused("unauthenticated", "present a JWT from this registrar "
                      "(authorization: Bearer) or a current mesh certificate (mTLS)")

    # -- certificate --------------------------------------------------------------
    def _by_certificate(self, peer: dict[str, Any]) -> Caller:
        serial = format(int(str(peer.get("serialNumber", "0")), 16), "x")
        not_after = dt.datetime.fromtimestamp(
            ssl.cert_time_to_seconds(str(peer["notAfter"])), dt.UTC)
        uris = [str(v) for k, v in peer.get("subjectAltName", ()) if k == "URI"]
        if self._inventory.owner(serial) is not None:
            try:
                owner, group = self._service.owner_of(serial, not_after, uris)
            except Rejected as exc:
                raise Refused.of(exc) from None
            return Caller(owner.spiffe_id, self._ttls.get(owner.spiffe_id, group.cert_ttl),
                          "cert", f"workload={owner.workload.id}")
        if not_after <= self._clock.now():
            raise Refused("client_cert_refused", "client certificate has expired")
        spiffe = [u for u in uris if u.startswith("spiffe://")]
        if len(spiffe) != 1 or len(uris) != 1:
            raise Refused("client_cert_refused", "client certificate has no single SPIFFE ID")
        if spiffe[0] not in self._ttls:
            raise Refused("identity_unknown", f"no group gives {spiffe[0]}")
        return Caller(spiffe[0], self._ttls[spiffe[0]], "cert", f"client_serial={serial}")

    # -- token --------------------------------------------------------------------
    def _by_token(self, authorization: str) -> Caller:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise Refused("token_invalid", "authorization must be 'Bearer <JWT>'")
        if self._oidc is None or self._ring is None:
            raise Refused("token_invalid", "this registrar issues no tokens (no oidc: section)")
        kid = _kid(token)
        keys = dict(self._ring.current(self._clock.now().timestamp()).published)
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Refused("token_key_unknown", "the token's kid is not in this registrar's "
                          "JWKS (a foreign token, or a key rotated out)")
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=self._audiences,
                                issuer=self._oidc.issuer, leeway=LEEWAY,
                                options={"require": ["exp", "iat", "iss", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Refused("token_expired", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Refused("token_audience_invalid", "aud must include one of: "
                          + ", ".join(self._audiences)) from None
        except jwt.InvalidIssuerError:
            raise Refused("token_issuer_invalid", f"iss must be {self._oidc.issuer}") from None
        except jwt.InvalidTokenError as exc:
            raise Refused("token_invalid", f"token refused ({type(exc).__name__})") from None
        match = _SUB.match(str(claims["sub"]))
        if match is None:
            raise Refused("identity_unknown", "sub is not system:serviceaccount:NS:SA")
        namespace, account = match.groups()
        ids = sorted({g.spiffe_id for g in self._groups.values()
                      if g.namespace == namespace and g.service_account == account})
        if not ids:
            raise Refused("identity_unknown", f"no group has namespace {namespace} and "
                          f"service account {account}")
        if len(ids) > 1:
            raise Refused("identity_ambiguous", "groups in several trust domains have "
                          f"namespace {namespace} and service account {account}")
        return Caller(ids[0], self._ttls[ids[0]], "jwt", f"kid={kid}")
