"""How long a leaf lives: the renewal hint always lies ahead (``cert_ttl`` has a floor
of 6 x ``cert_backdate``), and NotBefore never precedes the issuer's own NotBefore."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from cryptography import x509

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key


def _attest(reg: RegistrarProcess, group: str) -> tuple[x509.Certificate, dict[str, object]]:
    with calls.client(reg) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            reg.create_token(group), csr_pem(ec_key())))
    assert status == 200, body
    return x509.load_pem_x509_certificates(body["cert_chain"].encode())[0], body


def _when(stamp: object) -> float:
    return dt.datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC).timestamp()


def test_the_shortest_ttl_allowed_still_puts_renewal_ahead(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    # The floor with the default 10 s backdate: 60 s (the fixture leaves it alone).
    reg = registrar_factory(groups={"short": ("default", "short", 60)})
    before = time.time()
    leaf, body = _attest(reg, "short")
    after = time.time()
    assert before - 11 <= leaf.not_valid_before_utc.timestamp() <= after - 9
    # Due (60 - 10) / 2 = 25 s after issue: well ahead, not already past.
    assert _when(body["renew_after"]) - after >= 23


def test_a_ttl_below_the_floor_is_refused_at_start(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(start=False, groups={"short": ("default", "short", 30)},
                            config={"cert_backdate": "10s"})
    out = reg.cli("serve", check=False)
    assert out.returncode == 78, out.stderr
    assert str(reg.config_path) in out.stderr and "groups[0].cert_ttl" in out.stderr
    assert "at least 6 x cert_backdate = 60s" in out.stderr


def test_notbefore_is_clamped_to_the_issuers_notbefore(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    # ``init`` starts the intermediate 5 minutes back; a 1 h backdate would reach past it.
    reg = registrar_factory(groups={"web": ("default", "web", 6 * 3600)},
                            config={"cert_backdate": "1h"})
    intermediate = x509.load_pem_x509_certificate((reg.state_dir / "ca-cert.pem").read_bytes())
    leaf, _ = _attest(reg, "web")
    assert leaf.not_valid_before_utc == intermediate.not_valid_before_utc
    assert leaf.not_valid_before_utc.timestamp() > time.time() - 3600 + 60
    assert leaf.not_valid_after_utc <= intermediate.not_valid_after_utc
