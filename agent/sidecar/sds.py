"""Hands each credential generation to Envoy without weakening the agent's key.

The agent's key (``<state_dir>/credentials/<gen>/key.pem``) is 0600 and owned by
the agent; Envoy runs as the proxy user and cannot read it. Rather than widen
that file's mode or group, the agent *mirrors* each generation into
``<state_dir>/envoy/sds/gen-<gen>/``, where ``key.pem`` is again 0600 but owned
by the proxy uid (an injected ``chown``), then swaps ``sds/current`` by rename,
exactly like the credential store does. Each key file has one reader, and the
mirror holds nothing the proxy could not already use on the wire.

Directory modes: ``envoy/`` and ``sds/`` are 0750 with the proxy gid, so only
root, the agent and the proxy can look inside; generation dirs are 0750 too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.proxy.user import ProxyIdentity
from agent.sidecar.render import to_yaml
from agent.sidecar.settings import EnvoyPaths
from agent.sidecar.tls import secret_documents
from meshcore.durable import fsync_dir, remove_stale_temps, replace_symlink, write_atomic

Chown = Callable[[Path, int, int], None]
GEN_PREFIX = "gen-"
KEEP_GENERATIONS = 2  # the live one and the one before, for reads in flight


def os_chown(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)


@dataclass(frozen=True)
class Generation:
    """One credential generation's PEM bytes, as the credential store holds them."""

    name: str
    key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes

    @classmethod
    def read(cls, directory: Path) -> Generation:
        """Read ``<credentials>/<gen>`` (or ``current``, resolved to its generation)."""
        real = directory.resolve(strict=True)
        return cls(
            name=real.name,
            key_pem=(real / "key.pem").read_bytes(),
            chain_pem=(real / "cert-chain.pem").read_bytes(),
            bundle_pem=(real / "bundle.pem").read_bytes(),
        )

    def __repr__(self) -> str:  # never print the key
        return f"Generation({self.name!r})"


class SdsMirror:
    """Owns ``<state_dir>/envoy/sds``. Cheap to construct; I/O in the methods."""

    def __init__(self, paths: EnvoyPaths, proxy: ProxyIdentity, *, chown: Chown = os_chown):
        self._paths = paths
        self._proxy = proxy
        self._chown = chown

    def _dir(self, path: Path) -> None:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        path.chmod(0o750)
        self._chown(path, os.geteuid(), self._proxy.gid)

    def prepare(self) -> None:
        """Create the directories and the two SDS documents (they never change)."""
        self._dir(self._paths.root)
        self._dir(self._paths.sds_dir)
        remove_stale_temps(self._paths.sds_dir)
        for file, document in secret_documents(self._paths).items():
            path = Path(file)
            write_atomic(path, to_yaml(document).encode(), mode=0o640)
            self._chown(path, os.geteuid(), self._proxy.gid)

    def publish(self, generation: Generation) -> Path:
        """Mirror ``generation`` and make it live with one rename. Idempotent."""
        if "/" in generation.name or generation.name in ("", ".", ".."):
            raise ValueError(f"bad generation name {generation.name!r}")
        target = self._paths.sds_dir / f"{GEN_PREFIX}{generation.name}"
        self._dir(target)
        for name, data, mode in (
            ("cert-chain.pem", generation.chain_pem, 0o644),
            ("bundle.pem", generation.bundle_pem, 0o644),
            ("key.pem", generation.key_pem, 0o600),
        ):
            # write_atomic creates the temp file 0600 as the agent, so the key
            # is never readable by anyone else; chown hands it to the proxy
            # after the rename, before `current` points at it.
            write_atomic(target / name, data, mode=mode)
            self._chown(target / name, self._proxy.uid, self._proxy.gid)
        fsync_dir(target)
        replace_symlink(self._paths.current, target.name)
        self._prune(keep=target.name)
        return target

    def live(self) -> str | None:
        """The generation name Envoy currently reads, if any."""
        try:
            return os.readlink(self._paths.current).removeprefix(GEN_PREFIX)
        except FileNotFoundError:
            return None

    def _prune(self, keep: str) -> None:
        generations = sorted(
            (p for p in self._paths.sds_dir.glob(f"{GEN_PREFIX}*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime_ns,
        )
        old = [p for p in generations if p.name != keep][: -(KEEP_GENERATIONS - 1) or None]
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)
