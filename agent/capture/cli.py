"""``mesh-agent capture plan|apply|remove|status``.

``remove`` and ``status`` work from ``capture.json`` alone, so the package's
removal scripts can undo capture even when the config is gone or broken.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

from agent.capture.backend import make_backend
from agent.capture.controller import CaptureController, CaptureStatus
from agent.capture.exempt import url_exemptions
from agent.capture.plan import Exempt
from agent.capture.record import RecordError
from agent.capture.runner import CaptureError
from agent.config import AgentConfig, ConfigError, load_config
from agent.config.model import control_plane_urls, effective_capture
from meshcore.exits import EX_CONFIG, EX_NOT_OK, EX_UNAVAILABLE

DEFAULT_CONFIG = Path("/etc/mesh-agent/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/mesh-agent")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``capture`` with its four subcommands; each sets ``handler`` to ``run``."""
    capture = subparsers.add_parser("capture", help="traffic capture (iptables/nftables)")
    actions = capture.add_subparsers(dest="capture_action", required=True)
    helps = {
        "plan": "print the exact rules for the current config; changes nothing",
        "apply": "install capture from the current config, verify it, or roll back",
        "remove": "remove what capture.json says is installed (config not needed)",
        "status": "what is installed, by whom, and whether it matches the plan",
    }
    for name, text in helps.items():
        sub = actions.add_parser(name, help=text, description=text)
        # SUPPRESS: never overwrite a --config the top-level parser already parsed.
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                         help=f"agent config file (default {DEFAULT_CONFIG})")
        if name in ("remove", "status"):
            sub.add_argument("--state-dir", type=Path, default=None,
                             help="state directory if the config cannot be read "
                                  f"(default {DEFAULT_STATE_DIR})")
        sub.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run the parsed ``capture`` subcommand; returns the process exit code."""
    path: Path = getattr(args, "config", None) or DEFAULT_CONFIG
    action: str = args.capture_action
    try:
        config: AgentConfig | None = load_config(path)
    except ConfigError as exc:
        if action in ("plan", "apply"):
            print(f"error: {exc}", file=sys.stderr)
            return EX_CONFIG
        print(f"warning: config unusable ({exc}); working from recorded state", file=sys.stderr)
        config = None
    state_dir = getattr(args, "state_dir", None) or (
        config.state_dir if config else DEFAULT_STATE_DIR)
    for warning in config.warnings if config else ():
        print(f"warning: {warning}", file=sys.stderr)
    try:
        # The same always-direct destinations the daemon plans with.
        exempt = _exemptions(config, action)
        controller = CaptureController(effective_capture(config) if config else None,
                                       state_dir=state_dir,
                                       always_exempt=exempt, owner=f"mesh-agent capture {action}")
        return asyncio.run(_ACTIONS[action](controller, out))
    except (CaptureError, RecordError, OSError) as exc:
        # An operational failure, not a bug (exit 1): no proxy answered the
        # probe, the kernel refused the rules, the lock is held; OSError: e.g.
        # the state directory is not readable by a non-root caller.
        print(f"error: capture {action}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def _exemptions(config: AgentConfig | None, action: str) -> tuple[Exempt, ...]:
    if config is None or action == "remove":
        return ()
    try:
        return tuple(e for url, why in control_plane_urls(config)
                     for e in url_exemptions(url, why))
    except CaptureError as exc:
        if action in ("plan", "apply"):
            raise
        print(f"warning: {exc}; comparing with a plan without it", file=sys.stderr)
        return ()


async def _plan(controller: CaptureController, out: TextIO) -> int:
    ruleset = controller.plan()
    name, source = await controller.choose_backend()
    print(f"# backend: {name} ({source}; detection only reads rules)", file=out)
    for exempt in controller.always_exempt:
        print(f"# always direct: {exempt.why} {exempt.network} port {exempt.port or 'any'}",
              file=out)
    for title, text in make_backend(name, controller.runner).render(ruleset).items():
        print(f"# {title}", file=out)
        print(text.rstrip("\n"), file=out)
    for probe in ruleset.probes:
        print(f"# verify: IPv{probe.family} probe to the first non-local of "
              f"{', '.join(probe.addresses)} port {probe.port} must be answered by the "
              f"proxy on port {probe.expect_port}", file=out)
    return 0


async def _apply(controller: CaptureController, out: TextIO) -> int:
    record = await controller.apply()
    if record.phase != "applied":
        print("capture is disabled in the config; nothing of ours is installed", file=out)
        return 0
    rules = sum(len(v) for v in record.applied.values())
    print(f"capture applied and verified: backend {record.backend}, {rules} rules, "
          f"IPv{'+IPv'.join(str(f) for f in record.families)}, plan {record.plan_digest}",
          file=out)
    return 0


async def _remove(controller: CaptureController, out: TextIO) -> int:
    record = await controller.remove()
    if record is None:
        print("nothing recorded: capture was never applied from this state directory", file=out)
    else:
        print(removed_text(record.backend, record.created_tables), file=out)
    return 0


def removed_text(backend: str, created_tables: tuple[str, ...]) -> str:
    """What ``capture remove`` left: the baseline, except that the kernel cannot
    delete a legacy table, so each one we caused to exist stays, empty."""
    if backend == "iptables-legacy" and created_tables:
        return (f"capture removed ({backend}); every rule and chain of ours is gone, but "
                f"the kernel cannot delete a legacy table, so these stay, empty with ACCEPT "
                f"policies: {', '.join(created_tables)}")
    return f"capture removed ({backend}); ruleset back to its baseline"


def describe(status: CaptureStatus) -> tuple[str, int]:
    """The operator-facing status text and exit code."""
    record = status.record
    if record is None:
        return "capture: not installed (no record)", 0
    rules = sum(len(v) for v in status.installed.values())
    lines = [f"capture: {record.phase}", f"backend: {record.backend} ({record.backend_source})",
             f"by: {record.owner or '-'} at {record.updated_at or '-'}",
             f"installed: {rules} rules in {len(status.installed)} chains"]
    code = 0
    if not status.matches_record:
        lines.append("DRIFT: installed rules differ from what was recorded as applied")
        code = EX_NOT_OK
    if record.phase == "removed" and status.matches_record:
        # Removed on purpose and nothing of ours is back: as asked, not drift.
        lines.append("plan: not compared: capture was removed (`capture apply` or an agent "
                     "start applies it again while the config enables it)")
    elif status.plan_error:
        lines.append(f"plan: cannot compare ({status.plan_error})")
    elif status.matches_plan is None:
        lines.append("plan: unknown (config unusable)")
    elif status.matches_plan:
        lines.append("plan: installed rules match the current config")
    else:
        lines.append("plan: installed rules do NOT match the current config (run capture apply)")
        code = EX_NOT_OK
    return "\n".join(lines), code


async def _status(controller: CaptureController, out: TextIO) -> int:
    text, code = describe(await controller.status())
    print(text, file=out)
    return code


_ACTIONS = {"plan": _plan, "apply": _apply, "remove": _remove, "status": _status}
