#!/usr/bin/env bash
# Reload under lease traffic: drain_first against surge, side by side, with engine-sim and with
# the real llama-server (scripts/reload_bench.py does the work; BENCHMARKS.md, "Reload without a
# gap", has the figures and what they mean).
#
# Usage: scripts/reload-bench.sh [--engine sim|llama|both] [reload_bench.py options, e.g.
#        --reloads 10 --clients 8 --json out.json]
# Needs: python3, the release binaries (built unless RELOAD_BENCH_NO_BUILD=1), and for llama
# the server and model of scripts/get-llama-server.sh (its cache, or POOL_MANAGERD_LLAMA_SERVER
# and POOL_MANAGERD_LLAMA_MODEL).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN_DIR="${BIN_DIR:-$ROOT/target/release}"
CACHE="${POOL_MANAGERD_LLAMA_CACHE:-$HOME/.cache/pool-managerd/llama}"
LLAMA="${POOL_MANAGERD_LLAMA_SERVER:-$CACHE/bin/llama-server}"
MODEL="${POOL_MANAGERD_LLAMA_MODEL:-$CACHE/models/tiny-llama.gguf}"

engine=both
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ "${RELOAD_BENCH_NO_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release --bin pool-managerd --bin engine-sim)
fi
common=(--daemon "$BIN_DIR/pool-managerd" --engine-sim "$BIN_DIR/engine-sim")
if [ "$engine" = sim ] || [ "$engine" = both ]; then
  python3 "$ROOT/scripts/reload_bench.py" "${common[@]}" --engine sim "${args[@]}"
fi
if [ "$engine" = llama ] || [ "$engine" = both ]; then
  if [ ! -x "$LLAMA" ] || [ ! -f "$MODEL" ]; then
    echo "missing: $LLAMA or $MODEL (run scripts/get-llama-server.sh)" >&2; exit 2
  fi
  python3 "$ROOT/scripts/reload_bench.py" "${common[@]}" --engine llama \
    --llama-server "$LLAMA" --model "$MODEL" "${args[@]}"
fi
