#!/usr/bin/env bash
# A/B of two carried stage timers (prebuilt/stage_timer_a, prebuilt/stage_timer_b), run
# alternately A B A B on the same device: prefill rows, NVFP4 (+ gpt-oss MXFP8 activations).
# Results: $OUT/ab.txt (+ ab.tgz).
set -u
ARGS="--models deepseek-v3,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b --weights nvfp4 --tokens ${AB_TOKENS:-4096,16384} --reps ${AB_REPS:-10}"
for round in 1 2; do
  for side in a b; do
    echo "== round $round side $side ($(cat prebuilt/stage_timer_$side.commit 2>/dev/null | head -1))" >> $OUT/ab.txt
    ./prebuilt/stage_timer_$side $ARGS >> $OUT/ab.txt 2>&1
  done
done
for side in a b; do
  echo "== mxfp8 side $side" >> $OUT/ab.txt
  ./prebuilt/stage_timer_$side --models gpt-oss-120b --weights nvfp4 --acts mxfp8 --tokens 4096,16384 --reps 10 >> $OUT/ab.txt 2>&1
done
grep -E "^==|pipeline" $OUT/ab.txt | cut -c1-190
cd $OUT && tar czf ../ab.tgz ab.txt && mv ../ab.tgz $OUT/
