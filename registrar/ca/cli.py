"""``mesh-registrar ca status|rotate`` and ``mesh-registrar server-cert reissue``.

Every refusal exits 65 (``EX_DATAERR``) with a machine-readable reason: on
stderr as ``refused (REASON): ...``, and with ``--json`` as an object on stdout
(``{"refused": REASON, "message": ..., "workloads": [...]}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meshcore.clock import SystemClock
from meshcore.exits import EX_DATAERR
from registrar.ca import rotation as steps
from registrar.ca.servercert import reissue_server_certificate, server_names
from registrar.ca.versions import Rotation, RotationRefused, load, version_dir
from registrar.config import RegistrarConfig
from registrar.store.connection import open_store
from registrar.store.inventory import Inventory, Workload

PHASES = ("prepare", "activate", "retire")


def add_parsers(sub: Any) -> None:
    ca = sub.add_parser("ca", help="the mesh CA: status and zero-downtime rotation")
    csub = ca.add_subparsers(dest="action", required=True)
    status = csub.add_parser("status", help="phase, CA versions, who holds which")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true")
    rotate = csub.add_parser("rotate", help="prepare | activate | retire, or "
                             "--intermediate-only")
    rotate.add_argument("phase", nargs="?", choices=PHASES)
    rotate.add_argument("--config", required=True, type=Path)
    rotate.add_argument("--intermediate-only", action="store_true",
                        help="a new intermediate under the same root, in one step")
    rotate.add_argument("--import-ca", type=Path, metavar="DIR",
                        help="prepare: the new CA is this Istio plug-in CA directory")
    rotate.add_argument("--allow-nonstrict-ca", action="store_true")
    rotate.add_argument("--force", action="store_true",
                        help="activate although some workloads were not seen with the new "
                             "bundle (their traffic with new certificates will fail)")
    rotate.add_argument("--json", action="store_true")
    server = sub.add_parser("server-cert", help="the registrar's own HTTPS certificate")
    ssub = server.add_subparsers(dest="action", required=True)
    reissue = ssub.add_parser("reissue", help="a new server certificate (both key "
                              "identifiers) from the signing CA; a running registrar "
                              "serves it from its next handshake")
    reissue.add_argument("--config", required=True, type=Path)
    reissue.add_argument("--server-name", action="append", default=[],
                         help="DNS name or IP (repeatable; default: the current names)")


def _label(w: Workload) -> str:
    return f"{w.id} {w.spiffe_id} {w.hostname or '-'}"


def _refused(args: argparse.Namespace, what: str, exc: RotationRefused) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"refused": exc.reason, "message": exc.message,
                          "workloads": list(exc.workloads)}, indent=2))
    print(f"mesh-registrar {what}: refused ({exc.reason}): {exc.message}", file=sys.stderr)
    for workload in exc.workloads:
        print(f"  {workload}", file=sys.stderr)
    return EX_DATAERR


def _summary(rotation: Rotation, inventory: Inventory) -> dict[str, Any]:
    in_use = inventory.ca_versions_in_use()
    in_use["v1"] = in_use.get("v1", 0) + in_use.pop("", 0)
    return {
        "phase": rotation.phase, "active": rotation.active, "next": rotation.next,
        "previous": rotation.previous, "bundle_version": rotation.bundle_version,
        "versions": [{"name": v.name, "kind": v.kind, "root_sha256": v.root,
                      "intermediate_sha256": v.intermediate,
                      "in_bundle": v.root in rotation.bundle_roots(),
                      "live_workloads": in_use.get(v.name, 0)} for v in rotation.versions],
        "workloads_without_current_bundle": [
            _label(w) for w in inventory.missing_bundle(rotation.bundle_version)],
        "history": list(rotation.history),
    }


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"phase: {summary['phase']}  signing: {summary['active']}  "
          f"bundle version: {summary['bundle_version']}")
    for v in summary["versions"]:
        print(f"  {v['name']:<4} {v['kind']:<12} root {v['root_sha256'][:16]}  "
              f"{'in bundle' if v['in_bundle'] else 'retired  '}  "
              f"{v['live_workloads']} live workload(s)")
    missing = summary["workloads_without_current_bundle"]
    if missing:
        print(f"{len(missing)} workload(s) not yet seen with bundle version "
              f"{summary['bundle_version']}:")
        for label in missing:
            print(f"  {label}")


def _check_delivered(inventory: Inventory, rotation: Rotation, force: bool) -> None:
    """Activating before every agent has the new root would break their traffic with
    peers that already hold new certificates: refuse, naming them."""
    missing = inventory.missing_bundle(rotation.bundle_version)
    if missing and not force:
        raise RotationRefused(
            "bundle_not_delivered", f"{len(missing)} live workload(s) have not been seen "
            f"with bundle version {rotation.bundle_version} (the new root) yet: wait one "
            "bundle poll interval (agents' registrar.bundle_poll_interval) and activate "
            "again, or --force", tuple(_label(w) for w in missing))


def run_ca(args: argparse.Namespace, config: RegistrarConfig) -> int:
    clock = SystemClock()
    now = clock.now().timestamp()
    inventory = Inventory(open_store(config), clock)
    what = f"ca {args.action}" + (f" {args.phase}" if getattr(args, "phase", None) else "")
    try:
        if args.action == "status":
            _print(_summary(steps.current(config, now), inventory), args.json)
            return 0
        if args.intermediate_only == (args.phase is not None):
            print("mesh-registrar ca rotate: give one of prepare, activate, retire or "
                  "--intermediate-only", file=sys.stderr)
            return 2
        if args.intermediate_only:
            what = "ca rotate --intermediate-only"
            rotation = steps.rotate_intermediate(config, now)
        elif args.phase == "prepare":
            rotation, warnings = steps.prepare(config, now, import_dir=args.import_ca,
                                               allow_nonstrict=args.allow_nonstrict_ca)
            for warning in warnings:
                print(f"mesh-registrar {what}: warning: {warning}", file=sys.stderr)
        elif args.phase == "activate":
            _check_delivered(inventory, steps.current(config, now), args.force)
            rotation = steps.activate(config, now)
        else:
            rotation = steps.retire(config, now, lambda versions: [
                _label(w) for w in inventory.holders_of(versions)])
    except RotationRefused as exc:
        return _refused(args, what, exc)
    _print(_summary(rotation, inventory), args.json)
    return 0


def run_server_cert(args: argparse.Namespace, config: RegistrarConfig) -> int:
    rotation = load(config.state_dir)
    ca_dir = version_dir(config.state_dir, rotation.active) if rotation else None
    cert = reissue_server_certificate(config, ca_dir, args.server_name or None)
    print(f"server certificate reissued for {', '.join(server_names(cert))}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: {config.tls_cert}")
    return 0
