"""Polls the registrar's trust bundle, so a CA rotation reaches this VM within one
poll interval rather than one certificate lifetime.

``GET /v1/bundle`` over the pinned TLS, with the current certificate (the
registrar records that this workload holds the new bundle, which ``ca rotate
activate`` waits for) and ``If-None-Match`` with the version applied here (an
unchanged bundle costs a bodiless 304, and the registrar learns which version
this VM holds). A changed bundle becomes a new
credential generation with the same key and chain (written durably, like a
renewal), and Envoy takes the new validation context live from the file SDS
directory. Renewals hand out the bundle too; this only makes it sooner.

A failed poll is logged and retried at the next interval: the certificate's own
renewal path decides when the agent is in trouble, not this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.credentials.store import StoreError
from agent.identity.manager import IdentityManager
from agent.registrar_client import RegistrarClient, RegistrarError
from meshcore.clock import Clock

log = logging.getLogger(__name__)


class BundlePoller:
    def __init__(self, manager: IdentityManager, client: Callable[[], RegistrarClient],
                 interval: Callable[[], float], clock: Clock) -> None:
        """``client`` and ``interval`` are read on each poll, so SIGHUP applies them."""
        self._manager = manager
        self._client = client
        self._interval = interval
        self._clock = clock
        self.version: int | None = None

    async def poll_once(self) -> bool:
        """One poll; True when a new bundle was adopted."""
        creds = self._manager.store.current()
        cert = (creds.chain_path, creds.key_path) if creds is not None else None
        answer = await self._client().poll_bundle(known_version=self.version, client_cert=cert)
        if answer is None:
            log.debug("trust bundle unchanged", extra={"version": self.version})
            return False
        changed = await self._manager.adopt_bundle(answer.pem)
        self.version = answer.version
        if changed:
            log.info("new trust bundle from the registrar", extra={"version": answer.version})
            # Tell the registrar at once that this version is now in use here (a 304
            # carrying it): `ca rotate activate` waits for that, not for the download.
            await self._client().poll_bundle(known_version=self.version, client_cert=cert)
        return changed

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval())
            try:
                await self.poll_once()
            except (RegistrarError, StoreError, OSError) as exc:
                log.warning("trust bundle poll failed; retrying at the next interval",
                            extra={"error": str(exc)[:300]})
