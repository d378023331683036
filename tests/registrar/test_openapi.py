"""The spec file itself: valid OpenAPI, and its reason enum is the server's."""

from __future__ import annotations

from pathlib import Path

import yaml
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


def _operations() -> list[tuple[str, str, dict[str, object]]]:
    return [(path, method, op) for path, ops in spec.spec()["paths"].items()
            for method, op in ops.items()]


def test_every_operation_lists_its_reasons_by_status() -> None:
    """x-reasons and responses agree, each reason sits under its own status, and
    together (with the routing answers every path gives) they are every reason."""
    listed: set[str] = set()
    for path, method, op in _operations():
        responses = {s for s in op["responses"] if int(s) >= 400}  # type: ignore[attr-defined]
        reasons: dict[str, list[str]] = op.get("x-reasons", {})  # type: ignore[attr-defined]
        assert set(reasons) == responses, (path, method)
        for status, names in reasons.items():
            for name in names:
                assert str(REASONS[name].status) == status, (path, method, name)
            listed |= set(names)
    assert listed | ROUTING == set(REASONS)


def test_the_spec_has_exactly_the_servers_routes_and_their_rate_limits(
        registrar: object, tmp_path: Path) -> None:
    """The routes of the real application (as ``serve`` builds it) are the spec's paths;
    a path with a rate family answers 429, one without never does."""
    from meshcore.clock import SystemClock
    from registrar.api.app import _FAMILIES
    from registrar.config import build_config
    from registrar.oidc.api import TOKEN_PATH
    from registrar.server import build_app
    from tests.fixtures.registrar import RegistrarProcess
    assert isinstance(registrar, RegistrarProcess)
    # The OIDC routes exist only with an ``oidc:`` section: serve them too.
    config = yaml.safe_load(registrar.config_path.read_text())
    config["oidc"] = {"issuer": "https://127.0.0.1:1",
                      "key_dir": str(tmp_path / "oidc")}
    with_oidc = tmp_path / "registrar.yaml"
    with_oidc.write_text(yaml.safe_dump(config))
    app = build_app(build_config(with_oidc), SystemClock())
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    declared = {(path, method) for path, method, _ in _operations()}
    assert routes == declared
    for path, method, op in _operations():
        limited = path in _FAMILIES or path == TOKEN_PATH  # the OIDC API has its own limits
        assert ("429" in op["responses"]) == limited, (path, method)  # type: ignore[operator]
        assert "500" in op["responses"], (path, method)  # type: ignore[operator]
