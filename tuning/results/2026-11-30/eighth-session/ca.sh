#!/usr/bin/env bash
# usage: cb.sh RATE SECS ROUNDS coalesce...  -- daemon and loadgen CPU per request, with loadgen --coalesce N
set -u
cd /tmp/m
RATE=$1; SECS=$2; ROUNDS=$3; shift 3
S=/work/main/target/release/signerd; L=/work/main/target/release/loadgen; C=dev/client-app.toml; K=bench-p256
export SOFTHSM2_CONF=/tmp/m/dev/softhsm2.conf
tck=$(getconf CLK_TCK)
for r in $(seq 1 $ROUNDS); do
  $L ceiling --config dev/b100.toml --key $K --threads 2 --duration 3s 2>/dev/null | tail -1
  vs="$*"; [ $((r % 2)) -eq 0 ] && vs=$(echo "$vs" | tr ' ' '\n' | tac | tr '\n' ' ')
  for V in $vs; do N=16; CFG=$V
    $S serve --config dev/$CFG.toml 2>>/tmp/m/cb.log & D=$!
    for i in $(seq 1 50); do $S key list --client dev/client.toml >/dev/null 2>&1 && break; sleep 0.2; done
    d0=$(awk '{print $14+$15}' /proc/$D/stat)
    /usr/bin/time -f "%U %S" -o cb.time $L run --client $C --key $K --rate $RATE --coalesce $N --duration ${SECS}s --warmup 1s --json ca-$V-$r.json > /dev/null 2>&1
    d1=$(awk '{print $14+$15}' /proc/$D/stat)
    m=$(curl -s http://127.0.0.1:7744/metrics | grep -E '^signer_requests_total' | grep -E 'op="sign(_batch)?"' | grep 'status="ok"' | sed 's/signer_requests_total//' | tr '\n' ' ')
    kill -TERM $D; wait $D
    python3 - $N $r $d0 $d1 $tck $SECS $RATE "$m" $V <<'PY'
import json,sys
N,r,d0,d1,tck,secs,R,m=sys.argv[1:9]
a=json.load(open(f'ca-{sys.argv[9]}-{r}.json')); l=a['latency_ms']
reqs=(float(secs)+1)*float(R)
lt=open('cb.time').read().split(); lc=float(lt[-2])+float(lt[-1])
print(f"{sys.argv[9]} r{r}: ok {100*a['ok']/a['sent']:.2f}% p50 {l['p50']:.1f} p95 {l['p95']:.1f} p99 {l['p99']:.1f} errors {a['errors']} daemon {1e6*(int(d1)-int(d0))/int(tck)/reqs:.0f}us/req loadgen {1e6*lc/reqs:.0f}us/req | {m}")
PY
  done
done
