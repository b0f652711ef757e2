#!/usr/bin/env bash
# usage: fm15.sh TAG [start] [factor] -- find-max with --coalesce 16 between two ceiling samples
set -u
cd /tmp/m
export SOFTHSM2_CONF=/tmp/m/dev/softhsm2.conf; S=/work/main/target/release/signerd; L=/work/main/target/release/loadgen
$L ceiling --config dev/b100.toml --key bench-p256 --threads 2 --duration 5s 2>/dev/null | tail -1
$S serve --config dev/b100.toml 2>>/tmp/m/fc.log & D=$!
for i in $(seq 1 50); do $S key list --client dev/client.toml >/dev/null 2>&1 && break; sleep 0.2; done
$L find-max --client dev/client-app.toml --key bench-p256 --coalesce 16 --slo-p95 100ms --start ${2:-13000} --factor ${3:-1.05} --step-duration 10s --json fm15-$1.json --plots fm15-$1 2>&1 | grep -E "offered|highest" | tr -s ' '
kill -TERM $D; wait $D; $L ceiling --config dev/b100.toml --key bench-p256 --threads 2 --duration 5s 2>/dev/null | tail -1
