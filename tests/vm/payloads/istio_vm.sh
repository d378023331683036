# Guest side of tests/vm/test_istio_vm.py (run by mesh-vmtest.service as root
# after cloud-init). Records facts into $OUT; the host judges them.
set -u
OUT=${MESH_VMTEST_OUT}/boot${MESH_VMTEST_BOOT}
mkdir -p "$OUT"
UNIT=mesh-agent.service

# Type=notify: "active" only after READY=1 (certificate, Envoy, capture).
i=0
while [ "$i" -lt 300 ]; do
  case "$(systemctl is-active $UNIT)" in
    active|failed) break ;;
  esac
  sleep 1; i=$((i + 1))
done
systemctl show $UNIT -p ActiveState,SubState,StatusText,NRestarts,Result > "$OUT/started.props"
cp /var/tmp/baseline.rules "$OUT/baseline.rules"
cp /var/lib/mesh-agent/credentials/current/cert-chain.pem "$OUT/cert-chain.pem" 2>/dev/null
mesh-agent status --json > "$OUT/status.json" 2>&1
mesh-vmtest-rules > "$OUT/started.rules"
# Envoy's view: connected to istiod, and the listeners istiod sent.
python3 - > "$OUT/envoy.json" 2>&1 <<'EOF'
import json, urllib.request
def get(path):
    with urllib.request.urlopen("http://127.0.0.1:15000" + path, timeout=10) as r:
        return r.read().decode()
stats = dict(line.split(": ", 1) for line in get("/stats?filter=^control_plane").splitlines()
             if ": " in line)
dump = json.loads(get("/config_dump"))
listeners = [l.get("name") for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")
             for l in c.get("dynamic_listeners", [])]
print(json.dumps({"connected_state": stats.get("control_plane.connected_state"),
                  "listeners": listeners}))
EOF
systemctl stop $UNIT
systemctl show $UNIT -p ActiveState,Result > "$OUT/stopped.props"
mesh-vmtest-rules > "$OUT/stopped.rules"
journalctl -b -u $UNIT --no-pager > "$OUT/journal.txt" 2>&1
exit 0
