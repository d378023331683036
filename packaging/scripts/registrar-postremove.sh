#!/bin/sh
# deb postrm (remove|purge|upgrade|...) and rpm %postun (0 = erase, 1 = upgrade).
# Purge (rpm: erase) deletes the CA, the token store and
# every file under /etc/mesh-registrar.
# The mesh-registrar user stays (Debian policy: a removed system
# user's UID could be reused and inherit files or firewall exemptions).
set -e
case "$1" in
  purge|0)
    rm -rf /var/lib/mesh-registrar /etc/mesh-registrar /run/mesh-registrar
    ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
