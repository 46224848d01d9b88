#!/usr/bin/env bash
# One batch on the lent GPU machine: build, CPU suite (CPU backend), GPU suite,
# compute-sanitizer (memcheck + racecheck) on a small case; logs under $OUT.
# Usage (device tool, repo root):
#   bash benchmarks/gpu_check.sh [--quick] [extra pytest args for the GPU suite]
#   --quick: skip the CPU suite and the sanitizers (iterate on the GPU suite).
set -u
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUT=${OUT:-/tmp/jax_moe_out}
mkdir -p "$OUT"
{
  date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

START=$(date +%s)
if ! python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  grep -E "error" "$OUT/build.log" | head -40; tail -30 "$OUT/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - START )) s"
grep -h "jax_moe:" "$OUT/build.log"
grep -h -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn > "$OUT/ptxas.txt"

if [ "$QUICK" = 0 ]; then
  JAX_PLATFORMS=cpu python3 -m pytest -q -p no:cacheprovider -m "not gpu" > "$OUT/pytest_cpu.log" 2>&1
  echo "CPU suite: $(tail -1 "$OUT/pytest_cpu.log")"
fi

START=$(date +%s)
python3 -m pytest -q -p no:cacheprovider -m gpu -rf --durations=15 "$@" > "$OUT/pytest_gpu.log" 2>&1
echo "GPU suite ($(( $(date +%s) - START )) s): $(tail -1 "$OUT/pytest_gpu.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | head -40

if [ "$QUICK" = 0 ] && command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_ALLOCATOR=platform \
      compute-sanitizer --tool "$tool" --kernel-name kns=jax_moe \
      python3 tests/gpu_sanitizer_case.py > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool (rc $?): $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer case" "$OUT/sanitizer_$tool.log" | tr '\n' ' ')"
  done
fi
