"""The explicit map evidence type -> verifier, built from config.

Adding a verifier (GCE, AWS, Azure) is one entry in ``FACTORIES``: a function
that takes that verifier's config mapping (``evidence.<type>`` in
registrar.yaml) and the shared ``VerifierDeps`` and returns a ``Verifier``,
plus its name in ``registrar.config.EVIDENCE_TYPES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registrar.attestation.base import Verifier
from registrar.attestation.cloud_options import aws_verifier, azure_verifier, gce_verifier
from registrar.attestation.join_token import JoinTokenVerifier
from registrar.config import RegistrarConfig
from registrar.store.tokens import TokenStore


@dataclass(frozen=True)
class VerifierDeps:
    """What verifiers may use: the stores and the config (no globals)."""

    config: RegistrarConfig
    tokens: TokenStore


Factory = Callable[[Mapping[str, Any], VerifierDeps], Verifier]

FACTORIES: Mapping[str, Factory] = {
    "join_token": lambda options, deps: JoinTokenVerifier(deps.tokens),
    "gce": lambda options, deps: gce_verifier(options, deps.config),
    "aws": lambda options, deps: aws_verifier(options, deps.config),
    "azure": lambda options, deps: azure_verifier(options, deps.config),
}


def build_verifiers(deps: VerifierDeps) -> dict[str, Verifier]:
    """One verifier per enabled ``evidence`` entry; unknown types never reach here
    (the config parser only accepts names in EVIDENCE_TYPES)."""
    return {name: FACTORIES[name](options, deps)
            for name, options in deps.config.evidence.items()}
