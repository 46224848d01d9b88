#!/usr/bin/env bash
# One device call from carried prebuilt/ drivers and jax_moe/_ffi (benchmarks/build_drivers.sh):
# nothing is compiled there. Everything lands in $OUT/session.tgz (the device returns <= 8 files).
#   JAX_MOE_COMMIT=<sha> bash benchmarks/device_session.sh <part>...
# parts: check (routing check + sanitizer), timer (stage timer, fused routing off/on, both weight
# formats; TIMER_TOKENS, TIMER_EXTRA: more stage_timer options, e.g. "--tactics default,name"), stalls (ncu PC sampling of the T = 1 GEMMs), smoke (the fused-routing GPU tests: the
# carried extension loads and runs), gpu (the whole GPU suite), table (the results table's T = 1 / 8
# rows, TABLE_TOKENS; TABLE_PARTS="a b c" picks the three calls of NOTES.md), ext (import check only).
set -u
B=benchmarks/gpu_check.sh
ROOT=$OUT; mkdir -p "$ROOT"
for part in "$@"; do
  START=$(date +%s)
  case $part in
    check) OUT=$ROOT/check bash $B routing sanitize ;;
    timer)
      for w in nvfp4 mxfp4; do
        OUT=$ROOT/timer_$w TIMER_PATTERN=0 TIMER_CAPS=8 TIMER_VARIANTS="${TIMER_VARIANTS:-default JAX_MOE_FUSED_ROUTING=0}" \
          TIMER_ARGS="--tokens ${TIMER_TOKENS:-1,8,64} --reps 20 --weights $w ${TIMER_EXTRA:-}" bash $B timer > /dev/null
        echo "timer $w: $(grep -c . "$ROOT/timer_$w/timer.txt") lines"
      done ;;
    stalls)
      for m in qwen3-30b-a3b deepseek-v3; do
        OUT=$ROOT/stalls_$m STALL_SKIP=2 STALL_ARGS="--models $m --tokens 1 --reps 1" bash $B stalls | head -80
      done ;;
    ext) python3 -c "import jax, jax_moe; from jax_moe import _extension as e; print(e.module().__file__, e.register_targets(), jax.devices())" ;;
    smoke) OUT=$ROOT/smoke bash $B gpu -- -k fused_routing -x ;;
    gpu) OUT=$ROOT/gpu timeout ${GPU_TIMEOUT:-540} bash $B gpu ${GPU_ARGS:-} ;;
    table)
      mkdir -p "$ROOT/table"
      for spec in "gpt-oss-120b,deepseek-v3 bf16 a" "qwen3-30b-a3b,mixtral-8x7b bf16 b" "gpt-oss-120b mxfp8 c"; do
        read -r models acts tag <<< "$spec"
        case " ${TABLE_PARTS:-a b c} " in *" $tag "*) ;; *) continue ;; esac
        W=nvfp4,mxfp4; [ "$acts" = mxfp8 ] && W=nvfp4
        PEERS=(); [ "$acts" = mxfp8 ] && PEERS=(--peers none)
        python3 -m benchmarks.moe --models "$models" --weights $W --acts "$acts" "${PEERS[@]}" \
          --tokens "${TABLE_TOKENS:-1,8}" --no-finalize --out "$ROOT/table/table_$tag" > "$ROOT/table/$tag.log" 2>&1
        echo "table $tag rc $?"; grep -v -i warn "$ROOT/table/$tag.log" | tail -4
      done ;;
    *) echo "unknown part $part" ;;
  esac
  echo "== $part: $(( $(date +%s) - START )) s"
done
cd "$ROOT" && tar czf /tmp/session.tgz --exclude session.tgz . && find . -mindepth 1 -delete && mv /tmp/session.tgz .
