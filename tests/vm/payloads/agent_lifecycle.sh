# Guest side of tests/vm/test_agent_lifecycle.py (run by mesh-vmtest.service
# as root after cloud-init, once per boot). It only records facts into $OUT;
# the host-side tests judge them, so one failure does not hide the others.
set -u
OUT=${MESH_VMTEST_OUT}/boot${MESH_VMTEST_BOOT}
mkdir -p "$OUT"
UNIT=mesh-agent.service

rules() { mesh-vmtest-rules; }

mark() {  # guest uptime at each step: where a boot's time goes (timings.json)
  echo "$(cut -d' ' -f1 /proc/uptime) $1" >> "$OUT/marks"
}

finish() {  # boot-time facts for the timing report, then leave
  mark end
  # Boot is not "finished" while this payload runs, so no systemd-analyze
  # blame: the journal's monotonic stamps and each unit's CPU use tell instead.
  ps -eo pid,user,etimes,times,args --sort=-times | cut -c1-160 | head -25 > "$OUT/ps" 2>&1
  journalctl -b -o short-monotonic --no-pager > "$OUT/journal-monotonic.txt" 2>&1
}

wait_active() {  # up to $1 s for the unit to be active; "failed" will not restart
  i=0
  while [ "$i" -lt "$1" ]; do
    case "$(systemctl is-active $UNIT)" in
      active) return 0 ;;
      failed) return 1 ;;
    esac
    sleep 1; i=$((i + 1))
  done
  return 1
}

leftovers() {  # any process of our users, and any Envoy whoever owns it
  # stderr too: a pgrep error (e.g. an unknown user) must not read as "none".
  { pgrep -a -u mesh-agent,mesh-proxy; pgrep -a -x envoy; } 2>&1 | sort -u
}

props() {
  systemctl show $UNIT -p ActiveState,SubState,Type,StatusText,MainPID,NRestarts,Result,User,WatchdogUSec \
    > "$OUT/$1.props"
}

creds() {  # identity facts: the live generation, its files' modes and owners
  cur=/var/lib/mesh-agent/credentials/current
  readlink "$cur" > "$OUT/$1.generation" 2>&1
  cp "$cur/cert-chain.pem" "$OUT/$1.cert-chain.pem" 2>/dev/null
  cp "$cur/bundle.pem" "$OUT/$1.bundle.pem" 2>/dev/null
  sha256sum "$cur/key.pem" | cut -d' ' -f1 > "$OUT/$1.key-hash" 2>&1
  find /var/lib/mesh-agent -name key.pem -printf '%m %u %g %p\n' > "$OUT/$1.key-modes"
  stat -c '%a %U %G %n' /var/lib/mesh-agent /var/lib/mesh-agent/credentials > "$OUT/$1.dir-modes" 2>&1
}

mark payload-start
python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' > "$OUT/python" 2>&1

case "$MESH_VMTEST_BOOT" in
1)
  cp /var/tmp/baseline.rules "$OUT/baseline.rules"
  { ip -4 route; ip -6 route; networkctl status --no-pager; } > "$OUT/routes" 2>&1
  wait_active 120
  mark active
  props started
  systemctl status $UNIT --no-pager -l > "$OUT/started.status" 2>&1
  creds started
  ls -la /etc/mesh-agent > "$OUT/etc-listing" 2>&1
  [ -e /etc/mesh-agent/bootstrap-token ] && echo present > "$OUT/token" || echo absent > "$OUT/token"
  rules > "$OUT/started.rules"
  # What cloud-init was given, raw (a file read; `cloud-init query` costs a Python start).
  cp /var/lib/cloud/instance/user-data.txt "$OUT/userdata" 2>&1
  cat /etc/mesh-agent/agent.d/*.yaml > "$OUT/agent.d" 2>&1

  # A renewal while capture is on: READY=1 came after capture was applied,
  # so the next change of the live generation is a renewal under capture.
  gen=$(readlink /var/lib/mesh-agent/credentials/current)
  i=0
  while [ "$i" -lt 150 ] && [ "$(readlink /var/lib/mesh-agent/credentials/current)" = "$gen" ]; do
    sleep 1; i=$((i + 1))
  done
  mark renewed
  ps -eo pid,user,etimes,times,args --sort=-times | cut -c1-160 | head -25 > "$OUT/renewed.ps" 2>&1
  creds renewed
  mesh-agent status --json > "$OUT/renewed.status.json" 2>&1
  rules > "$OUT/renewed.rules"
  journalctl -u $UNIT -o json --no-pager > "$OUT/agent-journal.json"

  mark recorded
  systemctl stop $UNIT
  mark stopped
  props stopped
  rules > "$OUT/stopped.rules"
  systemctl start $UNIT
  wait_active 60
  mark restarted
  props restarted
  creds restarted
  rules > "$OUT/restarted.rules"

  # kill -9: systemd restarts it (on-failure); ExecStopPost ran in between.
  systemctl kill -s KILL $UNIT
  sleep 1
  wait_active 60
  mark killed-and-restarted
  props killed
  journalctl -u $UNIT -o json --no-pager > "$OUT/agent-journal-2.json"
  journalctl -o export --no-pager > "$OUT/journal.export"
  ;;
2)
  wait_active 120
  mark active
  props started
  creds started
  journalctl -b -u $UNIT -o json --no-pager > "$OUT/agent-journal.json"
  [ -e /etc/mesh-agent/bootstrap-token ] && echo present > "$OUT/token" || echo absent > "$OUT/token"

  # Watchdog: SIGUSR1 stalls the event loop through the test-only module
  # (tests/vm/stall_hook.py, installed by the user data, not by the package);
  # systemd must kill and restart the agent within 2 x WatchdogSec.
  before=$(systemctl show -p MainPID --value $UNIT)
  t0=$(date +%s.%N)
  systemctl kill -s USR1 --kill-who=main $UNIT
  i=0
  while [ "$i" -lt 200 ]; do
    pid=$(systemctl show -p MainPID --value $UNIT)
    if [ "$pid" != "$before" ] && [ "$pid" != 0 ] && [ "$(systemctl is-active $UNIT)" = active ]; then
      break
    fi
    sleep 0.5; i=$((i + 1))
  done
  t1=$(date +%s.%N)
  echo "$before $pid $t0 $t1" > "$OUT/watchdog"
  mark watchdog-restarted
  props after-watchdog
  journalctl -b -u $UNIT -o short-monotonic --no-pager > "$OUT/watchdog.journal" 2>&1

  # Purge: nothing of ours may be left.
  rules > "$OUT/before-purge.rules"
  DEBIAN_FRONTEND=noninteractive apt-get purge -y mesh-agent > "$OUT/purge.log" 2>&1
  echo $? > "$OUT/purge.rc"
  mark purged
  rules > "$OUT/purged.rules"
  for p in /etc/mesh-agent /var/lib/mesh-agent /run/mesh-agent /usr/lib/mesh-agent \
           /usr/bin/mesh-agent /usr/lib/systemd/system/mesh-agent.service \
           /etc/systemd/system/multi-user.target.wants/mesh-agent.service; do
    [ -e "$p" ] || [ -L "$p" ] && echo "$p"
  done > "$OUT/purge-leftovers"
  systemctl show $UNIT -p LoadState > "$OUT/purged.props"
  leftovers > "$OUT/purge-processes"
  # The detector must see what it is meant to catch: plant a leftover of each
  # kind (a mesh-proxy process; a root-owned process named envoy), record,
  # remove them.
  ln -sf /bin/sleep /tmp/envoy
  setpriv --reuid=mesh-proxy --regid=mesh-proxy --clear-groups sleep 301 &
  planted_proxy=$!
  /tmp/envoy 302 &
  planted_envoy=$!
  sleep 1
  leftovers > "$OUT/planted-processes"
  kill "$planted_proxy" "$planted_envoy"
  ;;
esac
finish
exit 0
