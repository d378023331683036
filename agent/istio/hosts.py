"""``hosts``: the /etc/hosts-format lines istioctl writes (``IP istiod.NS.svc``).

mesh-agent does not edit /etc/hosts with them: it resolves istiod's name from
this file itself and connects to the address, verifying TLS against the name
(docs/istio.md, "Reaching istiod"). Nothing on the VM changes, so nothing has
to be cleaned up on stop or purge.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.istio.errors import file_error
from meshcore.config.errors import ConfigError

_EXPECTED = "lines of 'ADDRESS NAME [NAME...]', e.g. 10.0.0.5 istiod.istio-system.svc"


def parse_hosts(text: str, path: Path) -> dict[str, str]:
    """Name (lower case) -> address; the first line naming a host wins, as in /etc/hosts."""
    names: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            raise file_error(path, number, "address", f"{fields[0][:60]!r} is not an IP address",
                             _EXPECTED) from None
        if len(fields) < 2:
            raise file_error(path, number, address, "has no host name", _EXPECTED)
        for name in fields[1:]:
            names.setdefault(name.lower().rstrip("."), address)
    return names


def read_hosts(path: Path) -> dict[str, str]:
    """An absent file is no entries: istioctl writes an empty one when it knows no IP."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise file_error(path, 1, "file", "is not UTF-8 text", _EXPECTED) from None
    except OSError as exc:
        raise ConfigError(str(path), "file", f"cannot read it ({exc.strerror})",
                          _EXPECTED) from None
    return parse_hosts(text, path)
