#!/bin/sh
# deb postinst / rpm %post. The registrar needs `mesh-registrar init` (CA,
# TLS cert, config) before it can run, so a fresh install only enables
# nothing and starts nothing; an upgrade restarts it if it was running.
set -e
case "$1" in
  configure|1|2|3|4|5|6|7|8|9) ;;
  *) exit 0 ;;
esac
for py in python3 python3.11; do
  if command -v "$py" >/dev/null 2>&1; then
    "$py" -m compileall -q /usr/lib/mesh-registrar/python >/dev/null 2>&1 || true
    break
  fi
done
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  case "$1/$2" in
    configure/) upgrade=no ;;   # deb: first install
    1/) upgrade=no ;;           # rpm: first install
    *) upgrade=yes ;;
  esac
  if [ "$upgrade" = yes ]; then
    systemctl try-restart mesh-registrar.service || true
  fi
fi
exit 0
