#!/usr/bin/env bash
# signerd against the issue-4 baseline, in the same run: the raw PKCS#11 ceiling, then find-max
# (SLO p95 100 ms) and a fixed-rate run on the daemon and on the bare quinn + crossbeam + cryptoki
# signer (examples/bare_signer.rs: no audit, metrics, quotas, admission or answer batching; one
# wake-up per request), both serving the same tokens and key to the same loadgen. The order of
# the two alternates between rounds, so the machine's drift hits them alike. Writes JSON into
# tuning/out/bare/ and prints a table.
#
# Each round also measures the raw ceiling with the token key object itself (no session copy),
# the other number the issue quotes for its reference machine (18-22k/s token object, 30-34k/s
# session copy), so the table says how fast this machine is against that reference.
#
#   tuning/bare.sh                         # 3 rounds, 5 s find-max steps, 15 s at 10,000/s
#   ROUNDS=1 STEP=3s SECS=5 tuning/bare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/bare; mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3}; STEP=${STEP:-5s}; SECS=${SECS:-15}; RATE=${RATE:-10000}
PORT=${PORT:-7843}; ADMIN_PORT=${ADMIN_PORT:-7844}; BARE_PORT=${BARE_PORT:-7845}
. tuning/lib.sh
cargo build --release --example bare_signer
dev_setup bare
BARE_PID=
trap 'kill $PID $BARE_PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
KEY=bench-p256
grep -q '^session_key_copy = true' "$DIR/signerd.toml" || { echo "expected session_key_copy = true in $DIR/signerd.toml" >&2; exit 1; }
sed 's/^session_key_copy = true/session_key_copy = false/' "$DIR/signerd.toml" > "$DIR/token-object.toml"
serve "$DIR/signerd.toml"
"$BIN/signerd" key create "$KEY" --type ec-p256 --client "$DIR/client.toml" >/dev/null
"$BIN/examples/bare_signer" --config "$DIR/signerd.toml" --key "$KEY" \
  --listen "127.0.0.1:$BARE_PORT" 2>>"$OUT/bare.log" & BARE_PID=$!
sed "s/127.0.0.1:$PORT/127.0.0.1:$BARE_PORT/" "$DIR/client-app.toml" > "$DIR/client-bare.toml"
for _ in $(seq 1 100); do
  "$BIN/loadgen" run --client "$DIR/client-bare.toml" --key "$KEY" --rate 10 --duration 500ms \
    --warmup 0s >/dev/null 2>&1 && break
  kill -0 "$BARE_PID" 2>/dev/null || { echo "bare signer exited; see $OUT/bare.log" >&2; exit 1; }
  sleep 0.2
done

measure() { # measure NAME ROUND CLIENT
  echo "== round $2, $1"
  "$BIN/loadgen" find-max --client "$3" --key "$KEY" --slo-p95 100ms --start 8000 --factor 1.15 \
    --step-duration "$STEP" --json "$OUT/$1-findmax-$2.json" | tail -n 1
  "$BIN/loadgen" run --client "$3" --key "$KEY" --rate "$RATE" --duration "${SECS}s" --warmup 2s \
    --json "$OUT/$1-rate-$2.json" >/dev/null
}
for r in $(seq 1 "$ROUNDS"); do
  "$BIN/loadgen" ceiling --config "$DIR/signerd.toml" --key "$KEY" --threads 2 --duration 5s \
    --json "$OUT/ceiling-$r.json" 2>/dev/null | tail -n 1
  "$BIN/loadgen" ceiling --config "$DIR/token-object.toml" --key "$KEY" --threads 2 --duration 5s \
    --json "$OUT/ceiling-token-object-$r.json" 2>/dev/null | tail -n 1
  if [ $((r % 2)) -eq 1 ]; then order="signerd bare"; else order="bare signerd"; fi
  for who in $order; do
    if [ "$who" = signerd ]; then measure signerd "$r" "$DIR/client-app.toml"
    else measure bare "$r" "$DIR/client-bare.toml"; fi
  done
done
python3 - "$OUT" "$ROUNDS" "$RATE" <<'PY'
import json, sys
out, rounds, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"| round | ceiling (token object) | server | find-max (p95 <= 100 ms) | / ceiling | {rate}/s: achieved, p50, p95, p99, errors |")
print("|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    ceil = json.load(open(f"{out}/ceiling-{r}.json"))["achieved_rate"]
    tok = json.load(open(f"{out}/ceiling-token-object-{r}.json"))["achieved_rate"]
    # The issue's reference machine: 30-34k/s with session copies, 18-22k/s with the token object.
    print(f"| {r} | {ceil:,.0f} ({tok:,.0f}) | machine vs the issue's reference | "
          f"{ceil / 32000:.2f}x (session copy), {tok / 20000:.2f}x (token object) | | |")
    for who in ("signerd", "bare"):
        f = json.load(open(f"{out}/{who}-findmax-{r}.json"))
        a = json.load(open(f"{out}/{who}-rate-{r}.json"))
        m = f["max_passing_rate"] or 0
        l = a["latency_ms"]
        print(f"| {r} | {ceil:,.0f} ({tok:,.0f}) | {who} | {m:,.0f}/s | {m / ceil:.0%} | {a['achieved_rate']:,.0f}/s, "
              f"{l['p50']:.1f}, {l['p95']:.1f}, {l['p99']:.1f} ms, {sum(a['errors'].values())} |")
PY
