"""Exit codes of both programs, in one place.

systemd's units decide on these: ``RestartPreventExitStatus=78 79`` stops a
restart loop on a fault that a restart cannot fix. Code 1 is left for bugs.
"""

from __future__ import annotations

from typing import Final

EX_OK: Final = 0
EX_FAILED: Final = 1
"""An unexpected failure (a bug): systemd restarts the agent on it."""
EX_USAGE: Final = 2
"""Command-line usage error (argparse's code)."""
EX_NOT_OK: Final = 3
"""The command worked and the answer is no: not ready (``status``), a failed
preflight check (``check``), capture rules that drifted (``capture status``),
no such token or workload (registrar CLI). Like ``systemctl status``'s 3."""
EX_DATAERR: Final = 65
"""BSD EX_DATAERR: input refused (an incomplete CA to import, a state directory
that already holds a CA, an inventory written by a newer version)."""
EX_UNAVAILABLE: Final = 69
"""BSD EX_UNAVAILABLE: the command and its config are fine, but this host could
not carry the operation out: ``capture apply`` whose probe found no proxy
answering (rolled back), rules the kernel refused, the capture lock held by
another process, an unreadable state directory. Fix the cause named on stderr
and run the command again; nothing is left half-applied."""
EX_CONFIG: Final = 78
"""BSD EX_CONFIG: bad configuration (file, key and allowed values are printed)."""
EX_NO_IDENTITY: Final = 79
"""The agent holds no usable certificate and has no evidence to attest with."""
