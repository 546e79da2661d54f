#!/usr/bin/env bash
# Obtains llama.cpp's `llama-server` and a tiny llama model for pool-managerd's real-engine
# tests, in a cache directory, and prints their two paths:
#
#   llama-server: <cache>/bin/llama-server
#   model: <cache>/models/tiny-llama.gguf
#
# No registry ships a llama-server that runs on every x86-64 CPU (prebuilt wheels need
# AVX-512) and Debian has no llama.cpp package, so it is built from source: the llama.cpp tree
# vendored in the `llama-cpp-python` source distribution on PyPI, configured without its web UI,
# TLS, tests and examples, and only the server target built (about 15 minutes on 2 cores the
# first time; nothing to do afterwards). The model is written by scripts/tiny_llama_gguf.py with
# the `gguf` package: random weights, 2 layers, an embedding of 64, a byte-fallback vocabulary;
# it loads in well under a second and generates nonsense, as it should.
#
# Idempotent: what is in the cache is kept (delete the cache directory to start over).
#
# Environment:
#   POOL_MANAGERD_LLAMA_CACHE  the cache directory (default ~/.cache/pool-managerd/llama)
#   LLAMA_CPP_PYTHON_VERSION   the llama-cpp-python sdist whose llama.cpp is built (0.3.36)
#   LLAMA_BUILD_JOBS           parallel build jobs (default: the number of CPUs)
#   LLAMA_CMAKE_ARGS           extra cmake arguments (e.g. "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90")
#
# Needs: python3 with pip and venv, cmake, a C++ compiler, make. Installs nothing system-wide.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${POOL_MANAGERD_LLAMA_CACHE:-$HOME/.cache/pool-managerd/llama}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
server="$cache/bin/llama-server"
model="$cache/models/tiny-llama.gguf"

say() { printf 'get-llama-server: %s\n' "$*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 || {
    say "$1 is missing: $2"
    exit 1
  }
}

mkdir -p "$cache"

if [ ! -x "$server" ]; then
  need python3 "install python3 (with pip and venv)"
  need cmake "install cmake (Debian: apt-get install cmake)"
  need c++ "install a C++ compiler (Debian: apt-get install g++)"
  need make "install make"
  src="$cache/src/llama-cpp-python-$version"
  if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    say "downloading the llama-cpp-python $version source distribution (about 76 MB)"
    mkdir -p "$cache/src"
    python3 -m pip download --quiet --no-deps --no-binary :all: \
      --dest "$cache/src" "llama-cpp-python==$version"
    tarball="$cache/src/llama_cpp_python-$version.tar.gz"
    [ -f "$tarball" ] || tarball="$cache/src/llama-cpp-python-$version.tar.gz"
    [ -f "$tarball" ] || { say "the sdist was not found in $cache/src"; exit 1; }
    rm -rf "$cache/src/unpack"
    mkdir -p "$cache/src/unpack"
    tar -xzf "$tarball" -C "$cache/src/unpack"
    rm -rf "$src"
    mv "$cache/src/unpack/"* "$src"
    rmdir "$cache/src/unpack"
  fi
  say "building llama-server from $src/vendor/llama.cpp with $jobs jobs (about 15 minutes on 2 cores, once)"
  # shellcheck disable=SC2086 # LLAMA_CMAKE_ARGS is a list of arguments
  cmake -S "$src/vendor/llama.cpp" -B "$cache/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    ${LLAMA_CMAKE_ARGS:-} >"$cache/cmake-configure.log" 2>&1 ||
    { say "cmake configure failed; see $cache/cmake-configure.log"; tail -20 "$cache/cmake-configure.log" >&2; exit 1; }
  cmake --build "$cache/build" --target llama-server -j "$jobs" >"$cache/cmake-build.log" 2>&1 ||
    { say "the build failed; see $cache/cmake-build.log"; tail -30 "$cache/cmake-build.log" >&2; exit 1; }
  mkdir -p "$cache/bin"
  install -m 0755 "$cache/build/bin/llama-server" "$server.tmp"
  mv "$server.tmp" "$server"
fi

if [ ! -s "$model" ]; then
  need python3 "install python3 (with pip and venv)"
  venv="$cache/venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
    say "installing the gguf package into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "gguf>=0.10" "numpy"
  fi
  mkdir -p "$(dirname "$model")"
  "$venv/bin/python" "$here/tiny_llama_gguf.py" "$model.tmp" >&2
  mv "$model.tmp" "$model"
fi

echo "llama-server: $server"
echo "model: $model"
