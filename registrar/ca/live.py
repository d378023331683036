"""What a running registrar signs and serves with, following ``ca/rotation.json``.

Every worker checks the identity (inode, size, mtime) of the rotation file and
of the server certificate on every request and TLS handshake (two stat calls),
and reloads when either changed: the signing authority, the bundle and its
version, and the TLS context. ``ca rotate`` and ``server-cert reissue``
therefore need no restart and no signal, and every answer that starts after one
of them returned is made with its result. A change that does not load yet (a
torn write) keeps the last good state and is tried again once a second.

The listening socket keeps one context whose SNI callback (OpenSSL calls it on
every handshake, with or without a server name) moves the connection onto the
current context: the server certificate of the signing CA, and client
verification against every root and intermediate still in the bundle.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshcore.clock import Clock
from registrar.ca.authority import Authority, load_authority, load_pem_certs
from registrar.ca.versions import Rotation, load, rotation_file, version_dir
from registrar.config import CaFiles, RegistrarConfig
from registrar.tlsctx import tls_context

log = logging.getLogger("registrar.ca")
CHECK_SECONDS = 1.0


def _files(state_dir: Path, name: str) -> CaFiles:
    d = version_dir(state_dir, name)
    return CaFiles(cert=d / "ca-cert.pem", key=d / "ca-key.pem", chain=d / "cert-chain.pem",
                   roots=d / "root-cert.pem")


def load_current(config: RegistrarConfig, clock: Clock) -> Authority:
    """The authority ``rotation.json`` names (or the configured files before any
    rotation), carrying the whole bundle and its version."""
    backdate = dt.timedelta(seconds=config.cert_backdate)
    rotation = load(config.state_dir)
    if rotation is None:
        return load_authority(config.ca, clock.now, backdate=backdate)
    authority = load_authority(_files(config.state_dir, rotation.active), clock.now,
                               version=rotation.active, backdate=backdate)
    return authority.with_bundle(bundle_certs(config.state_dir, rotation),
                                 rotation.bundle_version)


def bundle_certs(state_dir: Path, rotation: Rotation) -> list[x509.Certificate]:
    """Every root of the versions in the bundle (the signing root first), once each:
    the one definition of what agents are told to trust."""
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for name in (rotation.active, rotation.next, rotation.previous):
        if name is None:
            continue
        for root in load_pem_certs(_files(state_dir, name).roots):
            if root.fingerprint(hashes.SHA256()) not in seen:
                seen.add(root.fingerprint(hashes.SHA256()))
                out.append(root)
    return out


def verify_pem(config: RegistrarConfig, rotation: Rotation | None) -> str:
    """Roots and intermediates a client certificate may chain to."""
    if rotation is None:
        return config.ca.roots.read_text() + config.ca.chain.read_text()  # never rotated
    parts = []
    for name in (rotation.active, rotation.next, rotation.previous):
        if name is not None:
            files = _files(config.state_dir, name)
            parts += [files.roots.read_text(), files.chain.read_text()]
    return "".join(parts)


def server_context(config: RegistrarConfig, rotation: Rotation | None,
                   alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """``alpn``: the protocols to offer (``("h2",)`` for gRPC: gRPC clients refuse a
    server that negotiates none); the HTTPS API offers none."""
    context = tls_context(config, verify_pem(config, rotation))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


Stamp = tuple[tuple[int, int, int] | None, ...]


def stamp(config: RegistrarConfig) -> Stamp:
    """What says the CA or the server certificate changed: the identity (inode, size,
    mtime) of ``ca/rotation.json`` and of the server certificate, which
    ``server-cert reissue`` replaces on its own."""
    out: list[tuple[int, int, int] | None] = []
    for path in (rotation_file(config.state_dir), config.tls_cert):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class LiveCa:
    def __init__(self, config: RegistrarConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._stamp: Stamp = self._identity()
        self._retry_at = float("-inf")  # after a change that did not load: not before
        self._authority = load_current(config, clock)
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {
            (): server_context(config, load(config.state_dir))}
        self.listening = self.listening_context()

    def _identity(self) -> Stamp:
        return stamp(self._config)

    def refresh(self) -> None:
        # Two stat() calls per request (microseconds): an answer that starts after
        # a `ca rotate` step returned carries that step's bundle. Only a rotation
        # seen but not loadable yet waits CHECK_SECONDS before it is tried again.
        stamp = self._identity()
        if stamp == self._stamp:
            return
        now = self._clock.monotonic()
        if now < self._retry_at:
            return
        try:
            rotation = load(self._config.state_dir)
            authority = load_current(self._config, self._clock)
            contexts = {alpn: server_context(self._config, rotation, alpn)
                        for alpn in self._contexts}
        except (OSError, ValueError, ssl.SSLError) as exc:
            # Mid-write (a server key without its certificate yet): keep serving the
            # old state and look again on the next check.
            log.warning("CA rotation seen but not loadable yet; keeping the current CA",
                        extra={"error": str(exc)})
            self._retry_at = now + CHECK_SECONDS
            return
        self._stamp, self._authority, self._contexts = stamp, authority, contexts
        log.info("CA reloaded: signing with %s, bundle version %d (%d roots)",
                 authority.version, authority.bundle_version, len(authority.roots))

    def authority(self) -> Authority:
        self.refresh()
        return self._authority

    def current_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        self.refresh()
        context = self._contexts.get(alpn)
        if context is None:
            context = self._contexts[alpn] = server_context(
                self._config, load(self._config.state_dir), alpn)
        return context

    def listening_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A context for a listening socket that follows the CA: each handshake moves
        onto the current context with the same ALPN protocols."""
        base = server_context(self._config, load(self._config.state_dir), alpn)

        def switch(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.context = self.current_context(alpn)

        base.sni_callback = switch
        return base


def xds_pems(config: RegistrarConfig) -> tuple[tuple[bytes, bytes, bytes],
                                                Callable[[], tuple[bytes, bytes, bytes] | None]]:
    """The xDS server's certificate, key and client roots now, and a function that
    returns new ones once ``rotation.json`` changed (None meanwhile)."""
    def read() -> tuple[bytes, bytes, bytes]:
        return (config.tls_cert.read_bytes(), config.tls_key.read_bytes(),
                verify_pem(config, load(config.state_dir)).encode())

    seen = [stamp(config)]

    def changed() -> tuple[bytes, bytes, bytes] | None:
        now = stamp(config)
        if now == seen[0]:
            return None
        try:
            pems = read()
        except (OSError, ValueError) as exc:
            log.warning("xds: CA rotation seen but not loadable yet", extra={"error": str(exc)})
            return None
        seen[0] = now
        log.info("xds: server certificate and client roots reloaded")
        return pems

    return read(), changed
