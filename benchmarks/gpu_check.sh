#!/usr/bin/env bash
# One batch on the lent GPU machine; logs under $OUT. Usage (device tool, repo root):
#   bash benchmarks/gpu_check.sh [steps] [-- extra pytest args for the GPU suite]
# steps (default: build cpu gpu routing sanitize): any of
#   build     pip install -e . (the extension, CUDA handlers included), ptxas report
#   buildall  build and timerbuild side by side (~6-7 min on a fresh machine, vs ~10 one after the other)
#   cpu       the CPU suite on the CPU backend
#   probe     tests/cuda/wgmma_probe.cu: the wgmma layout/descriptor contract alone (seconds)
#   gpu       pytest -m gpu
#   routing   tests/cuda/routing_check.cu: the CUDA routing kernel alone vs the CPU's RouteToken
#             (every method, E 2-512, both grouping paths, ties), the fused routing + permute kernel
#             vs the separate ones and a host permute, then timed per model shape (seconds;
#             ROUTING_BASELINE=<file.cu>: also build that routing.cu and compare / time it)
#   sanitize  compute-sanitizer memcheck + racecheck on tests/cuda/sanitizer_harness.cu
#             (a JAX-free driver of the CUDA stages: the sanitizer crashes inside JAX)
#   bench     python -m benchmarks.moe -> benchmarks/results/latest.{json,md,png} (BENCH_ARGS)
#   tune      benchmarks/tune.py -> benchmarks/results/autotune.{json,md} (tuned vs default)
#   profile   ncu per-kernel durations of one layer (benchmarks/profile_stages.py, PROFILE_ARGS)
#   timerbuild  build benchmarks/stage_timer.cu alone (timer and counters build it when missing)
#   timer     benchmarks/stage_timer.cu (JAX-free per-stage device times, TIMER_ARGS), once per
#             split-K cap in TIMER_CAPS (JAX_MOE_MAX_K_SPLITS; default "8 1": with and without)
#             and per knob setting in TIMER_VARIANTS (L2 prefetch, dependent launch)
#   counters  ncu counters (DRAM, issue, occupancy, stall reasons) of the pipeline's kernels, run
#             on stage_timer (COUNTER_ARGS: its options; COUNTER_KERNELS: a kernel-name regex)
#   stalls    ncu PC sampling per SASS instruction of stage_timer's kernels (STALL_ARGS, STALL_KERNELS,
#             STALL_SKIP, STALL_COUNT) -> stalls.txt (benchmarks/ncu_source.py)
#   multigpu  pytest -m multigpu + benchmarks/ep.py -> benchmarks/results/ep.{json,md} (>= 2 GPUs)
# Carried prebuilt/{stage_timer,routing_check,sanitizer_harness} (benchmarks/build_drivers.sh, built
# on the CPU machine) replace the timer, routing and sanitize builds.
set -u
STEPS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do STEPS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build cpu gpu routing sanitize)
has() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
OUT=${OUT:-/tmp/jax_moe_out}
mkdir -p "$OUT"
{
  date -u; echo "commit: ${JAX_MOE_COMMIT:-$(git rev-parse HEAD 2>/dev/null)} (JAX_MOE_COMMIT pins it: the device copy's git metadata may be stale)"
  nvidia-smi --query-gpu=name,driver_version --format=csv
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# jaxlib's XLA FFI headers, for the JAX-free drivers (stage timer, sanitizer harness, routing
# check); find_spec locates the package without importing it.
JAXLIB_INC=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('jaxlib').origin).parent / 'include')")
# Results files record the commit; the device copy's git metadata can be stale.
[ -z "${JAX_MOE_COMMIT:-}" ] && echo "warning: JAX_MOE_COMMIT is not set: results will name $(git rev-parse --short HEAD 2>/dev/null), which may be stale" >&2

if has buildall; then
  START=$(date +%s)
  bash "$0" build > "$OUT/buildall_build.txt" 2>&1 &
  BUILD_PID=$!
  bash "$0" timerbuild > "$OUT/buildall_timer.txt" 2>&1
  TIMER_RC=$?
  wait "$BUILD_PID"; BUILD_RC=$?
  tail -3 "$OUT/buildall_build.txt"; tail -1 "$OUT/buildall_timer.txt"
  echo "buildall: $(( $(date +%s) - START )) s (build rc $BUILD_RC, timerbuild rc $TIMER_RC)"
  [ $BUILD_RC -eq 0 ] && [ $TIMER_RC -eq 0 ] || exit 1
fi

if has build; then
  START=$(date +%s)
  if ! python3 -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
    grep -E "error" "$OUT/build.log" | head -40; tail -30 "$OUT/build.log"; exit 1
  fi
  echo "build: $(( $(date +%s) - START )) s"
  grep -h "jax_moe:" "$OUT/build.log"
  grep -h -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn > "$OUT/ptxas.txt"
fi

if has cpu; then
  JAX_PLATFORMS=cpu python3 -m pytest -q -p no:cacheprovider -m "not gpu" > "$OUT/pytest_cpu.log" 2>&1
  echo "CPU suite: $(tail -1 "$OUT/pytest_cpu.log")"
fi

if has profile; then
  ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    python3 benchmarks/profile_stages.py ${PROFILE_ARGS:-} > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
  echo "ncu rc $?"; grep -v '^"' "$OUT/ncu.csv" | grep -v "^==PROF==" | tail -5; tail -3 "$OUT/ncu.err"
  python3 benchmarks/ncu_summary.py "$OUT/ncu.csv" > "$OUT/ncu_summary.txt"
  grep jax_moe "$OUT/ncu_summary.txt" | sed 's/jax_moe:://g' | tail -40
  rm -f "$OUT/ncu.csv"  # large; the summary keeps what matters
fi

# Drivers built on the CPU machine (benchmarks/build_drivers.sh) and carried as prebuilt/:
# used instead of compiling here; each names the commit it was built from.
use_prebuilt() {  # use_prebuilt <name>: copies prebuilt/<name> to /tmp/<name> when it was carried
  [ -x "prebuilt/$1" ] || return 1
  cp "prebuilt/$1" "/tmp/$1"
  local from; from=$(tr '\n' ' ' < "prebuilt/$1.commit" 2>/dev/null)
  echo "$1: prebuilt from ${from:-an unknown commit}"
  [ -n "${JAX_MOE_COMMIT:-}" ] && [[ "$from" != "$JAX_MOE_COMMIT"* ]] && echo "warning: prebuilt/$1 is not from JAX_MOE_COMMIT=$JAX_MOE_COMMIT" >&2
  return 0
}
{ has timer || has counters || has timerbuild; } && use_prebuilt stage_timer
# The timer binary is built once per machine ('timerbuild' alone builds it, e.g. next to 'build').
if { has timer || has counters || has timerbuild; } && [ ! -x /tmp/stage_timer ]; then
  START=$(date +%s)
  mkdir -p /tmp/timer_obj
  for f in benchmarks/stage_timer.cu ffi_src/cuda/{routing,permute,gemm1,gemm2,finalize}.cu ffi_src/common/{problem,tactics}.cc; do
    nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -DJAX_MOE_CUDA_ARCH='"sm_90a"' -isystem "$JAXLIB_INC" -Iffi_src \
      -x cu -c "$f" -o "/tmp/timer_obj/$(basename "$f").o" > "/tmp/timer_obj/$(basename "$f").log" 2>&1 &
  done
  wait
  nvcc -arch=sm_90a /tmp/timer_obj/*.o -o /tmp/stage_timer > "$OUT/timer_build.log" 2>&1 \
    || { cat /tmp/timer_obj/*.log | grep -i error | head -20; tail -20 "$OUT/timer_build.log"; exit 1; }
  echo "stage_timer build: $(( $(date +%s) - START )) s"
fi

if has timer; then
  : > "$OUT/timer.txt"
  [ "${TIMER_PATTERN:-1}" != 0 ] && /tmp/stage_timer --pattern --reps 20 >> "$OUT/timer.txt" 2>&1  # TIMER_PATTERN=0 skips the probe
  # TIMER_VARIANTS: space-separated runs, each "default" or comma-separated VAR=value
  # settings of the per-call knobs, e.g. "default JAX_MOE_L2_PREFETCH=0,JAX_MOE_DEPENDENT_LAUNCH=0".
  for cap in ${TIMER_CAPS:-8 1}; do
    for variant in ${TIMER_VARIANTS:-default}; do
      SETTINGS=()
      [ "$variant" != default ] && IFS=, read -ra SETTINGS <<< "$variant"
      env JAX_MOE_MAX_K_SPLITS=$cap "${SETTINGS[@]}" /tmp/stage_timer ${TIMER_ARGS:-} >> "$OUT/timer.txt" 2>&1
    done
  done
  cat "$OUT/timer.txt"
fi

if has counters; then
  # --metrics, not --section: the sections replay each kernel ~40 times (minutes per kernel).
  M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum
  M=$M,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active
  M=$M,smsp__issue_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
  M=$M,launch__grid_size,launch__block_size,sm__cycles_active.avg,smsp__inst_executed.sum
  for r in long_scoreboard barrier wait short_scoreboard no_instruction math_pipe_throttle \
           lg_throttle mio_throttle not_selected selected dispatch_stall branch_resolving; do
    M=$M,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
  done
  # COUNTER_EXTRA: more metric names (e.g. sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,
  # lts__throughput.avg.pct_of_peak_sustained_elapsed); run again without them if ncu rejects one.
  counters_run() {  # counters_run <metrics>
    ncu --clock-control none --metrics "$1" --kernel-name "regex:${COUNTER_KERNELS:-Routing|Permute|Gemm|Finalize}" --csv \
      /tmp/stage_timer ${COUNTER_ARGS:---tokens 1 --reps 1} > "$OUT/counters.csv" 2> "$OUT/counters.err"
  }
  # The JAX-free stage timer (ncu segfaults on JAX processes about one run in three).
  counters_run "$M${COUNTER_EXTRA:+,$COUNTER_EXTRA}"; RC=$?
  if [ $RC -ne 0 ] && [ -n "${COUNTER_EXTRA:-}" ]; then
    echo "ncu rc $RC with COUNTER_EXTRA ($(tail -1 "$OUT/counters.err")): again without it"
    counters_run "$M"; RC=$?
  fi
  echo "ncu rc $RC"; tail -3 "$OUT/counters.err"
  python3 benchmarks/ncu_summary.py --counters "$OUT/counters.csv" > "$OUT/counters.txt"; gzip -f "$OUT/counters.csv"
  cat "$OUT/counters.txt"
fi

if has stalls; then
  # PC sampling per SASS instruction of the first STALL_COUNT kernels matching STALL_KERNELS,
  # after STALL_SKIP of them (stage_timer runs two warm-up pipelines per row).
  ncu --clock-control none --section SourceCounters --section WarpStateStats \
    --kernel-name "regex:${STALL_KERNELS:-Gemm}" --launch-skip "${STALL_SKIP:-0}" --launch-count "${STALL_COUNT:-2}" \
    -f -o /tmp/stalls /tmp/stage_timer ${STALL_ARGS:---models qwen3-30b-a3b --tokens 1 --reps 1} > "$OUT/stalls_run.txt" 2>&1
  echo "ncu rc $?"; tail -3 "$OUT/stalls_run.txt"
  ncu -i /tmp/stalls.ncu-rep --page source --csv --print-source sass > /tmp/stalls_source.csv 2> /tmp/stalls_page.err
  echo "source page rc $?"; head -3 /tmp/stalls_page.err
  ncu -i /tmp/stalls.ncu-rep --page details --csv > /tmp/stalls_details.csv 2>/dev/null
  python3 benchmarks/ncu_source.py /tmp/stalls_source.csv --top "${STALL_TOP:-30}" > "$OUT/stalls.txt" 2>&1
  grep -E "Warp Cycles|Stall|Duration|Issued" /tmp/stalls_details.csv | head -40 >> "$OUT/stalls.txt"
  cat "$OUT/stalls.txt"
  gzip -c /tmp/stalls_source.csv > "$OUT/stalls_source.csv.gz"
fi

if has probe; then
  nvcc -std=c++17 -arch=sm_90a -Iffi_src tests/cuda/wgmma_probe.cu -o "$OUT/wgmma_probe" > "$OUT/probe_build.log" 2>&1 \
    || { tail -20 "$OUT/probe_build.log"; exit 1; }
  "$OUT/wgmma_probe"; echo "wgmma probe rc $?"
  rm -f "$OUT/wgmma_probe"
fi

if has gpu; then
  START=$(date +%s)
  python3 -m pytest -q -p no:cacheprovider -m gpu -rf --durations=15 "$@" > "$OUT/pytest_gpu.log" 2>&1
  echo "GPU suite ($(( $(date +%s) - START )) s): $(tail -1 "$OUT/pytest_gpu.log")"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | head -40
fi

if has routing && use_prebuilt routing_check; then
  /tmp/routing_check ${ROUTING_ARGS:-} > "$OUT/routing.txt" 2>&1
  echo "routing check rc $?"; cat "$OUT/routing.txt"
elif has routing; then
  NV=(nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -isystem "$JAXLIB_INC" -Iffi_src)
  EXTRA=()
  if [ -n "${ROUTING_BASELINE:-}" ]; then  # a routing.cu from another commit, under another name
    # (outside ffi_src/cuda: CMake globs that directory; the quoted includes resolve through -Iffi_src)
    "${NV[@]}" -DLaunchRouting=LaunchRoutingBaseline -x cu -c "$ROUTING_BASELINE" -o /tmp/routing_baseline.o \
      > "$OUT/routing_build.log" 2>&1 || { tail -20 "$OUT/routing_build.log"; exit 1; }
    EXTRA=(-DROUTING_BASELINE /tmp/routing_baseline.o)
  fi
  "${NV[@]}" tests/cuda/routing_check.cu ffi_src/cuda/{routing,permute}.cu ffi_src/common/problem.cc "${EXTRA[@]}" \
    -o /tmp/routing_check \
    >> "$OUT/routing_build.log" 2>&1 || { tail -20 "$OUT/routing_build.log"; exit 1; }
  /tmp/routing_check ${ROUTING_ARGS:-} > "$OUT/routing.txt" 2>&1
  echo "routing check rc $?"; cat "$OUT/routing.txt"
fi

if has sanitize; then
  START=$(date +%s)
  if use_prebuilt sanitizer_harness; then mv /tmp/sanitizer_harness "$OUT/sanitizer_harness"; else
    nvcc -std=c++17 -arch=sm_90a -O2 -lineinfo --expt-relaxed-constexpr -isystem "$JAXLIB_INC" -Iffi_src \
      tests/cuda/sanitizer_harness.cu ffi_src/cuda/{routing,permute,gemm1,gemm2,finalize}.cu \
      ffi_src/common/{problem,tactics}.cc -o "$OUT/sanitizer_harness" > "$OUT/harness_build.log" 2>&1 \
      || { tail -20 "$OUT/harness_build.log"; exit 1; }
    echo "harness build: $(( $(date +%s) - START )) s"
  fi
  # Both routing paths: separate routing and permute kernels, and fused (T <= 8).
  for fused in 0 1; do
    for tool in memcheck racecheck; do
      JAX_MOE_FUSED_ROUTING=$fused compute-sanitizer --tool "$tool" --error-exitcode 3 "$OUT/sanitizer_harness" \
        > "$OUT/sanitizer_${tool}_fused$fused.log" 2>&1
      echo "compute-sanitizer $tool, fused routing $fused (rc $?): $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer harness" "$OUT/sanitizer_${tool}_fused$fused.log" | tr '\n' ' ')"
    done
  done
  rm -f "$OUT/sanitizer_harness"
fi

if has bench; then
  GPU_TESTS=$(tail -1 "$OUT/pytest_gpu.log" 2>/dev/null | tr -d '=')
  python3 -X faulthandler -m benchmarks.moe --gpu-tests "$GPU_TESTS" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
  cat "$OUT/bench.log" | grep -v -i warn | tail -20
  cp benchmarks/results/latest.* "$OUT/" 2>/dev/null
fi

if has tune; then
  python3 -X faulthandler benchmarks/tune.py ${TUNE_ARGS:-} > "$OUT/tune.log" 2>&1
  grep -v -i warn "$OUT/tune.log" | tail -30
  cp benchmarks/results/autotune.* "$OUT/" 2>/dev/null
fi

if has multigpu; then
  python3 -m pytest -q -p no:cacheprovider -m multigpu -rf > "$OUT/pytest_multigpu.log" 2>&1
  echo "multigpu suite: $(tail -1 "$OUT/pytest_multigpu.log")"
  python3 -X faulthandler benchmarks/ep.py ${EP_ARGS:-} > "$OUT/ep.log" 2>&1
  grep -v -i warn "$OUT/ep.log" | tail -10
  cp benchmarks/results/ep.* "$OUT/" 2>/dev/null
fi
