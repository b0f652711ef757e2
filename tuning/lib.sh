# Shared by the tuning scripts; sourced after OUT (output directory), PORT and ADMIN_PORT are
# set. Builds the release binaries, sets BIN, and offers:
#   dev_setup NAME   a fresh 2-token SoftHSM2 dev set-up in $DIR, removed at exit
#   serve CONFIG     starts signerd (log appended to $OUT/signerd.log) and waits until it
#                    answers; exits the script if the daemon exits or does not answer in 20 s
#   stop             SIGTERM, and waits for the daemon to drain and exit
cargo build --release --workspace --bins
BIN=${CARGO_TARGET_DIR:-target}/release
PID=

dev_setup() {
  DIR=$(mktemp -d "/tmp/signerd-$1.XXXXXX")
  trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
  "$BIN/signerd" init --dev "$DIR" --partitions 2 --port "$PORT" --admin-port "$ADMIN_PORT" >/dev/null 2>&1
}

serve() {
  "$BIN/signerd" serve --config "$1" 2>>"$OUT/signerd.log" & PID=$!
  for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || { echo "signerd exited; see $OUT/signerd.log" >&2; exit 1; }
    "$BIN/signerd" key list --client "$DIR/client.toml" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "signerd did not answer within 20 s; see $OUT/signerd.log" >&2
  exit 1
}

stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
