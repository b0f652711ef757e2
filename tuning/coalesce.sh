#!/usr/bin/env bash
# Client-side coalescing A/B (loadgen --coalesce 1 against --coalesce 16 by default), in the same
# run: per round the raw PKCS#11 ceiling, then for each variant a fresh daemon and
#   1. RATE/s (10,000) for SECS s: OK, p50/p95, and the daemon's and loadgen's CPU per request;
#   2. OVER/s (21,000, about 2x the maximum) for SECS s: goodput and the admitted p95;
#   3. find-max (SLO p95 100 ms) from FM_START with FM_FACTOR steps of STEP.
# The order of the variants alternates between rounds. JSON in tuning/out/coalesce/, a table on
# stdout (tuning/RESULTS.md, "Eighth session").
#
#   tuning/coalesce.sh                                   # 3 rounds
#   ROUNDS=1 SECS=5 STEP=3s tuning/coalesce.sh           # quick
#   VARIANTS="1 8 16" FM_START=12000 FM_FACTOR=1.05 tuning/coalesce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/coalesce; mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; STEP=${STEP:-5s}; RATE=${RATE:-10000}; OVER=${OVER:-21000}
FM_START=${FM_START:-8000}; FM_FACTOR=${FM_FACTOR:-1.15}; VARIANTS=${VARIANTS:-"1 16"}
PORT=${PORT:-7943}; ADMIN_PORT=${ADMIN_PORT:-7944}
. tuning/lib.sh
dev_setup coalesce
KEY=bench-p256
C="$DIR/client-app.toml"
serve "$DIR/signerd.toml"
"$BIN/signerd" key create "$KEY" --type ec-p256 --client "$DIR/client.toml" >/dev/null
stop
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in clock ticks

for r in $(seq 1 "$ROUNDS"); do
  "$BIN/loadgen" ceiling --config "$DIR/signerd.toml" --key "$KEY" --threads 2 --duration 3s \
    --json "$OUT/ceiling-$r.json" 2>/dev/null | tail -n 1
  order=$VARIANTS
  [ $((r % 2)) -eq 0 ] && order=$(echo "$VARIANTS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for n in $order; do
    echo "== round $r, --coalesce $n"
    serve "$DIR/signerd.toml"
    d0=$(cpu "$PID")
    /usr/bin/time -f "%U %S" -o "$OUT/loadgen-cpu-$n-$r.txt" \
      "$BIN/loadgen" run --client "$C" --key "$KEY" --rate "$RATE" --duration "${SECS}s" \
      --warmup 1s --coalesce "$n" --json "$OUT/rate-$n-$r.json" >/dev/null
    echo "$(( $(cpu "$PID") - d0 ))" > "$OUT/daemon-ticks-$n-$r.txt"
    "$BIN/loadgen" run --client "$C" --key "$KEY" --rate "$OVER" --duration "${SECS}s" \
      --warmup 2s --coalesce "$n" --json "$OUT/over-$n-$r.json" >/dev/null
    "$BIN/loadgen" find-max --client "$C" --key "$KEY" --coalesce "$n" --slo-p95 100ms \
      --start "$FM_START" --factor "$FM_FACTOR" --step-duration "$STEP" \
      --json "$OUT/findmax-$n-$r.json" | tail -n 1
    stop
  done
done
python3 - "$OUT" "$ROUNDS" "$RATE" "$OVER" "$SECS" "$(getconf CLK_TCK)" $VARIANTS <<'PY'
import json, sys
out, rounds, rate, over, secs, tck = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:7])
variants = sys.argv[7:]
requests = (secs + 1) * rate  # the measured window and the warm-up
print(f"| round | ceiling | coalesce | {rate:,.0f}/s: OK, p50 / p95 | daemon / loadgen CPU per request "
      f"| {over:,.0f}/s: goodput, admitted p95 | find-max |")
print("|---|---|---|---|---|---|---|")
for r in range(1, int(rounds) + 1):
    ceil = json.load(open(f"{out}/ceiling-{r}.json"))["achieved_rate"]
    for n in variants:
        a = json.load(open(f"{out}/rate-{n}-{r}.json"))
        o = json.load(open(f"{out}/over-{n}-{r}.json"))
        m = json.load(open(f"{out}/findmax-{n}-{r}.json"))["max_passing_rate"]
        daemon = int(open(f"{out}/daemon-ticks-{n}-{r}.txt").read()) / tck
        user, sys_ = open(f"{out}/loadgen-cpu-{n}-{r}.txt").read().split()[-2:]
        loadgen = float(user) + float(sys_)
        print(f"| {r} | {ceil:,.0f}/s | {n} | {100 * a['ok'] / a['sent']:.2f}%, "
              f"{a['latency_ms']['p50']:.1f} / {a['latency_ms']['p95']:.1f} ms | "
              f"{1e6 * daemon / requests:.0f} / {1e6 * loadgen / requests:.0f} µs | "
              f"{o['ok'] / o['duration_s']:,.0f}/s, {o['latency_ok_ms']['p95']:.1f} ms | "
              f"{f'{m:,.0f}/s' if m else 'none'} |")
PY
