#!/usr/bin/env bash
# Build the JAX-free device drivers on this (CPU) machine, into prebuilt/ (git-ignored), so a
# device call can carry them instead of compiling there: the device's minutes are the scarce
# ones, and these binaries link the CUDA runtime statically. gpu_check.sh uses a carried
# prebuilt/<name> when it is there and with the commit it was built
# from (prebuilt/<name>.commit).
# Usage: bash benchmarks/build_drivers.sh [stage_timer] [stage_timer_stamps] [routing_check] [sanitizer_harness] [extension]
#   stage_timer_stamps: the stage timer with -DJAX_MOE_RS_STAMPS (ffi_src/cuda/rs_stamps.cuh): after
#   each row it prints where the register-A GEMMs' work items spend their cycles (diagnostic only);
#   STAMPS_FLAGS adds defines, e.g. STAMPS_FLAGS=-DJAX_MOE_RS_SKIP_DECODE (the register-A main loop
#   without its FP4 decode: wrong results, the loop's rate bound; build it as a separate binary:
#   STAMPS_OUT=stage_timer_nodecode).
#   extension: jax_moe/_ffi for the device's Python (3.12, DEVICE_PYTHON names another interpreter),
#   built with CMake against this machine's (oldest supported) jaxlib headers and written into
#   jax_moe/, where `python3 -m pytest` / `-m benchmarks.moe` from the repo root import it: carry
#   it and skip gpu_check.sh's build step (~5 min of device time on a fresh machine).
#   ROUTING_BASELINE=<routing.cu from another commit>: routing_check also times that one.
# Then: run(..., carry=["prebuilt"]).
set -eu
cd "$(dirname "$0")/.."
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(stage_timer routing_check sanitizer_harness)
INC=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('jaxlib').origin).parent / 'include')")
NV=(nvcc -std=c++17 -arch=sm_90a --expt-relaxed-constexpr -DJAX_MOE_CUDA_ARCH='"sm_90a"' -isystem "$INC" -Iffi_src)
OBJ=build/drivers
mkdir -p prebuilt "$OBJ"
# One object per source (-O3 -lineinfo: the same code as the extension's, with line numbers for
# ncu and the sanitizer), rebuilt only when a source or header is newer; two compiles at a time.
OPT="-O3 -lineinfo"
# A stage source's object from the extension's build (same flags, -fPIC) is used when it is current:
# always right after this invocation built the extension (ninja tracks each object's own headers,
# so an object it left alone is current even when some other ffi_src file is newer), else when no
# ffi_src file is newer than it.
stale() { [ ! -f "$2" ] || [ -n "$(find "$1" ffi_src -newer "$2" \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cc' \) -print -quit)" ]; }
EXT_BUILT=
objpath() {
  local ext="build/device_ext/CMakeFiles/_ffi.dir/$1.o"
  if [ -z "${NOEXT:-}" ] && [[ "$1" == ffi_src/* ]] && [ -f "$ext" ] && { [ -n "$EXT_BUILT" ] || ! stale "$1" "$ext"; }; then
    echo "$ext"
  else
    echo "$OBJ/$(basename "$1").o"
  fi
}
objs() {  # objs <sources...>: compiles what is stale, prints the objects
  local src o pids=()
  for src in "$@"; do
    o=$(objpath "$src")
    if [[ "$o" != build/device_ext/* ]] && stale "$src" "$o"; then  # (objpath hands out only current extension objects)
      "${NV[@]}" $OPT -x cu -c "$src" -o "$o" > "$o.log" 2>&1 &
      pids+=($!)
      [ ${#pids[@]} -ge 2 ] && { wait "${pids[0]}" || { cat "$OBJ"/*.log >&2; return 1; }; pids=("${pids[@]:1}"); }
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || { cat "$OBJ"/*.log >&2; return 1; }; done
  for src in "$@"; do objpath "$src"; done
}
STAGES=(ffi_src/cuda/{routing,permute,gemm1,gemm2,finalize}.cu ffi_src/common/{problem,tactics}.cc)
for t in "${TARGETS[@]}"; do
  START=$(date +%s)
  NAME=$t  # the binary (and .commit file) a target writes
  case $t in
    stage_timer)
      mapfile -t OBJS < <(objs benchmarks/stage_timer.cu "${STAGES[@]}")
      nvcc -arch=sm_90a "${OBJS[@]}" -o prebuilt/stage_timer ;;
    stage_timer_stamps)  # its own objects: every stage source compiled with the stamps
      SAVED=("$OBJ" "${NV[@]}"); OUTN=${STAMPS_OUT:-stage_timer_stamps}; OBJ=build/drivers_$OUTN; NOEXT=1
      NV+=(-DJAX_MOE_RS_STAMPS ${STAMPS_FLAGS:-}); mkdir -p "$OBJ"
      mapfile -t OBJS < <(objs benchmarks/stage_timer.cu "${STAGES[@]}")
      nvcc -arch=sm_90a "${OBJS[@]}" -o "prebuilt/$OUTN"; NAME=$OUTN
      OBJ=${SAVED[0]}; NV=("${SAVED[@]:1}"); NOEXT= ;;
    routing_check)
      mapfile -t OBJS < <(objs ffi_src/cuda/{routing,permute}.cu ffi_src/common/problem.cc)
      if [ -n "${ROUTING_BASELINE:-}" ]; then  # and the other commit's routing.cu, renamed
        "${NV[@]}" $OPT -DLaunchRouting=LaunchRoutingBaseline -x cu -c "$ROUTING_BASELINE" -o "$OBJ/routing_baseline.o"
        "${NV[@]}" $OPT -DROUTING_BASELINE -x cu -c tests/cuda/routing_check.cu -o "$OBJ/routing_check_baseline.o"
        OBJS+=("$OBJ/routing_check_baseline.o" "$OBJ/routing_baseline.o")
      else
        mapfile -t -O ${#OBJS[@]} OBJS < <(objs tests/cuda/routing_check.cu)
      fi
      nvcc -arch=sm_90a "${OBJS[@]}" -o prebuilt/routing_check ;;
    sanitizer_harness)
      mapfile -t OBJS < <(objs tests/cuda/sanitizer_harness.cu "${STAGES[@]}")
      nvcc -arch=sm_90a "${OBJS[@]}" -o prebuilt/sanitizer_harness ;;
    extension)
      PY=${DEVICE_PYTHON:-/root/.pyenv/versions/3.12.1/bin/python3.12}
      cmake -S . -B build/device_ext -G Ninja -DSKBUILD_PROJECT_NAME=jax_moe -DJAX_MOE_CUDA=ON \
        -DPython_EXECUTABLE="$PY" -Dnanobind_DIR="$(python3 -m nanobind --cmake_dir)" \
        -DJAX_MOE_XLA_INCLUDE_DIR="$INC" > build/device_ext.log 2>&1 || { tail -20 build/device_ext.log; exit 1; }
      cmake --build build/device_ext >> build/device_ext.log 2>&1 || { grep -i error build/device_ext.log | head; exit 1; }
      EXT_BUILT=1
      SO=$(ls build/device_ext/_ffi.cpython-*.so); cp "$SO" jax_moe/; t=$(basename "$SO")
      echo "carry jax_moe/$t ($(du -h "jax_moe/$t" | cut -f1))" ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  # What it was built from: gpu_check.sh prints this and warns when it is not JAX_MOE_COMMIT.
  { git rev-parse HEAD; [ -n "$(git status --porcelain ffi_src benchmarks/stage_timer.cu tests/cuda)" ] && echo "(with uncommitted changes)"; } \
    > "prebuilt/${NAME%%.*}.commit" 2>/dev/null || true
  echo "$t: $(( $(date +%s) - START )) s"
done
