"""Run inside a VM namespace (``python -m tests.istio.oidc_calls ...``): the agent's own
Istio-mode parts, called directly, with the result as one JSON line on stdout.

* ``present --dir ISTIO_DIR`` (token on stdin): CreateCertificate at istiod with
  that token through ``IstioCAClient`` (``token_from_registrar``), as the agent
  sends a registrar token; prints ``{"ok", "spiffe_id"}`` or ``{"ok": false,
  "reason", "action", "message"}`` (the agent's report).
* ``loop --dir D --state S --registrar URL --ca CA --token-file F --seconds N``:
  attest to mesh-registrar with a join token, print ``ready``, then for N seconds: fresh token
  from the registrar, wait 0-1 s (a rotation may land meanwhile), present it to
  istiod. Prints counts of successes and every failure.
* ``token --state S --registrar URL --ca CA --token-file F --out FILE``: attest to
  mesh-registrar with a join token and write one fresh JWT to FILE (0600; never
  printed): the istio-token a pilot-agent VM presents to the registrar's CA API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from agent.attest.base import Attestor, Evidence
from agent.attest.token import TokenAttestor
from agent.identity.keys import build_csr, generate_key
from agent.istio.ca_client import IstioCAClient
from agent.istio.registrar_token import RegistrarTokenSource
from agent.istio.vm import load_vm
from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.errors import RegistrarError
from meshcore.clock import SystemClock
from meshcore.secret import Secret


async def _present(client: IstioCAClient, token: Secret) -> dict[str, Any]:
    key = generate_key("ecdsa-p256")
    try:
        issued = await client.attest(Evidence("istio-token", {"token": token}),
                                     build_csr(key, "oidc-test"), challenge=None,
                                     hostname="oidc-test", addresses=[])
    except RegistrarError as exc:
        return {"ok": False, "reason": exc.reason, "action": exc.action, "message": str(exc)}
    return {"ok": True, "spiffe_id": issued.spiffe_id}


async def _loop(args: argparse.Namespace, client: IstioCAClient) -> dict[str, Any]:
    source = _source(args)
    await source.identity()  # attested to mesh-registrar: the timed part starts now
    print("ready", flush=True)
    ok, failures, kids = 0, [], set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        evidence = await source.token()
        token = evidence.fields["token"]
        assert isinstance(token, Secret)
        kids.add(json.loads(_b64(token.reveal().split(".")[0]))["kid"])
        await asyncio.sleep(random.uniform(0, 1.0))
        result = await _present(client, token)
        if result["ok"]:
            ok += 1
        else:
            failures.append(result)
    return {"ok": ok, "failures": failures, "kids": sorted(kids)}


def _source(args: argparse.Namespace) -> RegistrarTokenSource:
    async def choose() -> Attestor:
        return TokenAttestor(Path(args.token_file))
    return RegistrarTokenSource(
        RegistrarClient(args.registrar, Path(args.ca), timeout=10), choose,
        state_dir=Path(args.state), key_type="ecdsa-p256", clock=SystemClock(),
        host=lambda: ("oidc-calls", []))


async def _token(args: argparse.Namespace) -> dict[str, Any]:
    evidence = await _source(args).token()
    token = evidence.fields["token"]
    assert isinstance(token, Secret)
    out = Path(args.out)
    out.write_text(token.reveal())
    out.chmod(0o600)
    return {"ok": True}


def _b64(text: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("present", "loop", "token"))
    parser.add_argument("--dir")
    parser.add_argument("--out")
    parser.add_argument("--state")
    parser.add_argument("--registrar")
    parser.add_argument("--ca")
    parser.add_argument("--token-file")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if args.mode == "token":
        print(json.dumps(asyncio.run(_token(args))))
        return 0
    client = IstioCAClient(load_vm(Path(args.dir)), cert_ttl=3600, timeout=10,
                           token_from_registrar=True)
    if args.mode == "present":
        result = asyncio.run(_present(client, Secret(sys.stdin.read().strip())))
    else:
        result = asyncio.run(_loop(args, client))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
