"""The reference beside the registrar bootstrap benchmark: what a Python server on
the same cores pays for a NEW TLS connection and one HTTP exchange, with no
application behind it.

    .venv/bin/python scripts/bench/tls_floor.py --config REGISTRAR_YAML --port P [--workers 2]

It serves with the registrar's own TLS context (``registrar/tlsctx.py``: the same
ECDSA P-256 certificate and chain, TLS 1.3 only, no tickets, client certificates
optional and verified against the same CA) on uvloop, forks ``--workers``
processes on one SO_REUSEPORT address as ``mesh-registrar serve`` does, reads one
request (head and Content-Length body) and answers a fixed 200 JSON body the size
of a real attest answer, then closes. No parsing beyond the head, no token, no
CSR, no signing, no database, no logging: the floor a Python registrar cannot go
below with this TLS stack. Prints "serving" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402

from registrar.config import build_config  # noqa: E402
from registrar.tlsctx import tls_context  # noqa: E402

# A real attest answer is about this long (chain, bundle, settings); the load
# clients check for the status and a "spiffe_id" key.
ANSWER_BYTES = 2300
_BODY = (b'{"spiffe_id": "spiffe://example.org/ns/bench/sa/vm", "pad": "'
         + b"x" * ANSWER_BYTES + b'"}')
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
          b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class OneAnswer(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport has the Transport methods without the base class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head, sep, body = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) >= length and self._transport is not None:
            self._transport.write(ANSWER)
            self._transport.close()


async def serve(config_path: Path, port: int) -> None:
    config = build_config(config_path)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(OneAnswer, sock=sock, ssl=tls_context(config),
                                      backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("serving", flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            with contextlib.suppress(KeyboardInterrupt):
                uvloop.run(serve(args.config, args.port))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
