#!/usr/bin/env bash
# `signerd audit archive` while the daemon signs and rotates: 1 MiB segments, a steady load, and
# an archive run every few seconds into one archive directory. Afterwards the archive must verify
# as the log's beginning (--prefix), the live log from the archive's head (--after), both with
# the Rust and the independent Python verifier, and every signature loadgen got must have its
# record in one of the two parts.
# Usage: tuning/archive-under-load.sh    (RATE=3000 SECS=40 EVERY=3 to change it)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-3000}
SECS=${SECS:-40}
EVERY=${EVERY:-3}
PORT=${PORT:-7463}
ADMIN_PORT=${ADMIN_PORT:-9473}
OUT=${OUT:-tuning/results/$(date +%F)/archive-under-load}
mkdir -p "$OUT"
: >"$OUT/signerd.log"
: >"$OUT/runs.txt"
source tuning/lib.sh

dev_setup archive
sed -i 's/^rotate_mib = .*/rotate_mib = 1/' "$DIR/signerd.toml"
grep -q '^rotate_mib = 1$' "$DIR/signerd.toml"
serve "$DIR/signerd.toml"
"$BIN/signerd" key create archive-drill --type ec-p256 --client "$DIR/client.toml" >/dev/null
LOG="$DIR/audit/audit.log"
ARCH="$DIR/archive"

"$BIN/loadgen" run --client "$DIR/client-app.toml" --key archive-drill --rate "$RATE" \
  --duration "${SECS}s" --coalesce 16 --json "$OUT/loadgen.json" >"$OUT/loadgen.txt" 2>&1 &
LG=$!
runs=0
moved=0
while kill -0 "$LG" 2>/dev/null; do
  sleep "$EVERY"
  if ! "$BIN/signerd" audit archive "$LOG" --to "$ARCH" >"$OUT/last-run.txt" 2>&1; then
    cat "$OUT/last-run.txt"
    echo "FAIL: audit archive failed while the daemon ran"
    exit 1
  fi
  n=$(awk '/^moved/ { print $2 }' "$OUT/last-run.txt")
  runs=$((runs + 1))
  moved=$((moved + n))
  echo "run $runs: moved $n; $(grep '^anchor' "$OUT/last-run.txt" || echo 'no anchor yet')" >>"$OUT/runs.txt"
done
wait "$LG" || true
stop

ANCHOR=$(grep '^anchor' "$OUT/last-run.txt" | awk '{ print $NF }')
FIRST=$(ls "$ARCH" | sort | head -1)
{
  echo "archive runs: $runs, segments moved: $moved, archive segments: $(ls "$ARCH" | wc -l), live segments: $(ls "$DIR"/audit/audit.log* | grep -vc lock)"
  echo "anchor: $ANCHOR"
  "$BIN/signerd" audit verify "$ARCH/$FIRST" --prefix | head -3
  "$BIN/signerd" audit verify "$LOG" --after "$ANCHOR" | grep -E '^OK|sealed|continues'
  echo "python archive: $(python3 tools/verify_audit.py "$ARCH/$FIRST" --prefix)"
  echo "python live:    $(python3 tools/verify_audit.py "$LOG" --after "$ANCHOR")"
} | tee "$OUT/verify.txt"

OK=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$OUT/loadgen.json")
SIGNS=$(cat "$ARCH"/audit.log.* "$DIR"/audit/audit.log* 2>/dev/null | grep -c '"op":"sign","key":"archive-drill"' || true)
echo "loadgen OK $OK; sign records of the drill key in archive + live $SIGNS" | tee -a "$OUT/verify.txt"
fail=0
[ "$moved" -gt 0 ] || { echo "FAIL: nothing was archived"; fail=1; }
[ "$(grep -c '^OK' "$OUT/verify.txt")" = 2 ] || { echo "FAIL: signerd audit verify"; fail=1; }
[ "$(grep -c 'python .*OK' "$OUT/verify.txt")" = 2 ] || { echo "FAIL: python verifier"; fail=1; }
[ "$SIGNS" -ge "$OK" ] || { echo "FAIL: $OK signatures but $SIGNS records"; fail=1; }
[ $fail = 0 ] && echo "archive drill passed" | tee -a "$OUT/verify.txt"
exit $fail
