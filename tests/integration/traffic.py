"""Continuous requests for the CA rotation test and benchmark: run inside the caller's
network namespace (``ip netns exec NS python -m tests.integration.traffic ...``).

Each request is a new TCP connection with a plain HTTP/1.0 GET. Capture sends it
to the local Envoy, whose tcp_proxy opens a new mTLS connection to the peer's
Envoy for it, so every request is a fresh handshake between the two sidecars
with whatever certificates and bundles they hold at that moment. Until SIGTERM;
then the counts (and each failure, with its time) go to OUT as JSON.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any


def request(host: str, port: int, n: int, timeout: float) -> str | None:
    """None on success, else what went wrong."""
    want = f"app:{port}:/r{n}".encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET /r{n} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not data.endswith(want):
        return f"unexpected answer {data[-80:]!r}"
    return None


def main(argv: list[str]) -> int:
    host, port, out, interval = argv[0], int(argv[1]), Path(argv[2]), float(argv[3])
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ok = 0
    failures: list[dict[str, Any]] = []
    n = 0
    while not stop:
        n += 1
        started = time.time()
        error = request(host, port, n, timeout=5.0)
        if error is None:
            ok += 1
        else:
            failures.append({"at": started, "error": error})
        time.sleep(max(0.0, interval - (time.time() - started)))
    out.write_text(json.dumps({"ok": ok, "failed": len(failures), "failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
