#!/usr/bin/env bash
# usage: fc.sh ROUNDS coalesce...  -- find-max A/B on --coalesce
set -u
cd /tmp/m
ROUNDS=$1; shift
S=/work/main/target/release/signerd; L=/work/main/target/release/loadgen; C=dev/client-app.toml; K=bench-p256
export SOFTHSM2_CONF=/tmp/m/dev/softhsm2.conf
for r in $(seq 1 $ROUNDS); do
  $L ceiling --config dev/b100.toml --key $K --threads 2 --duration 3s 2>/dev/null | tail -1
  vs="$*"; [ $((r % 2)) -eq 0 ] && vs=$(echo "$vs" | tr ' ' '\n' | tac | tr '\n' ' ')
  for N in $vs; do
    $S serve --config dev/b100.toml 2>>/tmp/m/fc.log & D=$!
    for i in $(seq 1 50); do $S key list --client dev/client.toml >/dev/null 2>&1 && break; sleep 0.2; done
    $L find-max --client $C --key $K --coalesce $N --slo-p95 100ms --start 8000 --factor 1.15 --step-duration 5s --json fc-$N-$r.json 2>&1 | grep -E "offered|highest" | tr -s ' ' | sed "s/^/c$N r$r: /"
    kill -TERM $D; wait $D
  done
done
