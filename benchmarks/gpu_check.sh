#!/usr/bin/env bash
# One batch on the lent GPU machine: build, run the CPU suite on the CPU backend
# and the GPU suite, write logs under $OUT. Usage (device tool, repo root):
#   bash benchmarks/gpu_check.sh [extra pytest args for the GPU suite]
set -u
echo "python: $(command -v python3) $(python3 -c "import scikit_build_core, nanobind; print(scikit_build_core.__version__, nanobind.__version__)" 2>&1)"
OUT=${OUT:-/tmp/jax_moe_out}
mkdir -p "$OUT"
{
  date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv
  python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; exit 1
fi
grep -h "jax_moe:" "$OUT/build.log"
grep -h -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -40 > "$OUT/ptxas.txt"

# CPU suite on the CPU backend (the GPU machine has more cores than CI).
JAX_PLATFORMS=cpu python3 -m pytest -q -p no:cacheprovider -m "not gpu" > "$OUT/pytest_cpu.log" 2>&1
echo "CPU suite: $(tail -1 "$OUT/pytest_cpu.log")"

python3 -m pytest -q -p no:cacheprovider -m gpu "$@" > "$OUT/pytest_gpu.log" 2>&1
echo "GPU suite: $(tail -1 "$OUT/pytest_gpu.log")"
tail -30 "$OUT/pytest_gpu.log"
