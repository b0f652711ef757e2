#!/usr/bin/env bash
# Merkle batch signatures (issue 8) measured beside per-message signing and the raw PKCS#11
# ceiling, in one session (ratios, not absolutes: this machine's speed drifts). 2 partitions,
# loadgen on the same machine, audit log on. Three set-ups:
#   p256     ECDSA P-256 on SoftHSM2
#   rsa      RSA-2048 PSS-SHA256 on SoftHSM2
#   network  ECDSA P-256 through the fault module emulating a slow network HSM
#            (20 ms per C_Sign, at most 4 concurrent calls per token)
# For each: `loadgen ceiling` (raw C_Sign loop, 2 threads), per-message find-max, batch find-max
# (--batch), a fixed-rate batch run at the target with --verify, and the same target sent as
# SignBatch requests of PAYLOADS payloads (default 16; each payload still its own leaf, proof and
# audit record). JSON into tuning/out/batch/.
#   tuning/batch.sh                        # all three, 5 s steps
#   SETUPS="p256" STEP=3s tuning/batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=tuning/out/batch; mkdir -p "$OUT"
STEP=${STEP:-5s}; SETUPS=${SETUPS:-"p256 rsa network"}; PAYLOADS=${PAYLOADS:-16}
PORT=${PORT:-7943}; ADMIN_PORT=${ADMIN_PORT:-7944}
cargo build --release --workspace --bins
cargo build --release -p certnode-pkcs11-fault
BIN=${CARGO_TARGET_DIR:-target}/release
MODULE=$(realpath "$BIN/libcertnode_pkcs11_fault.so")
PID=
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT

start() { # DIR FAULTY
  local dir=$1 faulty=$2
  rm -rf "$dir"
  "$BIN/signerd" init --dev "$dir" --partitions 2 --port "$PORT" --admin-port "$ADMIN_PORT" >/dev/null 2>&1
  printf '\n[batch]\ndefault = "allowed"\n' >> "$dir/signerd.toml"
  if [ "$faulty" = 1 ]; then
    printf '[[rule]]\nname = "network-hsm"\nkind = "capacity"\nfunction = "C_Sign"\nmax_concurrent = 4\ncall_ms = 20\n' > "$dir/fault.toml"
    # 4 sessions per partition: the emulated HSM takes 4 calls at once per token.
    tuning/use-fault-module.py "$dir" "$MODULE" 4
  fi
  "$BIN/signerd" serve --config "$dir/signerd.toml" 2>"$dir/signerd.log" & PID=$!
  for _ in $(seq 1 100); do "$BIN/signerd" key list --client "$dir/client.toml" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "daemon did not start" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

for setup in $SETUPS; do
  DIR=/tmp/signerd-batch-$setup
  case $setup in
    p256) TYPE=ec-p256; SCHEME=ecdsa-sha256; FAULTY=0; START=4000; TARGET=50000 ;;
    rsa) TYPE=rsa-2048; SCHEME=rsa-pss-sha256; FAULTY=0; START=500; TARGET=10000 ;;
    network) TYPE=ec-p256; SCHEME=ecdsa-sha256; FAULTY=1; START=100; TARGET=10000 ;;
    *) echo "unknown setup $setup" >&2; exit 64 ;;
  esac
  start "$DIR" "$FAULTY"
  "$BIN/signerd" key create "b-$setup" --type "$TYPE" --client "$DIR/client.toml" >/dev/null
  C=(--client "$DIR/client-app.toml" --key "b-$setup" --scheme "$SCHEME")
  echo "== $setup: raw PKCS#11 ceiling (2 threads)"
  "$BIN/loadgen" ceiling --config "$DIR/signerd.toml" --key "b-$setup" --threads 2 --duration 5s \
    --json "$OUT/$setup-ceiling.json" | tail -n 1
  echo "== $setup: per-message find-max"
  "$BIN/loadgen" find-max "${C[@]}" --slo-p95 100ms --start "$START" --factor 1.3 \
    --step-duration "$STEP" --warmup 1s --json "$OUT/$setup-plain.json" | tail -n 3
  echo "== $setup: batch find-max"
  "$BIN/loadgen" find-max "${C[@]}" --batch --slo-p95 100ms --start "$START" --factor 1.3 \
    --step-duration "$STEP" --warmup 1s --json "$OUT/$setup-batch.json" | tail -n 3
  echo "== $setup: batch at $TARGET/s with --verify"
  "$BIN/loadgen" run "${C[@]}" --batch --rate "$TARGET" --duration 10s --warmup 2s --verify \
    --json "$OUT/$setup-batch-target.json" | tail -n 16
  echo "== $setup: batch at $TARGET signatures/s as SignBatch requests of $PAYLOADS, with --verify"
  "$BIN/loadgen" run "${C[@]}" --batch --payloads "$PAYLOADS" --rate $((TARGET / PAYLOADS)) \
    --duration 10s --warmup 2s --verify --json "$OUT/$setup-batch-target-payloads.json" | tail -n 16
  stop
done
