"""``mesh-registrar``: init, serve, migrate, token create|list|revoke, workloads
list|evict|revoke, ca status|rotate, server-cert reissue (registrar/ca/cli.py).

Exit codes (``meshcore.exits``): 0 ok, 2 usage, 3 no such token or workload,
65 input refused (init over an existing CA, incomplete CA to import, inventory
from a newer version, a PostgreSQL schema older than this registrar: run
``migrate``), 69 the database cannot be reached, 78 bad configuration; 1 only for a bug.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from meshcore.clock import SystemClock
from meshcore.config.errors import ConfigError
from meshcore.config.reader import parse_duration
from meshcore.exits import EX_CONFIG, EX_DATAERR, EX_NOT_OK, EX_UNAVAILABLE, EX_USAGE
from registrar import __version__
from registrar.ca import cli as ca_cli
from registrar.ca.bootstrap import InitError, init_state
from registrar.catalog import cli as catalog_cli
from registrar.config import RegistrarConfig, build_config
from registrar.display import printable
from registrar.export import cli as export_cli
from registrar.oidc import cli as oidc_cli
from registrar.server import configure_logging, serve, state_paths
from registrar.store.connection import (
    SchemaOutdated,
    SchemaTooNew,
    StoreUnavailable,
    open_store,
)
from registrar.store.inventory import Inventory
from registrar.store.migrate import run_migrate
from registrar.store.tokens import TokenStore

MAX_TOKEN_TTL = 30 * 86400.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-registrar", description=__doc__)
    p.add_argument("--version", action="version", version=f"mesh-registrar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create (or import) the CA, TLS cert and starter config")
    init.add_argument("--state-dir", required=True, type=Path)
    init.add_argument("--trust-domain", required=True)
    init.add_argument("--server-name", action="append", default=[],
                      help="DNS name or IP for the TLS cert (repeatable; default localhost, "
                           "127.0.0.1)")
    init.add_argument("--import-ca", type=Path, metavar="DIR",
                      help="Istio plug-in CA directory (ca-cert.pem, ca-key.pem, "
                           "root-cert.pem, cert-chain.pem)")
    init.add_argument("--allow-nonstrict-ca", action="store_true",
                      help="import a CA that strict X.509 verifiers (Python 3.13, "
                           "openssl -x509_strict) would refuse; only for lenient fleets")

    srv = sub.add_parser("serve", help="run the HTTPS API")
    srv.add_argument("--config", required=True, type=Path)

    mig = sub.add_parser("migrate", help="bring the store's schema to this version (PostgreSQL: "
                         "required before `serve` after an upgrade; never downgrades)")
    mig.add_argument("--config", required=True, type=Path)

    token = sub.add_parser("token", help="join tokens")
    tsub = token.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="print a new join token once")
    create.add_argument("--config", required=True, type=Path)
    create.add_argument("--group", required=True)
    create.add_argument("--ttl", default="1h", help="e.g. 15m, 24h (max 30d)")
    tlist = tsub.add_parser("list", help="id, group, expiry, state (never the token)")
    tlist.add_argument("--config", required=True, type=Path)
    tlist.add_argument("--json", action="store_true")
    revoke = tsub.add_parser("revoke")
    revoke.add_argument("--config", required=True, type=Path)
    revoke.add_argument("id")

    wl = sub.add_parser("workloads", help="the inventory of registered workloads")
    wsub = wl.add_subparsers(dest="action", required=True)
    wlist = wsub.add_parser("list")
    wlist.add_argument("--config", required=True, type=Path)
    wlist.add_argument("--json", action="store_true")
    for name, text in (("evict", "must attest again (can re-attest)"),
                       ("revoke", "refused until an operator acts")):
        w = wsub.add_parser(name, help=text)
        w.add_argument("--config", required=True, type=Path)
        w.add_argument("id", type=int)
    catalog_cli.add_parsers(sub)
    ca_cli.add_parsers(sub)
    oidc_cli.add_parsers(sub)
    export_cli.add_parsers(sub)
    return p


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _init(args: argparse.Namespace) -> int:
    try:
        result = init_state(args.state_dir.resolve(), args.trust_domain,
                            args.server_name or ["localhost", "127.0.0.1"], args.import_ca,
                            allow_nonstrict=args.allow_nonstrict_ca)
    except InitError as exc:
        print(f"mesh-registrar init: {exc}", file=sys.stderr)
        return EX_DATAERR
    for warning in result.warnings:
        print(f"mesh-registrar init: warning: {warning}", file=sys.stderr)
    how = "imported" if result.imported else "created"
    print(f"CA {how} in {result.state_dir}\n"
          f"config: {result.config_path}\n"
          f"agents' trust anchor (registrar-ca.pem): {result.trust_anchor}")
    return 0


def _token(args: argparse.Namespace, config: RegistrarConfig) -> int:
    clock = SystemClock()
    store = TokenStore(open_store(config), clock)
    if args.action == "create":
        if args.group not in config.groups:
            raise ConfigError(config.source_file, "groups", f"no group named {args.group!r}",
                              ", ".join(sorted(config.groups)) or "no groups defined")
        try:
            ttl = parse_duration(args.ttl)
        except ValueError:
            ttl = -1.0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            print(f"mesh-registrar token create: --ttl {args.ttl!r}: allowed: a duration "
                  "like 15m or 24h between 1s and 30d", file=sys.stderr)
            return EX_USAGE
        _, token = store.create(args.group, ttl)
        print(token.reveal())  # the only place a token is ever shown
        return 0
    if args.action == "list":
        now = clock.now().timestamp()
        rows = [{"id": r.id, "group": r.group, "expires_at": _iso(r.expires_at),
                 "state": r.state(now)} for r in store.list()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['id']}  {r['group']:<20} {r['expires_at']}  {r['state']}")
        return 0
    if store.revoke(args.id):
        print(f"token {args.id} revoked")
        return 0
    print(f"mesh-registrar token revoke: no unrevoked token {args.id!r}", file=sys.stderr)
    return EX_NOT_OK


def _workloads(args: argparse.Namespace, config: RegistrarConfig) -> int:
    conn = open_store(config)
    inventory = Inventory(conn, SystemClock())
    if args.action == "list":
        mesh = catalog_cli.workload_mesh_columns(conn, config)
        rows = [{"id": w.id, "subject": w.subject, "evidence_type": w.evidence_type,
                 "spiffe_id": w.spiffe_id, "group": w.group, "hostname": w.hostname,
                 "addresses": list(w.addresses), "first_seen": _iso(w.first_seen),
                 "last_seen": _iso(w.last_seen), "state": w.state, **mesh.get(w.id, {})}
                for w in inventory.list()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                # Client-given text (the hostname above all) is escaped: see display.py.
                print(printable(f"{r['id']:>5}  {r['state']:<8} {r['spiffe_id']}  "
                                f"{r['hostname']}  last seen {r['last_seen']}"
                                f"{catalog_cli.mesh_line(mesh.get(r['id']))}"))
        return 0
    state = "evicted" if args.action == "evict" else "revoked"
    if inventory.set_state(args.id, state):
        print(f"workload {args.id} {state}")
        return 0
    print(f"mesh-registrar workloads {args.action}: no workload {args.id}", file=sys.stderr)
    return EX_NOT_OK


def _serve(args: argparse.Namespace, config: RegistrarConfig) -> int:
    configure_logging(config.log_level)
    return serve(config)


# Every command but ``init`` runs against an initialised registrar's config.
COMMANDS: Mapping[str, Callable[[argparse.Namespace, RegistrarConfig], int]] = {
    "serve": _serve,
    "migrate": lambda args, config: run_migrate(config),
    "token": _token,
    "workloads": _workloads,
    "service": catalog_cli.run_service,
    "xds": catalog_cli.run_xds,
    "ca": ca_cli.run_ca,
    "server-cert": ca_cli.run_server_cert,
    "oidc": oidc_cli.run,
    "export": export_cli.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init":
        return _init(args)
    try:
        config = build_config(args.config)
        missing = [str(p) for p in state_paths(config) if not p.is_file()]
        if missing:
            raise ConfigError(config.source_file, "ca/tls", f"missing {', '.join(missing)}",
                              "files created by `mesh-registrar init`")
        return COMMANDS[args.command](args, config)
    except ConfigError as exc:
        print(f"mesh-registrar: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (SchemaTooNew, SchemaOutdated) as exc:
        print(f"mesh-registrar: {exc}", file=sys.stderr)
        return EX_DATAERR
    except StoreUnavailable as exc:
        print(f"mesh-registrar: {exc.message} ({exc.logged})", file=sys.stderr)
        return EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
