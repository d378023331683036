#!/bin/sh
# deb prerm (remove|upgrade|deconfigure) and rpm %preun (0 = erase, 1 = upgrade).
set -e
case "$1" in
  remove|deconfigure|0) ;;
  *) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
  # Stopping runs ExecStopPost (capture remove) too.
  systemctl disable --now mesh-agent.service >/dev/null 2>&1 || true
fi
# The service may not have been running (or systemd may be absent): remove
# capture explicitly so no rule outlives the package.
if command -v mesh-agent >/dev/null 2>&1; then
  mesh-agent capture remove || echo "mesh-agent: capture remove failed; check iptables/nft MESH_ chains" >&2
fi
find /usr/lib/mesh-agent/python -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
