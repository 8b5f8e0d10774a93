#!/usr/bin/env bash
# Everything a session with a lent GPU needs, in one device call (see bench/README.md):
#   build the wheel's native modules for this GPU, run the whole test suite on it (CUDA and Triton
#   implementations against the reference), then the benchmark tables, all written under $OUT.
# Usage on the device: bash bench/gpu_session.sh [quick|full] [suites]
#   suites: as `slimkernels bench --suite` (default: the default suites; `all` adds dequant_int8 and quantize)
set -uo pipefail
mode=${1:-quick}
suites=${2:-default}
out=${OUT:-/tmp/slim_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
repo=$PWD

echo "== build"
SLIMKERNELS_CUDA=ON SLIMKERNELS_CUDA_ARCHS="${SLIMKERNELS_CUDA_ARCHS:-90a-real}" \
  python3 -m pip install --no-build-isolation --no-deps . >"$out/build.log" 2>&1 \
  || { tail -n 60 "$out/build.log"; exit 1; }
(cd /tmp && python3 -c "import slimkernels, json; print(json.dumps(slimkernels.info()))") | tee "$out/info.json"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$out/info.json"

echo "== tests"
(cd "$repo" && timeout 900 python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -n 40) | tee "$out/tests.log"

echo "== benchmarks"
if [ "$mode" = full ]; then shapes=full; extra=""; else shapes=small; extra="--quick"; fi
(cd /tmp && python3 -m slimkernels bench --device cuda --shapes "$shapes" --suite "$suites" $extra --no-progress \
  --json "$out/bench_cuda.json" 2>&1) | tee "$out/bench_cuda.txt"
