"""``mesh-registrar service add|list|remove`` and the mesh columns of ``workloads list``.

``service add NAME --host orders.shop.mesh --port http:9090/HTTP --selector app=orders
[--vip 240.240.0.9] [--allow frontend] [--allow spiffe://td/ns/x/sa/y] [--replace]``.
Exit codes: 0 ok, 3 no such service, 65 refused (invalid, exists, VIP taken or exhausted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from meshcore.exits import EX_DATAERR, EX_NOT_OK
from registrar.catalog.model import Service, ServicePort
from registrar.catalog.store import ServiceExists, ServiceStore, VipExhausted, load_catalog
from registrar.config import RegistrarConfig
from registrar.display import printable
from registrar.store.connection import INTEGRITY_ERRORS, Connection, open_store
from registrar.xds.status import stream_rows


def add_parsers(sub: Any) -> None:
    svc = sub.add_parser("service", help="mesh services (Istio ServiceEntry-like)")
    ssub = svc.add_subparsers(dest="action", required=True)
    add = ssub.add_parser("add", help="add (or with --replace, change) a service")
    add.add_argument("--config", required=True, type=Path)
    add.add_argument("name")
    add.add_argument("--host", action="append", required=True, dest="hosts",
                     help="hostname callers use, e.g. orders.shop.mesh (repeatable)")
    add.add_argument("--port", action="append", required=True, dest="ports",
                     help="NAME:NUMBER[/HTTP|TCP][:TARGET], e.g. http:9090/HTTP (repeatable)")
    add.add_argument("--selector", action="append", required=True,
                     help="KEY=VALUE workload label the endpoints must carry (repeatable)")
    add.add_argument("--vip", default="", help="the service address (default: allocated)")
    add.add_argument("--allow", action="append", default=[],
                     help="a caller: group name or SPIFFE ID, spiffe://td/ns/x/* prefix "
                          "(repeatable; none: nobody may call)")
    add.add_argument("--replace", action="store_true", help="update an existing service")
    lst = ssub.add_parser("list")
    lst.add_argument("--config", required=True, type=Path)
    lst.add_argument("--json", action="store_true")
    rm = ssub.add_parser("remove")
    rm.add_argument("--config", required=True, type=Path)
    rm.add_argument("name")
    xds = sub.add_parser("xds", help="the xDS server's connected nodes, ACKs and NACKs")
    xsub = xds.add_subparsers(dest="action", required=True)
    st = xsub.add_parser("status")
    st.add_argument("--config", required=True, type=Path)
    st.add_argument("--json", action="store_true")


def run_xds(args: argparse.Namespace, config: RegistrarConfig) -> int:
    rows = stream_rows(open_store(config))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        acked = " ".join(f"{k}={v}" for k, v in sorted(dict(row["acked"]).items()))  # type: ignore[call-overload]
        print(printable(  # the node id and NACK text are the client's: display.py
            f"{row['node_id']}  peer={row['peer']}  acked: {acked or '-'}  "
            f"nacks={row['nacks']}{'  last: ' + str(row['last_nack']) if row['nacks'] else ''}"))
    return 0


def parse_port(text: str) -> ServicePort:
    """``http:9090``, ``http:9090/HTTP``, ``grpc:9000/TCP:19000`` (target port last)."""
    name, _, rest = text.partition(":")
    number, _, rest = rest.partition("/")
    protocol, _, target = rest.partition(":") if rest else ("TCP", "", "")
    try:
        return ServicePort(name=name, number=int(number), protocol=protocol.upper() or "TCP",
                           target_port=int(target) if target else 0)
    except ValueError:
        raise ValueError(f"port {text!r}: allowed: NAME:NUMBER[/HTTP|TCP][:TARGET], "
                         "e.g. http:9090/HTTP") from None


def _selector(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"selector {item!r}: allowed: KEY=VALUE")
        out[key] = value
    return out


def service_json(service: Service) -> dict[str, Any]:
    return {"name": service.name, "hosts": list(service.hosts), "vip": service.vip,
            "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol,
                       **({"targetPort": p.target_port} if p.target_port else {})}
                      for p in service.ports],
            "selector": dict(service.selector), "allowed": list(service.allowed)}


def run_service(args: argparse.Namespace, config: RegistrarConfig) -> int:
    store = ServiceStore(open_store(config), config.mesh.vip_range)
    prog = f"mesh-registrar service {args.action}"
    if args.action == "add":
        try:
            service = Service(name=args.name, hosts=tuple(args.hosts),
                              ports=tuple(parse_port(p) for p in args.ports),
                              selector=_selector(args.selector), vip=args.vip,
                              allowed=tuple(args.allow))
            stored = store.put(service, now=time.time(), replace_existing=args.replace)
        except (ValueError, ServiceExists, VipExhausted) as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EX_DATAERR
        except INTEGRITY_ERRORS:
            print(f"{prog}: vip {args.vip} is already another service's", file=sys.stderr)
            return EX_DATAERR
        print(json.dumps(service_json(stored)))
        return 0
    if args.action == "list":
        services = store.list()
        if args.json:
            print(json.dumps([service_json(s) for s in services], indent=2))
        for s in services if not args.json else ():
            ports = ",".join(f"{p.name}:{p.number}/{p.protocol}" for p in s.ports)
            print(f"{s.name:<20} {s.vip:<15} {','.join(s.hosts)}  ports={ports}  "
                  f"selector={_labels(s.selector)}  allow={','.join(s.allowed) or '-'}")
        return 0
    if store.remove(args.name):
        print(f"service {args.name} removed")
        return 0
    print(f"{prog}: no service {args.name!r}", file=sys.stderr)
    return EX_NOT_OK


def _labels(labels: dict[str, str] | Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dict(labels).items())) or "-"


def _iso(when: float) -> str:
    if not when:
        return "never"
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def workload_mesh_columns(conn: Connection,
                          config: RegistrarConfig) -> dict[int, dict[str, Any]]:
    """Per workload id: labels, ports, reported addresses, health and its reason."""
    catalog = load_catalog(conn, config, time.time())
    return {w.id: {"labels": dict(w.labels), "ports": dict(w.ports),
                   "mesh_addresses": list(w.addresses), "health": w.health,
                   "health_reason": w.health_reason, "last_report": _iso(w.last_seen)}
            for w in catalog.workloads}


def mesh_line(columns: dict[str, Any] | None) -> str:
    if columns is None:
        return ""
    return (f"  {columns['health']}({columns['health_reason']})"
            f"  addrs={','.join(columns['mesh_addresses']) or '-'}"
            f"  labels={_labels(columns['labels'])}")
