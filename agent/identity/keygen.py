"""Keys and CSRs, made in a short-lived child process.

The daemon needs ``cryptography`` only to make a key and its CSR, once per
attestation or renewal (hours apart). Importing it into the daemon would keep
about 10 MiB resident for good, so the work runs in a child of the same
Python, with the same import path, that exits when done. The key is made in
the child, on this VM, and comes back over a pipe: it never touches a disk
here (the caller stores it, 0600) and never leaves the machine.

A first boot needs a key before anything else can happen, so ``prestart`` may
start the next helper ahead of time: it imports cryptography and waits on its
stdin while the daemon loads its own modules, and the next ``key_and_csr``
hands it the request instead of starting one. ``discard_spare`` ends one that
no one took.

Protocol: one JSON object on the child's stdin (``key_type``, ``hostname`` and,
to sign a CSR for a key already made, ``key_pem``), one on its stdout
(``key_pem`` and ``csr_pem``, or ``error`` with ``reason`` ``not_a_key`` for a
``key_pem`` that is not a private key this agent could have written).
"""

from __future__ import annotations

import asyncio
import json
import sys

# The child gets the parent's import path as its only one (the package's launcher
# runs Python with -I and prepends its own directories, so -m would not find them),
# and skips ``site`` (-S): those directories already include site-packages.
_CHILD = ("import sys; sys.path[:] = sys.argv[1].split(':'); "
          "from agent.identity.keygen_child import main; sys.exit(main())")
TIMEOUT = 60.0
Helper = asyncio.subprocess.Process
# A helper started ahead of time (``prestart``) for the next ``key_and_csr``.
_spare: Helper | None = None


class KeygenError(Exception):
    """No key or CSR: ``reason`` is ``not_a_key`` (the key given is unusable) or
    ``keygen_failed`` (the child could not run or died)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _spawn() -> Helper:
    path = ":".join(p for p in sys.path if p and ":" not in p)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", _CHILD, path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise KeygenError("keygen_failed", f"cannot start the key helper: {exc}") from None


def _take_spare() -> Helper | None:
    """The helper ``prestart`` started, if it is still waiting for its request."""
    global _spare  # one spare per process, on its one event loop
    spare, _spare = _spare, None
    return spare if spare is not None and spare.returncode is None else None


async def prestart() -> bool:
    """Start the helper for the next ``key_and_csr`` now (at most one waits). False
    when none could be started: ``key_and_csr`` then tries again and says why."""
    global _spare  # noqa: PLW0603
    if _spare is None:
        try:
            _spare = await _spawn()
        except KeygenError:
            return False
    return True


async def discard_spare() -> None:
    """End a helper ``prestart`` started that no ``key_and_csr`` took, and reap it."""
    global _spare
    spare, _spare = _spare, None
    if spare is None:
        return
    if spare.returncode is None:
        spare.kill()
    await spare.wait()


async def key_and_csr(key_type: str, hostname: str,
                      key_pem: bytes | None = None) -> tuple[bytes, bytes]:
    """A new key of ``key_type`` (or ``key_pem``) and a CSR for it."""
    request = {"key_type": key_type, "hostname": hostname}
    if key_pem is not None:
        request["key_pem"] = key_pem.decode("ascii", "replace")
    child = _take_spare() or await _spawn()
    try:
        out, err = await asyncio.wait_for(child.communicate(json.dumps(request).encode()),
                                          TIMEOUT)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise KeygenError("keygen_failed", f"the key helper took over {TIMEOUT:.0f} s") from None
    except asyncio.CancelledError:  # the agent is stopping: leave no helper behind
        if child.returncode is None:
            child.kill()
        await child.wait()
        raise
    try:
        answer = json.loads(out)
        if "error" in answer:
            raise KeygenError(str(answer.get("reason", "keygen_failed")), str(answer["error"]))
        return answer["key_pem"].encode(), answer["csr_pem"].encode()
    except (ValueError, TypeError, KeyError, AttributeError):
        # Its stderr holds a traceback at worst: the key it made is only ever on stdout.
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise KeygenError("keygen_failed", f"the key helper exited {child.returncode}: "
                          f"{tail[0][:300]}") from None
