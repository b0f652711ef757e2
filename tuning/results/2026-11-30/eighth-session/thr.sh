#!/usr/bin/env bash
# usage: thr.sh RATE SECS COALESCE [config] -- per-thread CPU of the daemon and machine idle during a run
set -u
cd /tmp/m
RATE=$1; SECS=$2; N=$3; CFG=${4:-b100}
S=/work/main/target/release/signerd; L=/work/main/target/release/loadgen
export SOFTHSM2_CONF=/tmp/m/dev/softhsm2.conf
$L ceiling --config dev/b100.toml --key bench-p256 --threads 2 --duration 3s 2>/dev/null | tail -1
$S serve --config dev/$CFG.toml 2>>/tmp/m/thr.log & D=$!
for i in $(seq 1 50); do $S key list --client dev/client.toml >/dev/null 2>&1 && break; sleep 0.2; done
snap() { for t in /proc/$D/task/*; do echo "$(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done | sort; }
$L run --client dev/client-app.toml --key bench-p256 --rate $RATE --duration ${SECS}s --warmup 2s --coalesce $N --json thr.json > thr.out 2>&1 & LP=$!
sleep 3
snap > thr.a; read -r _ u n s i w _ < <(head -1 /proc/stat); t0=$((u+n+s+i+w)); i0=$i
sleep 5
snap > thr.b; read -r _ u n s i w _ < <(head -1 /proc/stat); t1=$((u+n+s+i+w)); i1=$i
wait $LP
kill -TERM $D; wait $D
echo "idle $(( 100*(i1-i0)/(t1-t0) ))%"
join thr.a thr.b | awk '{d=$3-$2; if (d>0) printf "%s %.0f%%\n", $1, d/5}' | sort -k2 -n -r | head
python3 -c "
import json;a=json.load(open('/tmp/m/thr.json'));l=a['latency_ms']
print(f\"ok {100*a['ok']/a['sent']:.2f}% achieved {a['achieved_rate']:.0f} p95 {l['p95']:.1f} errors {a['errors']}\")"
