#!/usr/bin/env bash
# The sweep behind the daemon's shipped defaults (issue 4): one dev set-up (2 SoftHSM2 tokens,
# ECDSA P-256, session-object key copies), the same daemon binary restarted with one setting
# changed at a time, each variant measured at a fixed rate and with a short find-max, in rounds
# (variants interleaved, so the machine's drift hits them alike). The raw PKCS#11 ceiling is
# measured at the start of each round. Writes JSON into tuning/out/sweep/ and prints a table.
#
#   tuning/sweep.sh                       # 2 rounds, 10 s at 10,000/s, 5 s find-max steps
#   ROUNDS=1 SECS=5 STEP=3s tuning/sweep.sh
#   VARIANTS="default rt2" tuning/sweep.sh
#
# Variants (each is the default plus one change):
#   default     the shipped configuration
#   workers2    [providers.softhsm] workers_per_partition = 2 (default: cores / partitions = 1)
#   rt2         [server] runtime_threads = 2 (default: half the cores = 1)
#   drain8      [engine] max_drain = 8 (default 64)
#   queue256    [engine] queue_depth = 256 (default 1024)
#   streams256  [server] max_streams_per_connection = 256 (default 4096)
#   commit0     [audit] commit_interval = "0s" (default "4ms": paced group commit)
#   conns4      loadgen --connections 4 (default 1); the daemon unchanged
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/sweep; mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}; SECS=${SECS:-10}; STEP=${STEP:-5s}; RATE=${RATE:-10000}
VARIANTS=${VARIANTS:-"default workers2 rt2 drain8 queue256 streams256 commit0 conns4"}
PORT=${PORT:-7943}; ADMIN_PORT=${ADMIN_PORT:-7944}
. tuning/lib.sh
dev_setup sweep
KEY=bench-p256; C="$DIR/client-app.toml"

# variant_config NAME: writes $DIR/NAME.toml (the dev config with one setting changed).
variant_config() {
  python3 - "$DIR/signerd.toml" "$DIR/$1.toml" "$1" <<'PY'
import sys
src, dst, name = sys.argv[1:4]
edits = {
    "workers2": ("[providers.softhsm]", "workers_per_partition = 2"),
    "rt2": ("[server]", "runtime_threads = 2"),
    "drain8": ("[engine]", None),
    "queue256": ("[engine]", None),
    "streams256": ("[server]", "max_streams_per_connection = 256"),
    "commit0": ("[audit]", 'commit_interval = "0s"'),
}
text = open(src).read()
if name == "drain8":
    text = text.replace("max_drain = 64", "max_drain = 8")
elif name == "queue256":
    text = text.replace("queue_depth = 1024", "queue_depth = 256")
elif name in edits:
    section, line = edits[name]
    if section not in text:
        text += f"\n{section}\n"
    text = text.replace(section, f"{section}\n{line}", 1)
open(dst, "w").write(text)
PY
}

serve "$DIR/signerd.toml"
"$BIN/signerd" key create "$KEY" --type ec-p256 --client "$DIR/client.toml" >/dev/null
stop
for r in $(seq 1 "$ROUNDS"); do
  "$BIN/loadgen" ceiling --config "$DIR/signerd.toml" --key "$KEY" --threads 2 --duration 5s \
    --json "$OUT/ceiling-$r.json" 2>/dev/null | tail -n 1
  for v in $VARIANTS; do
    cfg="$DIR/signerd.toml"; conns=1
    case $v in
      default) ;;
      conns4) conns=4 ;;
      *) variant_config "$v"; cfg="$DIR/$v.toml" ;;
    esac
    serve "$cfg"
    echo "== round $r, $v"
    "$BIN/loadgen" run --client "$C" --key "$KEY" --rate "$RATE" --duration "${SECS}s" --warmup 2s \
      --connections "$conns" --json "$OUT/$v-rate-$r.json" >/dev/null
    "$BIN/loadgen" find-max --client "$C" --key "$KEY" --slo-p95 100ms --start 8000 --factor 1.1 \
      --step-duration "$STEP" --connections "$conns" --json "$OUT/$v-findmax-$r.json" | tail -n 1
    stop
  done
done
python3 - "$OUT" "$ROUNDS" "$VARIANTS" "$RATE" <<'PY'
import json, sys
out, rounds, variants, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
print(f"| variant | round | ceiling | {rate}/s: achieved, p50, p95, p99, errors | find-max (p95 <= 100 ms) | find-max / ceiling |")
print("|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    ceil = json.load(open(f"{out}/ceiling-{r}.json"))["achieved_rate"]
    for v in variants:
        a = json.load(open(f"{out}/{v}-rate-{r}.json"))
        f = json.load(open(f"{out}/{v}-findmax-{r}.json"))
        l = a["latency_ms"]
        m = f["max_passing_rate"] or 0
        print(f"| {v} | {r} | {ceil:,.0f} | {a['achieved_rate']:,.0f}/s, {l['p50']:.1f}, {l['p95']:.1f}, "
              f"{l['p99']:.1f} ms, {sum(a['errors'].values())} | {m:,.0f}/s | {m / ceil:.0%} |")
PY
