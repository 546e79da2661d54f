#!/usr/bin/env bash
# The prepared check on a machine with an NVIDIA GPU and CUDA: what CI (no GPU, a fake NVML)
# cannot prove. It builds a CUDA llama-server from the llama.cpp source that
# scripts/get-llama-server.sh caches, runs the release daemon on the real GPU and prints one
# line per check, `PASS <check>: <what was seen>` or `FAIL <check>: <why>`; it exits 1 when a
# check failed (2 when it could not start).
#
# Checks:
#   vram       a ready engine's vram_used_bytes equals what `nvidia-smi --query-compute-apps`
#              lists for its pid (within 64 MiB)
#   spillover  an engine whose CUDA sees no usable GPU (CUDA_VISIBLE_DEVICES naming no GPU) is
#              never Ready: CPU_SPILLOVER (or refused before it starts)
#   vram_oom   a KV cache too large for the GPU is recorded as `vram_oom`
#   release    after a SIGKILL of the engine, its restart waits for its VRAM
#              (GpuMemoryReleased) and nvidia-smi lists no process of the killed engine when
#              the new one is spawned
#
# A machine with a GPU but no Rust toolchain: build here, carry the binaries and the cache:
#   cargo build --release && mkdir -p gpu-carry && cp target/release/pool-managerd \
#     target/release/engine-sim gpu-carry/ && cp -r ~/.cache/pool-managerd/llama gpu-carry/
# and there:
#   POOL_MANAGERD_BIN=gpu-carry/pool-managerd POOL_MANAGERD_LLAMA_CACHE=gpu-carry/llama \
#     bash scripts/gpu-check.sh
#
# Environment:
#   POOL_MANAGERD_BIN          the release daemon (default target/release/pool-managerd)
#   POOL_MANAGERD_LLAMA_CACHE  the llama cache of scripts/get-llama-server.sh (its src/ and
#                              models/tiny-llama.gguf are used; default ~/.cache/pool-managerd/llama)
#   GPU_CHECK_MODEL            a GGUF model to serve (default: the cache's tiny model)
#   CUDA_ARCH                  CMAKE_CUDA_ARCHITECTURES (default: native)
#   GPU_CHECK_WORK             where the CUDA build, the runtime and the journal go
#                              (default /tmp/pool-managerd-gpu-check)
#
# Needs: nvidia-smi, nvcc (CUDA), cmake, a C++ compiler, curl, python3.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="${POOL_MANAGERD_BIN:-$root/target/release/pool-managerd}"
cache="${POOL_MANAGERD_LLAMA_CACHE:-$HOME/.cache/pool-managerd/llama}"
model="${GPU_CHECK_MODEL:-$cache/models/tiny-llama.gguf}"
work="${GPU_CHECK_WORK:-/tmp/pool-managerd-gpu-check}"
arch="${CUDA_ARCH:-native}"
port=19240
failed=0

say() { printf 'gpu-check: %s\n' "$*" >&2; }
pass() { printf 'PASS %s: %s\n' "$1" "$2"; }
fail() { printf 'FAIL %s: %s\n' "$1" "$2"; failed=1; }
die() { say "$*"; exit 2; }

for tool in nvidia-smi nvcc cmake c++ curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
[ -x "$bin" ] || die "no daemon at $bin (cargo build --release, or set POOL_MANAGERD_BIN)"
[ -f "$model" ] || die "no model at $model (run scripts/get-llama-server.sh, or set GPU_CHECK_MODEL)"
src="$(ls -d "$cache"/src/llama-cpp-python-*/vendor/llama.cpp 2>/dev/null | head -1)"
[ -n "$src" ] || die "no llama.cpp source under $cache/src (run scripts/get-llama-server.sh once)"

# 1. A CUDA llama-server (once per work directory).
server="$work/cuda/bin/llama-server"
if [ ! -x "$server" ]; then
  say "building a CUDA llama-server from $src (CUDA architectures: $arch)"
  cmake -S "$src" -B "$work/cuda/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 \
    || die "cmake failed: see $work/cmake.log"
  cmake --build "$work/cuda/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || die "the build failed: see $work/build.log"
  mkdir -p "$work/cuda/bin"
  cp "$work/cuda/build/bin/llama-server" "$server"
fi
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader >&2

# 2. The release daemon on the real GPU (require_gpu: placement is proven through NVML).
run="$work/run"
rm -rf "$run" && mkdir -p "$run"
cat >"$run/pool-managerd.toml" <<EOF
addr = "127.0.0.1:$port"
runtime_dir = "$run/runtime"
journal_dir = "$run/journal"
require_gpu = true
allow_root_engines = true
[gpu]
poll_interval_ms = 500
placement_timeout_ms = 20000
release_timeout_ms = 30000
[health]
preload_timeout_ms = 120000
EOF
"$bin" serve --config "$run/pool-managerd.toml" >"$run/daemon.log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null' EXIT
api="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$api/health" >/dev/null && break; sleep 0.2; done
curl -sf "$api/health" >/dev/null || die "the daemon did not start: $(tail -5 "$run/daemon.log")"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
status() { curl -s "$api/v2/pools/$1"; }
events() { curl -s "$api/v2/pools/$1/events"; }
prepared() { # pool port mask [extra flags...] [env json via ENGINE_ENV]
  local pool=$1 p=$2 mask=$3; shift 3
  local flags
  flags=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \
    --model "$model" --host 127.0.0.1 --port "$p" --n-gpu-layers 99 "$@")
  local device_mask=null
  [ -n "$mask" ] && device_mask="\"$mask\""
  printf '{"prepared":{"binary_path":"%s","flags":%s,"host":"127.0.0.1","port":%s,"model_path":"%s","engine_version":"gpu-check","pool_id":"%s","replica_id":"r0","device_mask":%s,"env":%s}}' \
    "$server" "$flags" "$p" "$model" "$pool" "$device_mask" "${ENGINE_ENV:-{\}}"
}
preload() { curl -s -o "$run/$1.answer" -w '%{http_code}' -H 'content-type: application/json' \
  -X POST "$api/v2/pools/$1/preload" -d "$2"; }
remove() { curl -s -X POST "$api/v2/pools/$1/stop" -H 'content-type: application/json' -d '{}' >/dev/null
  for _ in $(seq 100); do [ "$(status "$1" | json 'd.get("phase")')" = stopped ] && break; sleep 0.2; done
  curl -s -X DELETE "$api/v2/pools/$1" >/dev/null; }

# vram: the pool's VRAM against nvidia-smi's per-process figure.
code=$(preload g1 "$(prepared g1 $((port + 1)) 0)")
if [ "$code" != 200 ]; then
  fail vram "the preload answered $code: $(cat "$run/g1.answer")"
else
  pid=$(status g1 | json 'd["pid"]')
  sleep 2
  ours=$(status g1 | json 'd.get("vram_used_bytes") or 0')
  smi=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits \
    | awk -F', ' -v p="$pid" '$1==p {print $2*1048576}')
  if [ -n "$smi" ] && python3 -c "import sys; sys.exit(abs($ours-$smi) > 64*1048576)"; then
    pass vram "pid $pid: vram_used_bytes $ours, nvidia-smi $smi"
  else
    fail vram "pid $pid: vram_used_bytes $ours, nvidia-smi '${smi:-nothing}'"
  fi
fi

# release: SIGKILL of the engine; its restart waits for the memory.
if [ "$code" = 200 ]; then
  kill -9 "$pid"
  for _ in $(seq 300); do
    new=$(status g1 | json 'd.get("pid") or 0')
    [ "$new" != 0 ] && [ "$new" != "$pid" ] && [ "$(status g1 | json 'd["ready"]')" = True ] && break
    sleep 0.2
  done
  released=$(events g1 | json '[e["event"].get("after_ms") for e in d if e["event"]["kind"]=="GpuMemoryReleased"]')
  listed=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -cx "$pid")
  if [ "$released" != "[]" ] && [ "$listed" = 0 ] && [ "$new" != "$pid" ]; then
    pass release "killed $pid, GpuMemoryReleased after_ms $released, new engine $new"
  else
    fail release "killed $pid; GpuMemoryReleased $released; still listed: $listed; pid now $new"
  fi
  remove g1
fi

# spillover: no mask (any GPU) but CUDA_VISIBLE_DEVICES=7 in its env: CUDA sees no GPU and
# the engine serves on the CPU; it must never be Ready (a mask "7" is refused outright, 422).
code=$(preload g2 "$(ENGINE_ENV='{"CUDA_VISIBLE_DEVICES":"7"}' prepared g2 $((port + 2)) '')")
answer=$(cat "$run/g2.answer")
case "$code:$answer" in
  500:*CPU_SPILLOVER* | 422:* | 400:*) pass spillover "never ready: $code $(echo "$answer" | json 'd.get("code")')" ;;
  *) fail spillover "answered $code: $answer" ;;
esac
remove g2

# vram_oom: a KV cache larger than the GPU.
code=$(preload g3 "$(prepared g3 $((port + 3)) 0 --ctx-size 4000000 --parallel 1)")
cause=$(events g3 | json '[e["event"].get("cause") for e in d if e["event"]["kind"]=="PreloadFailed"][:1]')
if [ "$code" != 200 ] && echo "$cause" | grep -q vram_oom; then
  pass vram_oom "answered $code, PreloadFailed cause $cause"
else
  fail vram_oom "answered $code, PreloadFailed causes $cause: $(cat "$run/g3.answer")"
fi
remove g3

exit "$failed"
