# Guest side of tests/vm/test_baked_image.py: the image already holds the
# package and its settings; user data only enabled the service. Record facts.
set -u
OUT=${MESH_VMTEST_OUT}/boot${MESH_VMTEST_BOOT}
mkdir -p "$OUT"
UNIT=mesh-agent.service
i=0
while [ "$i" -lt 120 ] && [ "$(systemctl is-active $UNIT)" != active ]; do sleep 1; i=$((i + 1)); done
systemctl show $UNIT -p ActiveState,SubState,StatusText,NRestarts,UnitFileState > "$OUT/props"
cp /var/lib/mesh-agent/credentials/current/cert-chain.pem "$OUT/cert-chain.pem" 2>/dev/null
ls -la /etc/mesh-agent /etc/mesh-agent/agent.d > "$OUT/etc-listing" 2>&1
journalctl -u $UNIT --no-pager > "$OUT/journal.txt" 2>&1
cloud-init query userdata > "$OUT/userdata.txt" 2>&1
exit 0
