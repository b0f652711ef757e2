#!/usr/bin/env bash
# Full-disk drill: the audit log lives on a small tmpfs (mounting it needs root), which is
# filled up while loadgen offers a steady load. Checks, with the real daemon and a real ENOSPC:
#   - signing fails closed: requests get UNAVAILABLE, /readyz says 503, signer_audit_healthy 0;
#   - once the filler is removed, the log resumes by itself (no restart): /readyz 200 again;
#   - after a clean shutdown `signerd audit verify` accepts the log, with one unclean restart
#     (the resume record) and one record per signature loadgen got.
# Usage: sudo tuning/disk-full.sh    (RATE=300 SECS=30 FULL_AT=8 FREE_AT=18 to change the timing)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-300}
SECS=${SECS:-30}
FULL_AT=${FULL_AT:-8}
FREE_AT=${FREE_AT:-18}
PORT=${PORT:-7461}
ADMIN_PORT=${ADMIN_PORT:-9471}
OUT=${OUT:-tuning/results/$(date +%F)/disk-full}
mkdir -p "$OUT"
: >"$OUT/signerd.log"
source tuning/lib.sh

DIR=$(mktemp -d /tmp/signerd-diskfull.XXXXXX)
AUDIT="$DIR/audit"
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  umount "$AUDIT" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN/signerd" init --dev "$DIR" --partitions 2 --port "$PORT" --admin-port "$ADMIN_PORT" >/dev/null 2>&1
mkdir -p "$AUDIT"
mount -t tmpfs -o size=48m,mode=0700 tmpfs "$AUDIT"
serve "$DIR/signerd.toml"
"$BIN/signerd" key create drill --type ec-p256 --client "$DIR/client.toml" >/dev/null

ready() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz"; }
gauge() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
say() { echo "t=$(($(date +%s) - T0))s $*" | tee -a "$OUT/drill.txt"; }
: >"$OUT/drill.txt"

T0=$(date +%s)
"$BIN/loadgen" run --client "$DIR/client-app.toml" --key drill --rate "$RATE" \
  --duration "${SECS}s" --timeout 2s --json "$OUT/loadgen.json" >"$OUT/loadgen.txt" 2>&1 &
LG=$!
sleep "$FULL_AT"
say "before: readyz $(ready), audit healthy $(gauge signer_audit_healthy)"
# Fill the audit filesystem to the last few KiB (dd stops at ENOSPC).
dd if=/dev/zero of="$AUDIT/filler" bs=1M status=none 2>/dev/null || true
say "disk filled: $(df -k --output=avail "$AUDIT" | tail -1) KiB free"
sleep 3
FULL_READY=$(ready)
FULL_HEALTHY=$(gauge signer_audit_healthy)
say "while full: readyz $FULL_READY, audit healthy $FULL_HEALTHY"
sleep $((FREE_AT - FULL_AT - 3))
rm -f "$AUDIT/filler"
say "filler removed: $(df -k --output=avail "$AUDIT" | tail -1) KiB free"
RESUMED=
for _ in $(seq 1 100); do
  if [ "$(ready)" = 200 ]; then RESUMED=$(($(date +%s) - T0)); break; fi
  sleep 0.1
done
say "resumed at t=${RESUMED:-never}s: readyz $(ready), audit healthy $(gauge signer_audit_healthy)"
wait "$LG" || true
stop
tail -n 25 "$OUT/loadgen.txt" | tee -a "$OUT/drill.txt"
"$BIN/signerd" audit verify "$AUDIT/audit.log" 2>&1 | tee "$OUT/verify.txt" | tee -a "$OUT/drill.txt"
grep -E "audit log (write failed|writable again)" "$OUT/signerd.log" | cut -c1-300 | tee -a "$OUT/drill.txt"

OK=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['ok'])" "$OUT/loadgen.json")
SIGNS=$(grep -c '"op":"sign"' "$AUDIT"/audit.log* | awk -F: '{ n += $NF } END { print n }')
say "loadgen OK $OK; sign records in the log $SIGNS"

fail=0
[ "$FULL_READY" = 503 ] || { echo "FAIL: /readyz was $FULL_READY while the disk was full"; fail=1; }
[ "$FULL_HEALTHY" = 0 ] || { echo "FAIL: signer_audit_healthy was $FULL_HEALTHY while full"; fail=1; }
[ -n "$RESUMED" ] || { echo "FAIL: the log did not resume"; fail=1; }
grep -q '^OK' "$OUT/verify.txt" || { echo "FAIL: audit verify"; fail=1; }
grep -q 'unclean' "$OUT/verify.txt" || { echo "FAIL: verify reports no unclean restart"; fail=1; }
[ "$SIGNS" -ge "$OK" ] || { echo "FAIL: $OK signatures but $SIGNS sign records"; fail=1; }
[ $fail = 0 ] && say "drill passed" || say "drill FAILED"
exit $fail
