#!/bin/sh
# deb prerm / rpm %preun: stop and disable on removal, not on upgrade.
set -e
case "$1" in
  remove|deconfigure|0) ;;
  *) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl disable --now mesh-registrar.service >/dev/null 2>&1 || true
fi
find /usr/lib/mesh-registrar/python -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
