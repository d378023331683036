"""The xDS port bounds the TLS handshake as the registrar's other ports do: a
connection that never completes one is closed after ``HANDSHAKE_SECONDS`` (gRPC's
own default is 120 s). Envoys completing theirs are test_ads.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registrar.api.connections import HANDSHAKE_SECONDS
from tests.fixtures.registrar import RegistrarProcess, free_port
from tests.registrar.test_connections import silence_cut_after
from tests.registrar.xds.mesh import wait_for


@pytest.fixture
def xds(tmp_path: Path) -> Iterator[tuple[RegistrarProcess, int]]:
    port = free_port()
    reg = RegistrarProcess(tmp_path / "registrar",
                           config={"xds": {"listen": f"127.0.0.1:{port}"}})
    (tmp_path / "registrar").mkdir()
    try:
        reg.start()
        wait_for(lambda: "xds serving" in reg.log_text(), 30)
        yield reg, port
    finally:
        reg.kill()


def test_a_connection_that_never_starts_tls_is_closed_after_the_handshake_bound(
        xds: tuple[RegistrarProcess, int]) -> None:
    reg, port = xds
    took = silence_cut_after(port, "127.0.0.5")
    assert HANDSHAKE_SECONDS - 1 <= took <= HANDSHAKE_SECONDS + 5, took
    assert reg.running()
