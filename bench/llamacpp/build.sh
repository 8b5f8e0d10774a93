#!/usr/bin/env bash
# Build llama.cpp's ggml CPU backend (vendored in the llama-cpp-python sdist on the package index) and
# bench/llamacpp/ggml_bench.cpp against it, for bench/llamacpp_compare.py. Native to this CPU
# (GGML_NATIVE), as a user building llama.cpp here would get. Usage:
#   bash bench/llamacpp/build.sh [WORKDIR]      -> WORKDIR/libggml_bench.so (default /tmp/ggml_bench)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/ggml_bench}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$work"
cd "$work"
if [ ! -d "llama_cpp_python-$version" ]; then
  python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d .
  tar xzf "llama_cpp_python-$version.tar.gz"
fi
src="$work/llama_cpp_python-$version/vendor/llama.cpp/ggml"
touch "$src/ggml.pc.in"   # the sdist omits this template; ggml's CMakeLists configures it
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_OPENMP=ON >/dev/null
cmake --build "$work/build" -j"$(nproc)" >/dev/null
libs=$(find "$work/build" -name 'libggml*.a' | sort -r)
g++ -O2 -shared -fPIC -std=c++17 -I"$src/include" "$here/ggml_bench.cpp" -o "$work/libggml_bench.so" \
  -Wl,--start-group $libs -Wl,--end-group -fopenmp
echo "$work/libggml_bench.so"
