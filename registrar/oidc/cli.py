"""``mesh-registrar oidc rotate|keys``: the OIDC signing keys.

``rotate`` makes a new signing key at once; the old one stays in the JWKS until
the last token it signed has expired (``max_token_ttl`` after the rotation), and
a later ``rotate`` deletes keys past that. Running servers pick the change up on
their next request, with no restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from meshcore.clock import SystemClock
from meshcore.exits import EX_CONFIG
from registrar.config import RegistrarConfig
from registrar.oidc.keyring import GRACE, KeyRingError, ensure, entries, rotate


def add_parsers(sub: Any) -> None:
    oidc = sub.add_parser("oidc", help="the OIDC issuer's signing keys (JWTs for istiod)")
    osub = oidc.add_subparsers(dest="action", required=True)
    rot = osub.add_parser("rotate", help="new signing key; the old one is published until "
                                         "its last token expired")
    rot.add_argument("--config", required=True, type=Path)
    keys = osub.add_parser("keys", help="kid, state and until when each key is published")
    keys.add_argument("--config", required=True, type=Path)
    keys.add_argument("--json", action="store_true")


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace, config: RegistrarConfig) -> int:
    oidc = config.oidc
    if oidc is None:
        print(f"mesh-registrar oidc: {config.source_file}: oidc: is not set; allowed: an "
              "oidc section with at least 'issuer' (docs/istio.md)", file=sys.stderr)
        return EX_CONFIG
    now = SystemClock().now().timestamp()
    try:
        if args.action == "rotate":
            ensure(oidc.key_dir, now)
            new, removed = rotate(oidc.key_dir, now, oidc.max_token_ttl)
            print(f"signing key {new.kid}; the previous key stays published until "
                  f"{_iso(now + oidc.max_token_ttl + GRACE)}")
            for e in removed:
                print(f"removed key {e.kid} (retired {_iso(e.retired_at or now)})")
            return 0
        rows = [{"kid": e.kid, "created": _iso(e.created),
                 "state": "signing" if e.retired_at is None else (
                     "published" if e.published(now, oidc.max_token_ttl) else "expired"),
                 "published_until": None if e.retired_at is None else _iso(
                     e.retired_at + oidc.max_token_ttl + GRACE)}
                for e in entries(oidc.key_dir)]
    except KeyRingError as exc:
        print(f"mesh-registrar oidc: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['kid']}  {r['state']:<9} created {r['created']}"
                  + (f"  published until {r['published_until']}" if r["published_until"]
                     else ""))
    return 0
