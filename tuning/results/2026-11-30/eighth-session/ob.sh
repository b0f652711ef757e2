#!/usr/bin/env bash
# usage: ob.sh RATE SECS ROUNDS coalesce... -- overload A/B on loadgen --coalesce: goodput, admitted p95
set -u
cd /tmp/m
RATE=$1; SECS=$2; ROUNDS=$3; shift 3
S=/work/main/target/release/signerd; L=/work/main/target/release/loadgen; C=dev/client-app.toml; K=bench-p256
export SOFTHSM2_CONF=/tmp/m/dev/softhsm2.conf
for r in $(seq 1 $ROUNDS); do
  $L ceiling --config dev/b100.toml --key $K --threads 2 --duration 3s 2>/dev/null | tail -1
  vs="$*"; [ $((r % 2)) -eq 0 ] && vs=$(echo "$vs" | tr ' ' '\n' | tac | tr '\n' ' ')
  for N in $vs; do
    $S serve --config dev/b100.toml 2>>/tmp/m/ob.log & D=$!
    for i in $(seq 1 50); do $S key list --client dev/client.toml >/dev/null 2>&1 && break; sleep 0.2; done
    $L run --client $C --key $K --rate $RATE --duration ${SECS}s --warmup 2s --coalesce $N --json ob-$N-$r.json > /dev/null 2>&1
    kill -TERM $D; wait $D
    python3 - $N $r <<'PY'
import json,sys
N,r=sys.argv[1:3]
a=json.load(open(f'ob-{N}-{r}.json')); l=a['latency_ms']; o=a['latency_ok_ms']
print(f"coalesce {N} r{r}: goodput {a['ok']/a['duration_s']:.0f}/s OK {100*a['ok']/a['sent']:.1f}% all p95 {l['p95']:.1f} | admitted p50 {o['p50']:.1f} p95 {o['p95']:.1f} p99 {o['p99']:.1f} | {a['errors']}")
PY
  done
done
