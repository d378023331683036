"""The key helper process (``agent.identity.keygen`` starts it): reads one request
as JSON on stdin, writes the new key and its CSR as JSON on stdout, and exits.
Only this process imports cryptography."""

from __future__ import annotations

import json
import sys

from cryptography.exceptions import UnsupportedAlgorithm

from agent.identity.keys import build_csr, generate_key, key_pem, load_key


def main() -> int:
    request = json.load(sys.stdin)
    if "key_pem" in request:
        try:
            key = load_key(request["key_pem"].encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # TypeError: encrypted
            json.dump({"error": f"not a private key: {exc}", "reason": "not_a_key"}, sys.stdout)
            return 0
    else:
        key = generate_key(request["key_type"])
    json.dump({"key_pem": key_pem(key).decode(),
               "csr_pem": build_csr(key, request["hostname"]).decode()}, sys.stdout)
    return 0
