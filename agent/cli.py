"""`mesh-agent`: run the daemon, report status, preflight checks, capture control."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import __version__
from agent.config import ConfigError, load_config
from agent.config.model import DEFAULT_CONFIG
from meshcore.exits import EX_CONFIG, EX_NOT_OK, EX_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mesh-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the agent (what the systemd unit starts)"),
                       ("status", "show identity, expiry and readiness"),
                       ("check", "preflight: config, trust anchor, registrar, clock, state")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                         help=f"main config file (default {DEFAULT_CONFIG}; drop-ins in its .d/)")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
    _add_capture(sub)
    return parser


def _add_capture(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The unit's ExecStopPost needs `capture remove`: a broken install must fail
    # loudly here, never drop the command.
    from agent.capture.cli import add_commands

    add_commands(sub)


def _status(config_path: Path, as_json: bool) -> int:
    from agent.status import report

    data = report.collect(load_config(config_path))
    print(report.render_json(data) if as_json else report.render_text(data))
    return 0 if data.get("ready") else EX_NOT_OK


def _check(config_path: Path) -> int:
    from agent.preflight import run_checks

    config = load_config(config_path)
    print(f"{'ok':<5} config: {config_path} (+ drop-ins) is valid")
    for warning in config.warnings:
        # A warning, not a failure: the config works as it is.
        print(f"{'warn':<5} config: {warning}")
    results = run_checks(config)
    for result in results:
        print(f"{'ok' if result.ok else 'FAIL':<5} {result.name}: {result.detail}")
    return 0 if all(r.ok for r in results) else EX_NOT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from agent.daemon.start import run_daemon

            return run_daemon(args.config)
        if args.command == "status":
            return _status(args.config, args.json)
        if args.command == "check":
            return _check(args.config)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
    except ConfigError as exc:
        print(f"mesh-agent: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    return EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
