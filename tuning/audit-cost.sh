#!/usr/bin/env bash
# What the audit log costs: the same daemon, tokens and key, with [audit] on and off, measured
# alternately in one session (ratios, not absolutes, because this machine's speed drifts):
# 10,000/s open loop with --verify, then find-max. Writes JSON into tuning/out/audit-cost/.
#   tuning/audit-cost.sh            # 2 rounds, 20 s at 10k/s, 5 s find-max steps (~6 minutes)
#   ROUNDS=1 D10K=5s STEP=3s tuning/audit-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/audit-cost; mkdir -p "$OUT"
PORT=${PORT:-7643}; ADMIN_PORT=${ADMIN_PORT:-7644}
ROUNDS=${ROUNDS:-2}; D10K=${D10K:-20s}; STEP=${STEP:-5s}
. tuning/lib.sh
dev_setup audit-cost
sed 's/^\[audit\]/[audit]\ndisabled = true/' "$DIR/signerd.toml" > "$DIR/signerd-noaudit.toml"
KEY=bench-p256; C="$DIR/client-app.toml"
for r in $(seq 1 "$ROUNDS"); do
  for mode in audit noaudit; do
    cfg="$DIR/signerd.toml"; [ "$mode" = noaudit ] && cfg="$DIR/signerd-noaudit.toml"
    serve "$cfg"
    "$BIN/signerd" key list --client "$DIR/client.toml" | grep -q "^$KEY " || \
      "$BIN/signerd" key create "$KEY" --type ec-p256 --client "$DIR/client.toml" >/dev/null
    echo "== round $r, $mode: 10,000/s for $D10K with --verify"
    "$BIN/loadgen" run --client "$C" --key "$KEY" --rate 10000 --duration "$D10K" --warmup 2s \
      --verify --json "$OUT/$mode-10k-$r.json" | tail -n 25
    echo "== round $r, $mode: find-max"
    "$BIN/loadgen" find-max --client "$C" --key "$KEY" --slo-p95 100ms --start 8000 --factor 1.15 \
      --step-duration "$STEP" --json "$OUT/$mode-findmax-$r.json" | tail -n 4
    stop
  done
done
"$BIN/signerd" audit verify "$DIR/audit/audit.log"
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for mode in ("audit", "noaudit"):
    for r in range(1, rounds + 1):
        a = json.load(open(f"{out}/{mode}-10k-{r}.json"))
        f = json.load(open(f"{out}/{mode}-findmax-{r}.json"))
        err = sum(a["errors"].values())
        print(f"{mode:8} round {r}: 10k/s achieved {a['achieved_rate']:.0f}/s p50 {a['latency_ms']['p50']:.1f} ms "
              f"p95 {a['latency_ms']['p95']:.1f} ms errors {err} verify_failures {a['verify_failures']}; "
              f"find-max {f['max_passing_rate']}")
PY
