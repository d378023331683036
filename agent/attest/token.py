"""The join-token attestor: a one-time token from a file, deleted only after
the credentials it bought are safely on disk."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from agent.attest.base import AttestError, Evidence
from meshcore.secret import Secret

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 4096


class TokenAttestor:
    name = "token"
    needs_challenge = False

    def __init__(self, token_file: Path) -> None:
        self._path = token_file

    async def detect(self) -> bool:
        return self._path.is_file()

    async def evidence(self, challenge: str | None) -> Evidence:
        try:
            st = self._path.stat()
            if st.st_size > MAX_TOKEN_BYTES:
                raise AttestError(f"{self._path}: larger than {MAX_TOKEN_BYTES} bytes; "
                                  "not a join token", retryable=False)
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("join token file is readable by others; it should be 0600",
                            extra={"path": str(self._path)})
            token = self._path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise AttestError(
                f"no join token at {self._path}: create one with "
                "`mesh-registrar token create --config /etc/mesh-registrar/registrar.yaml "
                "--group NAME` and write it there",
                retryable=False) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AttestError(f"cannot read join token {self._path}: {exc}",
                              retryable=False) from None
        if not token:
            raise AttestError(f"join token file {self._path} is empty", retryable=False)
        return Evidence(type="join_token", fields={"token": Secret(token)})

    def spent(self) -> None:
        try:
            self._path.unlink()
        except FileNotFoundError:
            return
        dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("join token used and deleted", extra={"path": str(self._path)})
