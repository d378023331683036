"""The spec file itself: valid OpenAPI, and its reason enum is the server's."""

from __future__ import annotations

from openapi_spec_validator import validate

from registrar.rejections import REASONS
from tests.registrar import spec


def test_spec_is_valid_openapi() -> None:
    validate(spec.spec())


def test_reason_enum_equals_registrar_reasons() -> None:
    assert spec.reasons_enum() == set(REASONS)


ROUTING = {"not_found", "method_not_allowed"}  # any path: stated in info.description


def test_every_reason_status_is_declared_for_attest_or_renew() -> None:
    paths = spec.spec()["paths"]
    declared = set(paths["/v1/attest"]["post"]["responses"]) | set(
        paths["/v1/renew"]["post"]["responses"])
    assert {str(r.status) for name, r in REASONS.items() if name not in ROUTING} <= declared
    description = spec.spec()["info"]["description"]
    assert all(f"{REASONS[name].status} `{name}`" in description for name in ROUTING)


def test_every_configurable_evidence_type_has_a_verifier_factory() -> None:
    from registrar.attestation.registry import FACTORIES
    from registrar.config import EVIDENCE_TYPES
    assert set(EVIDENCE_TYPES) == set(FACTORIES)
