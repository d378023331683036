"""The registrar client's connections, counted by a TCP relay in front of a real
registrar: mTLS calls with one certificate share one kept-alive connection; a
connection the server closed is replaced; a new certificate gets a new
connection; a renewal and calls without a client certificate (a token
attestation spends the token) never reuse one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.attest.base import Evidence
from agent.identity.keys import build_csr, generate_key, key_pem
from agent.registrar_client import RegistrarClient
from meshcore.durable import write_atomic
from meshcore.secret import Secret


class Relay:
    """Forwards each accepted TCP connection to the registrar and counts them."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.accepted = 0
        self._open: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._open += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut_all(self) -> None:
        """What a server's idle timeout does: close every open connection."""
        for writer in self._open:
            writer.close()
        self._open.clear()
        await asyncio.sleep(0.2)  # let the client's loop read the EOF

    def close(self) -> None:
        self._server.close()


async def _scenario(reg: Any, tmp: Path) -> dict[str, int]:
    relay = Relay(reg.host, reg.port)
    await relay.start()
    client = RegistrarClient(f"https://{reg.host}:{relay.port}", reg.ca_file, timeout=30)
    counts: dict[str, int] = {}
    chain, key_file = tmp / "cert-chain.pem", tmp / "key.pem"

    async def attest(token: str) -> None:
        key = generate_key("ecdsa-p256")
        issued = await client.attest(Evidence(type="join_token", fields={"token": Secret(token)}),
                                     build_csr(key, "vm"), challenge=None, hostname="vm",
                                     addresses=[])
        write_atomic(key_file, key_pem(key), mode=0o600)
        write_atomic(chain, issued.chain_pem, mode=0o644)

    try:
        await attest(reg.create_token("web", ttl="10m"))
        await client.bundle()
        await client.bundle()
        counts["anonymous"] = relay.accepted  # attest + 2 bundle reads

        before = relay.accepted
        for _ in range(3):
            await client.poll_bundle(known_version=None, client_cert=(chain, key_file))
        counts["three_mtls_calls"] = relay.accepted - before

        await relay.cut_all()
        before = relay.accepted
        await client.poll_bundle(known_version=None, client_cert=(chain, key_file))
        await client.poll_bundle(known_version=None, client_cert=(chain, key_file))
        counts["after_server_closed"] = relay.accepted - before

        before = relay.accepted
        renewed = await client.renew(build_csr(new_key := generate_key("ecdsa-p256"), "vm"),
                                     chain_file=chain, key_file=key_file, hostname="vm",
                                     addresses=[])
        write_atomic(key_file, key_pem(new_key), mode=0o600)
        write_atomic(chain, renewed.chain_pem, mode=0o644)
        await client.poll_bundle(known_version=None, client_cert=(chain, key_file))
        await client.poll_bundle(known_version=None, client_cert=(chain, key_file))
        counts["renew_then_two_calls"] = relay.accepted - before
    finally:
        client.close()
        relay.close()
    return counts


def test_connections_are_kept_per_certificate_never_for_renewals_or_anonymous_calls(
        registrar_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("default", "web-vm", 3600)})
    counts = asyncio.run(_scenario(reg, tmp_path))
    assert counts == {
        "anonymous": 3,               # attest and each bundle read: a connection each
        "three_mtls_calls": 1,        # one handshake for three calls
        "after_server_closed": 1,     # replaced once, then kept again
        "renew_then_two_calls": 2,    # the renewal on a connection of its own (it
                                      # verifies the registrar anew), then one for
                                      # the new certificate, shared by both calls
    }
