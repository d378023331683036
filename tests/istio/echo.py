"""A plain-HTTP app for a VM: answers every GET with JSON of what it saw
(the headers, including the X-Forwarded-Client-Cert the sidecar adds, and the
peer address). ``python echo.py PORT NAME``; prints ``ready`` once listening."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"app": name, "path": self.path, "peer": self.client_address[0],
                               "headers": {k.lower(): v for k, v in self.headers.items()}})
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
