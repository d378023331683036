"""The key ring on disk: a retired key is published exactly until its last token
has expired (max_token_ttl + grace after the rotation), then deleted."""

from __future__ import annotations

from pathlib import Path

from registrar.oidc.keyring import GRACE, KeyRing, ensure, entries, load, rotate

TTL = 600.0


def kids(key_dir: Path, now: float) -> list[str]:
    return [kid for kid, _ in load(key_dir, now, TTL).published]


def test_overlap_then_removal(tmp_path: Path) -> None:
    key_dir = tmp_path / "oidc"
    assert ensure(key_dir, 0.0) and not ensure(key_dir, 1.0)
    first = entries(key_dir)[0].kid
    second, removed = rotate(key_dir, 100.0, TTL)
    assert removed == []
    edge = 100.0 + TTL + GRACE
    assert kids(key_dir, edge - 1) == [first, second.kid]  # old tokens may still be alive
    assert load(key_dir, edge - 1, TTL).signer.kid == second.kid
    assert kids(key_dir, edge) == [second.kid]  # the last old token has expired
    third, removed = rotate(key_dir, edge, TTL)
    assert [e.kid for e in removed] == [first]
    assert not (key_dir / f"{first}.pem").exists()
    assert kids(key_dir, edge) == [second.kid, third.kid]


def test_a_worker_view_follows_rotation_and_expiry(tmp_path: Path) -> None:
    key_dir = tmp_path / "oidc"
    ensure(key_dir, 0.0)
    ring = KeyRing(key_dir, TTL)
    first = ring.current(0.0).signer.kid
    rotate(key_dir, 10.0, TTL)
    view = ring.current(11.0)
    assert view.signer.kid != first and len(view.published) == 2
    # No file change at expiry: the view still drops the old key on time.
    assert len(ring.current(10.0 + TTL + GRACE).published) == 1
