"""Lightweight agents for the CA rotation test and benchmark: the real agent's
registrar client (pinned anchor + held bundle, mTLS renewals, bundle polls with
ETag), without Envoy or capture, many in one process. Run inside the
registrar's network namespace:

    python -m tests.integration.light_agent hold URL ANCHOR TOKEN DIR
        attest once and keep the certificate (it never renews): a workload that
        still holds an old certificate when ``ca rotate retire`` is tried
    python -m tests.integration.light_agent fleet URL ANCHOR TOKENS_FILE OUT POLL
        attest one agent per token, then renew at each renew_after and poll the
        bundle every POLL seconds until SIGTERM; per-agent events go to OUT (JSON)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.attest.base import Evidence
from agent.identity.keys import build_csr, generate_key, key_pem
from agent.registrar_client import Issued, RegistrarClient, RegistrarError
from meshcore.durable import write_atomic
from meshcore.secret import Secret


def _fingerprints(pem: bytes) -> list[str]:
    return [c.fingerprint(hashes.SHA256()).hex()[:16] for c in x509.load_pem_x509_certificates(pem)]


class LightAgent:
    def __init__(self, directory: Path, url: str, anchor: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir = directory
        self.bundle: bytes | None = None
        self.bundle_version: int | None = None
        self.issued: Issued | None = None
        self.client = RegistrarClient(url, anchor, timeout=20, extra_anchors=lambda: self.bundle)
        self.events: list[dict[str, Any]] = []
        self.failures: list[str] = []

    @property
    def files(self) -> tuple[Path, Path]:
        return self.dir / "cert-chain.pem", self.dir / "key.pem"

    def _store(self, key: Any, issued: Issued, what: str) -> None:
        chain, key_file = self.files
        write_atomic(key_file, key_pem(key), mode=0o600)
        write_atomic(chain, issued.chain_pem, mode=0o644)
        self.issued = issued
        self._bundle(issued.bundle_pem, None, what)
        issuer = x509.load_pem_x509_certificates(issued.chain_pem)[1]
        self.events.append({"at": time.time(), "event": what,
                            "issuer": issuer.subject.rfc4514_string()})

    def _bundle(self, pem: bytes, version: int | None, what: str) -> None:
        if pem != self.bundle:
            self.events.append({"at": time.time(), "event": f"bundle via {what}",
                                "roots": _fingerprints(pem), "version": version})
        self.bundle = pem
        if version is not None:
            self.bundle_version = version

    async def attest(self, token: str) -> None:
        key = generate_key("ecdsa-p256")
        issued = await self.client.attest(
            Evidence(type="join_token", fields={"token": Secret(token)}),
            build_csr(key, self.dir.name), challenge=None, hostname=self.dir.name, addresses=[])
        self._store(key, issued, "attest")

    async def renew(self) -> None:
        key = generate_key("ecdsa-p256")
        chain, key_file = self.files
        issued = await self.client.renew(build_csr(key, self.dir.name), chain_file=chain,
                                         key_file=key_file, hostname=self.dir.name,
                                         addresses=[])
        self._store(key, issued, "renew")

    async def poll(self) -> None:
        answer = await self.client.poll_bundle(known_version=self.bundle_version,
                                               client_cert=self.files)
        if answer is not None:
            self._bundle(answer.pem, answer.version, "poll")

    async def run(self, poll: float, stop: asyncio.Event) -> None:
        next_poll = time.monotonic() + poll
        while not stop.is_set():
            assert self.issued is not None
            renew_in = (self.issued.renew_after.timestamp() - time.time())
            wait = max(0.0, min(renew_in, next_poll - time.monotonic()))
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return
            except TimeoutError:
                pass
            try:
                if time.time() >= self.issued.renew_after.timestamp():
                    await self.renew()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + poll
                    await self.poll()
            except RegistrarError as exc:
                self.failures.append(f"{time.time():.1f} {exc.reason}: {exc.message[:120]}")
                await asyncio.sleep(0.5)


async def _fleet(url: str, anchor: Path, tokens: list[str], out: Path, poll: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    agents = [LightAgent(out.parent / f"light-{i:03d}", url, anchor) for i in range(len(tokens))]
    started = time.time()
    sem = asyncio.Semaphore(20)

    async def attest(agent: LightAgent, token: str) -> None:
        async with sem:
            await agent.attest(token)

    await asyncio.gather(*(attest(a, t) for a, t in zip(agents, tokens, strict=True)))
    attested = time.time()
    (out.parent / "fleet-ready").write_text(f"{attested - started:.2f}\n")
    # A reference measured in the same run: one renewal by every agent at once.
    burst = time.time()
    await asyncio.gather(*(a.renew() for a in agents))
    burst_seconds = time.time() - burst
    (out.parent / "fleet-burst").write_text(f"{burst_seconds:.2f}\n")
    await asyncio.gather(*(a.run(poll, stop) for a in agents))
    out.write_text(json.dumps({
        "attest_seconds": attested - started, "renew_burst_seconds": burst_seconds,
        "agents": [{"events": a.events, "failures": a.failures} for a in agents]}))


def main(argv: list[str]) -> int:
    if argv[0] == "hold":
        url, anchor, token, directory = argv[1], Path(argv[2]), argv[3], Path(argv[4])
        agent = LightAgent(directory, url, anchor)
        asyncio.run(agent.attest(token))
        return 0
    url, anchor, tokens, out, poll = argv[1], Path(argv[2]), Path(argv[3]), Path(argv[4]), float(
        argv[5])
    asyncio.run(_fleet(url, anchor, tokens.read_text().split(), out, poll))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
