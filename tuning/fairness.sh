#!/usr/bin/env bash
# Fairness under a quota (issue 7): one daemon, two client identities, two loadgen processes.
# "steady" (the dev admin identity) signs at STEADY/s; "flooder" (the dev app identity) has a
# quota of QUOTA/s and offers 10x that. The steady identity's latency is measured alone, then
# beside the flood, alternately (ratios in one session: this machine's speed drifts).
#   tuning/fairness.sh                       # 2 rounds of 20 s
#   ROUNDS=1 SECS=10 tuning/fairness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/fairness; mkdir -p "$OUT"
SECS=${SECS:-20}; ROUNDS=${ROUNDS:-2}; STEADY=${STEADY:-1000}; QUOTA=${QUOTA:-500}
PORT=${PORT:-8043}; ADMIN_PORT=${ADMIN_PORT:-8044}
. tuning/lib.sh
dev_setup fairness
cat > "$DIR/policy.toml" <<TOML
[[rule]]
name = "admin-all"
effect = "allow"
identities = ["signerd://dev/admin"]
keys = ["*"]
ops = ["*"]

[[rule]]
name = "app-sign"
effect = "allow"
identities = ["signerd://dev/app"]
keys = ["fair-*"]
ops = ["sign", "verify", "public_key", "list"]

[[quota]]
name = "app"
identities = ["signerd://dev/app"]
rate = $QUOTA
burst = $QUOTA
TOML
sed -i 's/^\[server\]/[server]\npolicy = "policy.toml"/' "$DIR/signerd.toml"
serve "$DIR/signerd.toml"
"$BIN/signerd" key create fair-p256 --type ec-p256 --client "$DIR/client.toml" >/dev/null
steady() { # NAME
  "$BIN/loadgen" run --client "$DIR/client.toml" --key fair-p256 --rate "$STEADY" --duration "${SECS}s" \
    --warmup 2s --json "$OUT/$1.json" >/dev/null
}
for r in $(seq 1 "$ROUNDS"); do
  steady "alone-$r"
  "$BIN/loadgen" run --client "$DIR/client-app.toml" --key fair-p256 --rate $((QUOTA * 10)) \
    --duration "$((SECS + 4))s" --warmup 1s --json "$OUT/flood-$r.json" >/dev/null &
  FLOOD=$!
  sleep 1
  steady "beside-flood-$r"
  wait "$FLOOD"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for r in range(1, rounds + 1):
    a = json.load(open(f"{out}/alone-{r}.json")); b = json.load(open(f"{out}/beside-flood-{r}.json"))
    f = json.load(open(f"{out}/flood-{r}.json"))
    la, lb = a["latency_ms"], b["latency_ms"]
    print(f"round {r}: steady alone p50 {la['p50']:.2f} p95 {la['p95']:.2f} p99 {la['p99']:.2f} ms, errors {a['errors']}; "
          f"beside the flood p50 {lb['p50']:.2f} p95 {lb['p95']:.2f} p99 {lb['p99']:.2f} ms, errors {b['errors']} "
          f"(p95 +{lb['p95'] - la['p95']:.2f} ms); flooder offered {f['offered_rate']:.0f}/s, "
          f"signed {f['achieved_rate']:.0f}/s, refused {f['errors']}")
PY
