"""GCE: a Google-signed instance identity token (``format=full``).

The agent asks the metadata server for a token whose ``audience`` is the
registrar's one-time challenge, so a token is bound to one attestation.
Checks, each with its own reason: algorithm fixed to RS256 (never read from
the token's opinion), key from the JWKS by ``kid``, signature, ``iss``, ``aud``
equal to the live challenge, ``exp``/``iat``/``nbf`` with at most 60 s leeway,
one-time use of the token itself, instance age, project allow-list, group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from meshcore.clock import Clock
from registrar.attestation.base import Verified
from registrar.attestation.groups import GroupRules
from registrar.attestation.jwks import GOOGLE_JWKS_URL, JwksCache
from registrar.rejections import Rejected

MAX_TOKEN_CHARS = 8192
MAX_LEEWAY = 60.0


@dataclass(frozen=True)
class GceConfig:
    jwks_url: str = GOOGLE_JWKS_URL
    issuers: tuple[str, ...] = ("https://accounts.google.com", "accounts.google.com")
    leeway: float = 60.0
    max_token_lifetime: float = 3600.0 + 60.0
    max_instance_age: float | None = None
    allowed_projects: tuple[str, ...] = ()
    groups: GroupRules = field(default_factory=GroupRules)

    def __post_init__(self) -> None:
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"gce.leeway must be between 0 and {MAX_LEEWAY} seconds")


class Replays(Protocol):
    def first_use(self, token: str, until: float, now: float) -> bool:
        """True exactly once per token (registrar/store/replays.py: in the database)."""
        ...


class ReplayCache:
    """In memory, for one process only (tests, and ``serve``'s validation build);
    workers use the database's (``SeenEvidence``).

    Hashes of tokens already accepted, kept until they could no longer verify."""

    def __init__(self, *, limit: int = 200_000) -> None:
        self._seen: dict[bytes, float] = {}
        self._limit = limit

    def first_use(self, token: str, until: float, now: float) -> bool:
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._seen:
            return False
        if len(self._seen) >= self._limit:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            if len(self._seen) >= self._limit:
                # Full of live tokens: refuse rather than forget (forgetting would allow replay).
                raise Rejected("rate_limited", "too many live GCE tokens", retry_after=60)
        self._seen[digest] = until
        return True


class GceVerifier:
    evidence_type = "gce"
    needs_challenge = True

    def __init__(self, config: GceConfig, *, keys: JwksCache,
                 clock: Clock,
                 replay: Replays | None = None) -> None:
        self._config = config
        self._keys = keys
        self._clock = clock
        self._replay = replay or ReplayCache()

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        if not challenge:
            raise Rejected("challenge_invalid", "GCE evidence needs a challenge")
        token = evidence.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise Rejected("evidence_invalid", "GCE evidence needs a token (a JWT)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Rejected("evidence_invalid", "GCE token is not a JWT") from None
        if header.get("alg") != "RS256":
            raise Rejected("evidence_algorithm_invalid",
                           f"GCE token algorithm {str(header.get('alg'))[:16]!r}; only RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Rejected("evidence_key_unknown", "GCE token has no key id")
        key = await self._keys.key(kid)
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], options={
                "verify_signature": True, "verify_exp": False, "verify_nbf": False,
                "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError:
            raise Rejected("evidence_signature_invalid", "GCE token signature invalid") from None
        except jwt.PyJWTError:
            raise Rejected("evidence_invalid", "GCE token is malformed") from None
        now = self._clock.now().timestamp()
        self._check_claims(claims, challenge, now)
        verified = self._identity(claims, now)
        if not self._replay.first_use(token, float(claims["exp"]) + self._config.leeway, now):
            raise Rejected("evidence_replayed", "this GCE token was already used")
        return verified

    def _check_claims(self, claims: Mapping[str, Any], challenge: str, now: float) -> None:
        leeway = self._config.leeway
        if claims.get("iss") not in self._config.issuers:
            raise Rejected("evidence_issuer_invalid",
                           f"GCE token issuer must be one of {list(self._config.issuers)}")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if auds != [challenge]:
            raise Rejected("evidence_audience_invalid",
                           "GCE token audience is not this attestation's challenge")
        exp, iat = claims.get("exp"), claims.get("iat")
        nbf = claims.get("nbf", iat)
        if not (isinstance(exp, int | float) and isinstance(iat, int | float)
                and isinstance(nbf, int | float)):
            raise Rejected("evidence_invalid", "GCE token lacks numeric exp and iat (or nbf)")
        if now > exp + leeway:
            raise Rejected("evidence_expired", "GCE token expired")
        if iat > now + leeway or nbf > now + leeway:
            raise Rejected("evidence_invalid", "GCE token is not valid yet (check clocks)")
        if exp - iat > self._config.max_token_lifetime:
            raise Rejected("evidence_invalid", "GCE token lifetime is longer than Google's")

    def _identity(self, claims: Mapping[str, Any], now: float) -> Verified:
        gce = claims.get("google", {}).get("compute_engine") if isinstance(
            claims.get("google"), Mapping) else None
        if not isinstance(gce, Mapping) or "instance_id" not in gce:
            raise Rejected("evidence_invalid",
                           "GCE token has no google.compute_engine claims (request format=full)")
        out = {name: str(gce[name]) for name in (
            "project_id", "project_number", "zone", "instance_id", "instance_name")
            if name in gce}
        if isinstance(claims.get("email"), str):
            out["service_account"] = claims["email"]
        limit = self._config.max_instance_age
        if limit is not None:
            created = gce.get("instance_creation_timestamp")
            if not isinstance(created, int | float) or now - created > limit:
                raise Rejected("evidence_instance_too_old",
                               f"GCE instance created more than {limit:.0f} s ago")
        allowed = self._config.allowed_projects
        if allowed and out.get("project_id") not in allowed:
            raise Rejected("evidence_not_allowed", "GCE project is not in the allow-list")
        group = self._config.groups.resolve("gce", out)
        return Verified(evidence_type="gce", subject=f"gce:{out['instance_id']}",
                        claims=out, group=group)

