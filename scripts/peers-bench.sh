#!/usr/bin/env bash
# The peers side by side: the same engine-sim supervised by pool-managerd, supervisord and
# circus, each at its restart settings' defaults and at their fastest; engine SIGKILL to
# serving again, manager SIGKILL and restart with 20 engines, an engine that exits at once.
# Prints a markdown table with ratios against pool-managerd (scripts/peers_bench.py does the
# work; BENCHMARKS.md, "Peers: supervision side by side", has the figures and what they mean).
#
# Usage: scripts/peers-bench.sh [--smoke] [peers_bench.py options, e.g. --kills 10
#        --managers pool-managerd,supervisord --scenarios kill,loop --json out.json]
#   --smoke: 3 kills, 3 engines, a 5 s loop window (a check that everything runs: about 2 min)
# Needs: supervisord (Debian: apt-get install -y supervisor; installed when missing and run as
# root), circus (a venv in ${PEERS_VENV:-~/.cache/pool-managerd-ci/circus-venv}, created with
# pip when missing), python3 with venv, and the release binaries (built unless
# PEERS_NO_BUILD=1; BIN_DIR names another directory holding pool-managerd and engine-sim).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PEERS_VENV:-$HOME/.cache/pool-managerd-ci/circus-venv}"
BIN_DIR="${BIN_DIR:-$ROOT/target/release}"

if ! command -v supervisord >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y supervisor >/dev/null
  else
    echo "missing: supervisord (Debian: apt-get install -y supervisor)" >&2; exit 2
  fi
fi
if [ ! -x "$VENV/bin/circusd" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet circus
fi
if [ "${PEERS_NO_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release --bin pool-managerd --bin engine-sim)
fi

args=()
for arg in "$@"; do
  if [ "$arg" = --smoke ]; then
    args+=(--kills 3 --engines 3 --loop-secs 5 --manager-timeout 15)
  else
    args+=("$arg")
  fi
done
# The driver stops every process it started (managers and engines) on exit, error or signal.
exec "$VENV/bin/python" "$ROOT/scripts/peers_bench.py" \
  --daemon "$BIN_DIR/pool-managerd" --engine "$BIN_DIR/engine-sim" "${args[@]}"
