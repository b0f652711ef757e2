#!/usr/bin/env bash
# Handshake flood (issue 7, scenario 14): a client signing at RATE/s, measured alone and while a
# second loadgen opens FLOOD new QUIC connections per second (with a valid client certificate,
# from loopback), alternately; the daemon's admission counters (signer_incoming_total) are read
# after each phase. Default [server] admission settings. JSON into tuning/out/flood/.
#   tuning/flood.sh                     # 2 rounds of 15 s, 2,000 sig/s, 1,000 connections/s
#   ROUNDS=1 SECS=10 FLOOD=2000 tuning/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/flood; mkdir -p "$OUT"
SECS=${SECS:-15}; ROUNDS=${ROUNDS:-2}; RATE=${RATE:-2000}; FLOOD=${FLOOD:-1000}
PORT=${PORT:-8143}; ADMIN_PORT=${ADMIN_PORT:-8144}
. tuning/lib.sh
dev_setup flood
serve "$DIR/signerd.toml"
"$BIN/signerd" key create flood-p256 --type ec-p256 --client "$DIR/client.toml" >/dev/null
incoming() { curl -s "127.0.0.1:$ADMIN_PORT/metrics" | grep '^signer_incoming_total' | tr '\n' ' '; echo; }
measure() { # NAME
  "$BIN/loadgen" run --client "$DIR/client-app.toml" --key flood-p256 --rate "$RATE" \
    --duration "${SECS}s" --warmup 2s --json "$OUT/$1.json" >/dev/null
}
for r in $(seq 1 "$ROUNDS"); do
  measure "alone-$r"
  echo "after alone-$r: $(incoming)"
  # The measured client connects first (an existing client); the flood starts during its warm-up.
  measure "during-flood-$r" &
  M=$!
  sleep 1
  "$BIN/loadgen" flood --client "$DIR/client.toml" --rate "$FLOOD" --duration "$((SECS + 1))s" \
    --hold 1s > "$OUT/flood-$r.txt"
  wait "$M"; cat "$OUT/flood-$r.txt"
  echo "after during-flood-$r: $(incoming)"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for r in range(1, rounds + 1):
    a = json.load(open(f"{out}/alone-{r}.json")); b = json.load(open(f"{out}/during-flood-{r}.json"))
    la, lb = a["latency_ms"], b["latency_ms"]
    print(f"round {r}: alone achieved {a['achieved_rate']:.0f}/s p50 {la['p50']:.2f} p95 {la['p95']:.2f} p99 {la['p99']:.2f} ms errors {a['errors']}; "
          f"during the flood achieved {b['achieved_rate']:.0f}/s p50 {lb['p50']:.2f} p95 {lb['p95']:.2f} p99 {lb['p99']:.2f} ms errors {b['errors']}")
PY
