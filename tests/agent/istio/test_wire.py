"""The committed protobuf modules are exactly what scripts/gen-protos makes
from the .proto files (so nobody edits generated code, and a .proto change
without regeneration fails here); and their wire format has Istio's field
numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from meshcore.istio_wire import istio_ca_pb2

ROOT = Path(__file__).resolve().parents[3]
WIRES = {"agent": ROOT / "agent" / "istio" / "wire",
         "meshcore": ROOT / "meshcore" / "istio_wire"}


def test_regenerating_gives_the_committed_output(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True,
                   cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                   timeout=120)
    for top, wire in WIRES.items():
        generated = sorted(p.name for p in (tmp_path / top).iterdir())
        assert generated == sorted(p.name for p in wire.glob("*_pb2.py*"))
        for name in generated:
            assert (tmp_path / top / name).read_bytes() == (wire / name).read_bytes(), name


def test_ca_request_field_numbers() -> None:
    request = istio_ca_pb2.IstioCertificateRequest(csr="C", validity_duration=60)
    request.metadata.update({"k": "v"})
    wire = request.SerializeToString()
    # field 1 (csr, length-delimited) = 0x0a; field 3 (int64) = 0x18; field 4 = 0x22
    assert wire.startswith(b"\x0a\x01C\x18\x3c\x22")
    response = istio_ca_pb2.IstioCertificateResponse.FromString(b"\x0a\x01a\x0a\x01b")
    assert list(response.cert_chain) == ["a", "b"]


def test_static_mode_never_loads_grpc_or_protobuf() -> None:
    code = ("import sys, agent.cli, agent.daemon.app, agent.daemon.dataplane, agent.preflight\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=60).stdout.strip()
    assert out == "[]"
