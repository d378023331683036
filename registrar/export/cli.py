"""``mesh-registrar export istio --out DIR [--namespace NS] [--watch]``.

Writes the catalog as Istio YAML (registrar/export/istio.py), one resource per
file, each written atomically (temporary name, then rename: istiod's
``--configDir`` watcher and ``kubectl apply -f DIR`` never see half a file).
A file is rewritten only when its content changes, and a ``workloadgroup-``,
``workloadentry-`` or ``serviceentry-`` file this export did not produce (its
workload went, or turned unhealthy) is removed. ``--watch`` repeats every
``--interval`` until SIGTERM/SIGINT (health also changes with time alone: a
silent VM turns unhealthy after the grace period).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from meshcore.clock import SystemClock
from meshcore.config.reader import parse_duration
from meshcore.durable import write_atomic
from meshcore.exits import EX_USAGE
from registrar.catalog.store import load_catalog
from registrar.config import RegistrarConfig
from registrar.export.istio import export
from registrar.store.connection import open_store

PREFIXES = ("workloadgroup-", "workloadentry-", "serviceentry-")


def add_parsers(sub: Any) -> None:
    exp = sub.add_parser("export", help="the catalog as another control plane's config")
    esub = exp.add_subparsers(dest="action", required=True)
    istio = esub.add_parser("istio", help="WorkloadGroup, WorkloadEntry and ServiceEntry YAML")
    istio.add_argument("--config", required=True, type=Path)
    istio.add_argument("--out", required=True, type=Path, help="directory (created)")
    istio.add_argument("--namespace", help="only groups (and their services) in NS")
    istio.add_argument("--watch", action="store_true", help="keep DIR current")
    istio.add_argument("--interval", default="2s", help="--watch period (default 2s)")


def sync(out: Path, files: dict[str, str]) -> tuple[int, int]:
    """Make ``out`` hold exactly ``files`` (among our prefixes); (written, removed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = removed = 0
    for name, text in sorted(files.items()):
        path = out / name
        data = text.encode()
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        write_atomic(path, data, mode=0o644)
        written += 1
    for path in out.glob("*.yaml"):
        if path.name.startswith(PREFIXES) and path.name not in files:
            path.unlink(missing_ok=True)
            removed += 1
    return written, removed


def run(args: argparse.Namespace, config: RegistrarConfig) -> int:
    try:
        interval = parse_duration(args.interval)
    except ValueError:
        interval = 0.0
    if not 0.1 <= interval <= 3600:
        print(f"mesh-registrar export: --interval {args.interval!r}: allowed: a duration "
              "from 100ms to 1h", file=sys.stderr)
        return EX_USAGE
    conn = open_store(config)
    clock = SystemClock()
    stop = threading.Event()
    if args.watch:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while True:
        catalog = load_catalog(conn, config, clock.now().timestamp())
        files = export(catalog, args.namespace)
        written, removed = sync(args.out, files)
        if written or removed or not args.watch:
            print(f"{len(files)} resources in {args.out}: {written} written, "
                  f"{removed} removed", flush=True)
        if not args.watch or stop.wait(interval):
            return 0
