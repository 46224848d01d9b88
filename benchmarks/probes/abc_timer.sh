#!/usr/bin/env bash
# A/B of carried stage timers (prebuilt/stage_timer_<side>; two fit the 64 MiB carry, and their
# fatbins do not compress), run alternately on the same device: the prefill rows, NVFP4
# (+ gpt-oss with MXFP4 weights, and with MXFP8 activations).
# SIDES (default "a b"), ROUNDS (2), AB_TOKENS (4096,16384), AB_REPS (10). Optionally first the
# register-A GPU tests with a carried extension (GPU_K set). Results: $OUT/ab.txt (+ ab.tgz).
set -u
if [ -n "${GPU_K:-}" ]; then
  OUT=$OUT/gpu timeout ${GPU_TIMEOUT:-300} bash benchmarks/gpu_check.sh gpu -- -k "$GPU_K" > $OUT/gpu_summary.txt 2>&1
  tail -5 $OUT/gpu_summary.txt
fi
ARGS="--models deepseek-v3,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b --weights nvfp4 --tokens ${AB_TOKENS:-4096,16384} --reps ${AB_REPS:-10}"
for round in $(seq ${ROUNDS:-2}); do
  for side in ${SIDES:-a b}; do
    echo "== round $round side $side ($(head -1 prebuilt/stage_timer_$side.commit 2>/dev/null))" >> $OUT/ab.txt
    ./prebuilt/stage_timer_$side $ARGS >> $OUT/ab.txt 2>&1
  done
done
for side in ${SIDES:-a b}; do
  echo "== mxfp8 / mxfp4 side $side" >> $OUT/ab.txt
  ./prebuilt/stage_timer_$side --models gpt-oss-120b --weights nvfp4 --acts mxfp8 --tokens 4096,16384 --reps 10 >> $OUT/ab.txt 2>&1
  ./prebuilt/stage_timer_$side --models gpt-oss-120b --weights mxfp4 --tokens 4096,16384 --reps 10 >> $OUT/ab.txt 2>&1
done
grep -E "^==|pipeline|stamps gemm" $OUT/ab.txt | cut -c1-190
cd $OUT && tar czf ../ab.tgz ab.txt gpu_summary.txt gpu 2>/dev/null; mv ../ab.tgz $OUT/
