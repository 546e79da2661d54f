#!/usr/bin/env bash
# A fleet on this machine, by hand: three nats-servers as one JetStream cluster, three daemons
# (`serve --dev`, each with an engine-sim pool) publishing to it with 3 replicas, lease traffic
# on every daemon, one server SIGKILLed while the traffic goes on; then `cluster status`, and
# for each node the checks that nothing was lost or duplicated: the stream holds its journal
# from seq 1 with no gap (`replay --nats` refuses a gap), through the daemon's last seq, and
# the registry rebuilt from the stream alone is the one the daemon serves.
#
# Usage: scripts/fleet-demo.sh [SECONDS_OF_TRAFFIC]   (default 10; needs nats-server, curl,
# python3, and `cargo build --release` first, or BIN/ENGINE_SIM naming the binaries)
set -euo pipefail

SECS="${1:-10}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/pool-managerd}"
ENGINE_SIM="${ENGINE_SIM:-$ROOT/target/release/engine-sim}"
for tool in nats-server curl python3 "$BIN" "$ENGINE_SIM"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
DIR="$(mktemp -d /tmp/fleet-demo.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs and journals kept in $DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

# Three servers, routes between all of them.
CLIENT=() ROUTE=()
for i in 0 1 2; do CLIENT+=("$(free_port)"); ROUTE+=("$(free_port)"); done
ROUTES="nats-route://127.0.0.1:${ROUTE[0]}, nats-route://127.0.0.1:${ROUTE[1]}, nats-route://127.0.0.1:${ROUTE[2]}"
NATS_PIDS=()
for i in 0 1 2; do
  mkdir -p "$DIR/nats-$i"
  cat > "$DIR/nats-$i/server.conf" <<EOF
server_name: s$i
listen: 127.0.0.1:${CLIENT[$i]}
jetstream { store_dir: "$DIR/nats-$i/store" }
cluster { name: fleet, listen: 127.0.0.1:${ROUTE[$i]}, routes: [$ROUTES] }
EOF
  nats-server -c "$DIR/nats-$i/server.conf" 2>"$DIR/nats-$i/log" & NATS_PIDS+=($!); PIDS+=($!)
done
for i in 0 1 2; do wait_port "${CLIENT[$i]}"; done
URLS="nats://127.0.0.1:${CLIENT[0]},nats://127.0.0.1:${CLIENT[1]},nats://127.0.0.1:${CLIENT[2]}"
echo "NATS cluster: $URLS"

# Three daemons, each with one engine-sim pool.
BASES=()
for node in node-a node-b node-c; do
  port="$(free_port)"; engine="$(free_port)"
  mkdir -p "$DIR/$node"
  cat > "$DIR/$node/pool-managerd.toml" <<EOF
stop_engines_on_shutdown = true
[cluster]
nats_url = "$URLS"
node_id = "$node"
replicas = 3
EOF
  "$BIN" serve --dev --config "$DIR/$node/pool-managerd.toml" --addr "127.0.0.1:$port" \
    --runtime-dir "$DIR/$node/runtime" --journal-dir "$DIR/$node/journal" 2>"$DIR/$node/log" &
  PIDS+=($!)
  wait_port "$port"
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/v2/pools/chat/preload" \
    -H 'content-type: application/json' -d "{\"prepared\": {\"binary_path\": \"$ENGINE_SIM\",
      \"flags\": [\"--port\", \"$engine\", \"--parallel\", \"4\"], \"host\": \"127.0.0.1\",
      \"port\": $engine, \"model_path\": \"/models/m.gguf\", \"engine_version\": \"sim-1\",
      \"pool_id\": \"chat\", \"replica_id\": \"r0\"}}"
  BASES+=("http://127.0.0.1:$port")
  echo "$node serves on 127.0.0.1:$port"
done

traffic() {  # lease round trips until the file $DIR/stop exists
  while [ ! -e "$DIR/stop" ]; do
    id="$(curl -sf -X POST "$1/v2/pools/chat/leases" -H 'content-type: application/json' -d '{}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["lease_id"])')"
    curl -sf -o /dev/null -X DELETE "$1/v2/pools/chat/leases/$id"
  done
}
TRAFFIC=()
for base in "${BASES[@]}"; do traffic "$base" & TRAFFIC+=($!); done
sleep "$((SECS / 2))"
echo "SIGKILL to the NATS server s1 (pid ${NATS_PIDS[1]}) while the traffic goes on"
kill -9 "${NATS_PIDS[1]}"
sleep "$((SECS - SECS / 2))"
touch "$DIR/stop"
for pid in "${TRAFFIC[@]}"; do wait "$pid"; done

metric() { curl -sf "$1/metrics" | awk -v name="$2" '$1 == name { print $2 }'; }
for base in "${BASES[@]}"; do
  for _ in $(seq 600); do [ "$(metric "$base" cluster_publish_lag_events)" = "0" ] && break; sleep 0.1; done
done
FIRST="nats://127.0.0.1:${CLIENT[0]}"
echo; echo "pool-managerd cluster status --nats $FIRST"
"$BIN" cluster status --nats "$FIRST"
echo
failed=0
i=0
for node in node-a node-b node-c; do
  base="${BASES[$i]}"; i=$((i + 1))
  last="$(metric "$base" journal_last_seq)"
  "$BIN" replay --nats "$FIRST" --node "$node" --json > "$DIR/$node/replay.json"
  curl -sf "$base/v2/pools" > "$DIR/$node/pools.json"
  verdict="$(python3 - "$DIR/$node/replay.json" "$DIR/$node/pools.json" "$last" <<'EOF'
import json, sys
replay = json.load(open(sys.argv[1])); pools = json.load(open(sys.argv[2])); last = int(float(sys.argv[3]))
strip = lambda ps: [dict(p, last_heartbeat_ms=None) for p in ps]
ok = replay["as_of_seq"] == last and strip(replay["pools"]) == strip(pools)
print(("ok" if ok else "MISMATCH") + f": stream seqs 1..{replay['as_of_seq']} gap-free, journal last seq {last}")
EOF
)"
  echo "$node: $verdict"
  case "$verdict" in ok*) ;; *) failed=1 ;; esac
done
exit "$failed"
