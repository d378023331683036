#!/bin/sh
# deb postrm (remove|purge|upgrade|...) and rpm %postun (0 = erase, 1 = upgrade).
# Purge (rpm: erase, which has no separate purge) deletes identity, state and
# every file under /etc/mesh-agent, including what cloud-init dropped there.
# The mesh-agent and mesh-proxy users stay (Debian policy: a removed system
# user's UID could be reused and inherit files or firewall exemptions).
set -e
case "$1" in
  purge|0)
    rm -rf /var/lib/mesh-agent /etc/mesh-agent /run/mesh-agent
    ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
