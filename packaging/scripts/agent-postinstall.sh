#!/bin/sh
# deb postinst (configure [old-version]) and rpm %post (1 = install, 2+ = upgrade).
set -e
case "$1" in
  configure|1|2|3|4|5|6|7|8|9) ;;
  *) exit 0 ;;
esac
# The agent deletes the one-time token after first use, so it may write to
# /etc/mesh-agent; the sticky bit keeps it from removing root's files there.
chown root:mesh-agent /etc/mesh-agent /etc/mesh-agent/agent.d /etc/mesh-agent/agent.yaml
chmod 1770 /etc/mesh-agent
chmod 0750 /etc/mesh-agent/agent.d
chmod 0640 /etc/mesh-agent/agent.yaml
# Byte-compile once as root: the unit's /usr is read-only to the agent.
for py in python3 python3.11; do
  if command -v "$py" >/dev/null 2>&1; then
    "$py" -m compileall -q -x 'cp3[0-9]+/.*/tests?/' /usr/lib/mesh-agent/python >/dev/null 2>&1 || true
    break
  fi
done
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  # Never start an unconfigured agent: a fresh install is left disabled and
  # stopped (cloud-init or the admin enables it). An upgrade restarts the
  # agent only if it was running; identity in /var/lib/mesh-agent is kept.
  case "$1/$2" in
    configure/) upgrade=no ;;   # deb: first install
    1/) upgrade=no ;;           # rpm: first install
    *) upgrade=yes ;;
  esac
  if [ "$upgrade" = yes ]; then
    systemctl try-restart mesh-agent.service || true
  fi
fi
exit 0
