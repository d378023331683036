"""Workload identities for sidecar tests, issued by the real registrar: first a
join-token attestation, then renewals over mTLS with the current certificate,
each stored by the agent's CredentialStore as a new generation."""

from __future__ import annotations

from dataclasses import dataclass

from agent.attest.base import Evidence
from agent.credentials import Credentials, CredentialStore
from agent.identity.keys import build_csr, generate_key, key_pem
from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.wire import Issued
from meshcore.secret import Secret


@dataclass
class RegistrarIdentity:
    client: RegistrarClient
    token: str
    store: CredentialStore
    hostname: str

    async def refresh(self) -> tuple[Credentials, Issued]:
        key = generate_key("ecdsa-p256")
        csr = build_csr(key, self.hostname)
        current = self.store.current()
        if current is None:
            issued = await self.client.attest(
                Evidence("join_token", {"token": Secret(self.token)}), csr,
                challenge=None, hostname=self.hostname, addresses=[])
        else:
            issued = await self.client.renew(csr, chain_file=current.chain_path,
                                             key_file=current.key_path,
                                             hostname=self.hostname, addresses=[])
        return self.store.commit(key_pem(key), issued.chain_pem, issued.bundle_pem), issued
