#!/usr/bin/env bash
# Reruns the issue-4 target measurements on this machine and writes JSON + plots into
# tuning/out/: raw PKCS#11 ceiling, 10,000/s for 60 s with --verify, find-max (SLO p95 100 ms),
# and overload at 2x the found maximum. Daemon and loadgen run on this same machine (loopback).
#   tuning/run-targets.sh            # full (about 6 minutes)
#   QUICK=1 tuning/run-targets.sh    # short smoke version
#   COALESCE=16 tuning/run-targets.sh  # the client coalesces concurrent calls (loadgen --coalesce)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-tuning/out}; mkdir -p "$OUT"
PORT=${PORT:-7543}; ADMIN_PORT=${ADMIN_PORT:-7544}
if [ -n "${QUICK:-}" ]; then D10K=5s; STEP=3s; OVER=5s; CEIL=3s; else D10K=60s; STEP=10s; OVER=20s; CEIL=10s; fi
. tuning/lib.sh
dev_setup targets
serve "$DIR/signerd.toml"
KEY=bench-p256
"$BIN/signerd" key list --client "$DIR/client.toml" | grep -q "^$KEY " || \
  "$BIN/signerd" key create "$KEY" --type ec-p256 --client "$DIR/client.toml"
C="$DIR/client-app.toml"
CO=(--coalesce "${COALESCE:-1}")

echo "== raw PKCS#11 ceiling (2 threads, same tokens, same key handling)"
"$BIN/loadgen" ceiling --config "$DIR/signerd.toml" --key "$KEY" --threads 2 --duration "$CEIL" --json "$OUT/ceiling.json"
echo "== 10,000/s for $D10K with --verify"
"$BIN/loadgen" run --client "$C" --key "$KEY" --rate 10000 --duration "$D10K" --verify "${CO[@]}" \
  --json "$OUT/run-10k.json" --hdr-log "$OUT/run-10k.hlog" --plots "$OUT/run-10k"
echo "== find-max, SLO p95 100 ms"
"$BIN/loadgen" find-max --client "$C" --key "$KEY" --slo-p95 100ms --start 8000 --factor 1.15 "${CO[@]}" \
  --step-duration "$STEP" --json "$OUT/find-max.json" --plots "$OUT/find-max"
MAX=$(python3 -c "import json;print(int(json.load(open('$OUT/find-max.json'))['max_passing_rate'] or 10000))")
echo "== overload at 2x the maximum ($((2*MAX))/s)"
"$BIN/loadgen" run --client "$C" --key "$KEY" --rate $((2*MAX)) --duration "$OVER" "${CO[@]}" \
  --json "$OUT/overload.json" --plots "$OUT/overload"
echo "== results in $OUT"
