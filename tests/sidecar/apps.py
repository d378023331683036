"""Real endpoints for sidecar tests: an HTTP app that records what it saw, an
HTTP client, and a TLS client that reports the certificate a server presents."""

from __future__ import annotations

import http.client
import http.server
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tests.sidecar.netns import call_in


@dataclass
class Seen:
    path: str
    client: str


@dataclass
class EchoApp:
    """HTTP on 127.0.0.1:<port> inside a namespace; answers ``app:<port>:<path>``."""

    netns: str
    port: int
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> None:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.seen.append(Seen(self.path, self.client_address[0]))
                body = f"app:{app.port}:{self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        # The listening socket is created inside the namespace; serving can
        # then happen on any thread.
        self.server = call_in(self.netns, lambda: http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), Handler))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@dataclass
class TlsClient:
    """Presents ``cert``/``key`` and trusts ``bundle`` (files on disk)."""

    cert: Path
    key: Path
    bundle: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # SPIFFE certs carry no DNS name; we check the serial
        ctx.load_verify_locations(self.bundle)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def served(self, host: str, port: int, *, payload: bytes = b"",
               timeout: float = 5.0) -> tuple[x509.Certificate, bytes]:
        """Handshake, optionally send ``payload``; (server leaf, bytes read until close)."""
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                self.context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            data = b""
            if payload:
                tls.sendall(payload)
                while chunk := tls.recv(65536):
                    data += chunk
            return x509.load_der_x509_certificate(der), data
