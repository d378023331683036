"""The explicit map evidence type -> verifier, built from config.

Adding a verifier (GCE, AWS, Azure) is one entry in ``FACTORIES``: a function
that takes that verifier's config mapping (``evidence.<type>`` in
registrar.yaml) and the shared ``VerifierDeps`` and returns a ``Verifier``,
plus its name in ``registrar.config.EVIDENCE_TYPES`` (a test keeps the two
equal). A factory reports bad options by raising ``ConfigError`` (best: from an
``meshcore.config.reader.Section``) or ``ValueError``, which becomes a ConfigError
naming ``evidence.<type>``; either way ``serve`` exits 78 before listening.
Factories must be cheap and do no network I/O: ``serve`` builds them once to
validate before forking workers, then each worker builds its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.clock import Clock
from meshcore.config.errors import ConfigError
from registrar.attestation.base import Verifier
from registrar.attestation.cloud_options import aws_verifier, azure_verifier, gce_verifier
from registrar.attestation.join_token import JoinTokenVerifier
from registrar.config import RegistrarConfig
from registrar.store.connection import Connection
from registrar.store.tokens import TokenStore


@dataclass(frozen=True)
class VerifierDeps:
    """What verifiers may use: the stores, the config and the clock (no globals)."""

    config: RegistrarConfig
    tokens: TokenStore
    clock: Clock
    # The server's inventory connection: single-use claims made on it join the
    # transaction that records the certificate (registrar/api/service.py).
    conn: Connection | None = None


Factory = Callable[[Mapping[str, Any], VerifierDeps], Verifier]

FACTORIES: Mapping[str, Factory] = {
    "join_token": lambda options, deps: JoinTokenVerifier(deps.tokens),
    "gce": lambda options, deps: gce_verifier(options, deps.config, deps.clock, deps.conn),
    "aws": lambda options, deps: aws_verifier(options, deps.config, deps.clock, deps.conn),
    "azure": lambda options, deps: azure_verifier(options, deps.config, deps.clock),
}


def build_verifiers(deps: VerifierDeps) -> dict[str, Verifier]:
    """One verifier per enabled ``evidence`` entry; unknown types never reach here
    (the config parser only accepts names in EVIDENCE_TYPES)."""
    verifiers: dict[str, Verifier] = {}
    for name, options in deps.config.evidence.items():
        try:
            verifiers[name] = FACTORIES[name](options, deps)
        except ValueError as exc:
            raise ConfigError(deps.config.source_file, f"evidence.{name}", str(exc)) from None
    return verifiers
