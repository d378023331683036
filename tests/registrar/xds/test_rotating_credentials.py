"""The xDS server's TLS follows a CA rotation without a restart: after `activate`
it presents the new CA's certificate and accepts Envoys holding new leaves,
while Envoys still holding old leaves keep connecting (real gRPC handshakes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registrar.ca import rotation as steps
from registrar.ca.authority import load_authority
from registrar.ca.bootstrap import init_state
from registrar.ca.live import xds_pems
from registrar.ca.versions import version_dir
from registrar.config import CaFiles, RegistrarConfig, build_config
from registrar.xds.server import rotating_credentials

SPIFFE = "spiffe://example.org/ns/default/sa/example"


def _leaf(files: CaFiles) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = load_authority(files).issue(key.public_key(), SPIFFE, 600)
    return issued.chain_pem.encode(), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


async def _connects(port: int, trust: bytes, leaf: tuple[bytes, bytes]) -> bool:
    chain, key = leaf
    creds = grpc.ssl_channel_credentials(root_certificates=trust, private_key=key,
                                         certificate_chain=chain)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[
            ("grpc.ssl_target_name_override", "localhost")]) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 5)
        except TimeoutError:
            return False
        return True


def _files(config: RegistrarConfig, name: str) -> CaFiles:
    d = version_dir(config.state_dir, name)
    return CaFiles(cert=d / "ca-cert.pem", key=d / "ca-key.pem", chain=d / "cert-chain.pem",
                   roots=d / "root-cert.pem")


def test_xds_tls_follows_the_rotation(tmp_path: Path) -> None:
    config = build_config(init_state(tmp_path / "s", "example.org", ["localhost"]).config_path)
    old_root = config.ca.roots.read_bytes()
    old_leaf = _leaf(config.ca)

    async def run() -> None:
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", rotating_credentials(*xds_pems(config)))
        await server.start()
        try:
            assert await _connects(port, old_root, old_leaf)
            steps.prepare(config, 1.0)
            steps.activate(config, 2.0)
            new_root = (version_dir(config.state_dir, "v2") / "root-cert.pem").read_bytes()
            new_leaf = _leaf(_files(config, "v2"))
            # Trusting only the new root: the server must present the new certificate.
            assert await _connects(port, new_root, new_leaf)
            assert await _connects(port, old_root + new_root, old_leaf)
            assert not await _connects(port, old_root, new_leaf)
        finally:
            await server.stop(None)

    asyncio.run(run())
